"""Triton kernels of the block-sparse family (see ``block_sparse.py`` for the format and the ops).

Two kernels cover the three products; the block values are read in place from the dense weight, so a
transposed operand is only a stride swap:

* ``_dds_kernel``: Out[M, P] = A[M, Q] . S[Q, P] (+ bias[P]) with S block-sparse. One program per
  (output block column p, BLOCK_M rows); it walks the non-zero blocks of S's block column p through
  ``offsets``/``q_idx`` (CSR of W for the forward, where S = W^T; the transposed CSC metadata for dX,
  where S = W). Programs run heaviest block column first (``order``) so the long walks start early.
* ``_sdd_kernel``: Out[R, C] = A[R, L] . B[L, C] only at the non-zero blocks (row_idx, col_idx); one
  program per (block, sub-tile), a dense loop over L. Used for dW = dY^T . X at W's pattern.

Both accumulate in fp32 and take any strides (int64 offsets: a 50k x 4k activation overflows int32).
On the GPU the configs are autotuned per (sizes, block, dtype) (``LTH_KERNELS_AUTOTUNE=0``: one pinned config);
under ``TRITON_INTERPRET=1`` (CPU tests) a small fixed table is used instead, because autotuning needs CUDA timing.
"""

from __future__ import annotations

import torch

from lth_kernels.ops._triton import HAS_TRITON, INTERPRET, Tuned, gpu_configs, launch, spill_prune, tl, triton


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    # fp32 operands: TF32 tensor cores when torch allows them for matmuls, exact fp32 otherwise (and always
    # in the interpreter, which computes in numpy fp32 anyway). 16-bit operands ignore the setting.
    if dtype == torch.float32 and gpu_configs(device) and not INTERPRET and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _fixed_block_m(M: int) -> int:
    return max(16, min(64, triton.next_power_of_2(max(M, 1))))


if HAS_TRITON:

    @triton.jit
    def _dds_kernel(
        # pointers
        a_ptr, s_ptr, bias_ptr, out_ptr, offsets_ptr, q_idx_ptr, order_ptr,
        # sizes
        M, P, Q,
        # strides (elements)
        stride_am, stride_aq, stride_sq, stride_sp, stride_om, stride_op,
        # meta-parameters: BP x BQ is the sparse block (as seen in S), BK the K-step inside one block
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BP: tl.constexpr, BQ: tl.constexpr, BK: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """Out[m, p] = sum_q A[m, q] S[q, p] (+ bias[p]) over the non-zero (BQ x BP) blocks of S's column p."""
        pid = tl.program_id(0)
        n_m_tiles = tl.cdiv(M, BLOCK_M)
        # consecutive programs share the same block column of S (L2 reuse of the weight blocks)
        pb = tl.load(order_ptr + pid // n_m_tiles)
        m_tile = pid % n_m_tiles
        start = tl.load(offsets_ptr + pb)
        end = tl.load(offsets_ptr + pb + 1)

        offs_m = (m_tile * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
        offs_p = (pb * BP + tl.arange(0, BP)).to(tl.int64)
        offs_k = tl.arange(0, BK)
        SPLIT: tl.constexpr = BQ // BK
        acc = tl.zeros((BLOCK_M, BP), dtype=tl.float32)
        # one flat loop over (block, K-step) so the pipeliner overlaps loads across block boundaries
        for t in range(0, (end - start) * SPLIT):
            qb = tl.load(q_idx_ptr + start + t // SPLIT).to(tl.int64)
            offs_q = qb * BQ + (t % SPLIT) * BK + offs_k
            a = tl.load(a_ptr + offs_m[:, None] * stride_am + offs_q[None, :] * stride_aq,
                        mask=(offs_m[:, None] < M) & (offs_q[None, :] < Q), other=0.0)
            s = tl.load(s_ptr + offs_q[:, None] * stride_sq + offs_p[None, :] * stride_sp,
                        mask=(offs_q[:, None] < Q) & (offs_p[None, :] < P), other=0.0)
            acc = tl.dot(a, s, acc, input_precision=PRECISION)
        if HAS_BIAS:
            bias = tl.load(bias_ptr + offs_p, mask=offs_p < P, other=0.0)
            acc += bias[None, :].to(tl.float32)
        tl.store(out_ptr + offs_m[:, None] * stride_om + offs_p[None, :] * stride_op,
                 acc.to(out_ptr.dtype.element_ty), mask=(offs_m[:, None] < M) & (offs_p[None, :] < P))

    @triton.jit
    def _sdd_kernel(
        # pointers
        a_ptr, b_ptr, out_ptr, row_idx_ptr, col_idx_ptr,
        # sizes
        R, C, L,
        # strides (elements)
        stride_ar, stride_al, stride_bl, stride_bc, stride_or, stride_oc,
        # meta-parameters: BR x BC sub-tile of a (BM x BN) block, BL the reduction step
        BM: tl.constexpr, BN: tl.constexpr, BR: tl.constexpr, BC: tl.constexpr, BL: tl.constexpr,
        PRECISION: tl.constexpr,
    ):
        """Out[r, c] = sum_l A[r, l] B[l, c] for (r, c) inside the listed (BM x BN) blocks; nothing else is written."""
        SUB_R: tl.constexpr = BM // BR
        SUB_C: tl.constexpr = BN // BC
        pid = tl.program_id(0)
        e = pid // (SUB_R * SUB_C)
        sub = pid % (SUB_R * SUB_C)
        rb = tl.load(row_idx_ptr + e).to(tl.int64)
        cb = tl.load(col_idx_ptr + e).to(tl.int64)
        offs_r = rb * BM + (sub // SUB_C) * BR + tl.arange(0, BR)
        offs_c = cb * BN + (sub % SUB_C) * BC + tl.arange(0, BC)
        offs_l = tl.arange(0, BL).to(tl.int64)
        acc = tl.zeros((BR, BC), dtype=tl.float32)
        for l0 in range(0, L, BL):
            ls = l0 + offs_l
            a = tl.load(a_ptr + offs_r[:, None] * stride_ar + ls[None, :] * stride_al,
                        mask=(offs_r[:, None] < R) & (ls[None, :] < L), other=0.0)
            b = tl.load(b_ptr + ls[:, None] * stride_bl + offs_c[None, :] * stride_bc,
                        mask=(ls[:, None] < L) & (offs_c[None, :] < C), other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
        tl.store(out_ptr + offs_r[:, None] * stride_or + offs_c[None, :] * stride_oc,
                 acc.to(out_ptr.dtype.element_ty), mask=(offs_r[:, None] < R) & (offs_c[None, :] < C))

    # ----------------------------------------------------------------------------------------- GPU autotune

    # The autotuner passes positional arguments as ``named_args`` and the constexprs given by keyword apart.
    def _prune_dds(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        bq = args["BQ"]
        m_cap = max(16, triton.next_power_of_2(args["M"]))
        kept = [c for c in configs if c.kwargs["BK"] <= bq and c.kwargs["BLOCK_M"] <= max(64, m_cap)]
        return kept or configs[:1]

    def _prune_sdd(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        bm, bn = args["BM"], args["BN"]
        kept = [c for c in configs if c.kwargs["BR"] <= bm and c.kwargs["BC"] <= bn]
        return kept or configs[:1]

    # BLOCK_M x BK x stages; the first of each list is the pinned config; num_stages >= 3 matters for these
    # indirect loops (torchao measured ~1.2x).
    def _dds_configs(table):
        return [triton.Config({"BLOCK_M": bm, "BK": bk}, num_warps=w, num_stages=s) for bm, bk, w, s in table]

    _DDS_CONFIGS = _dds_configs([(64, 32, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4), (128, 64, 8, 3), (128, 32, 8, 4),
                                 (64, 64, 4, 5), (128, 64, 4, 4), (32, 64, 4, 4), (64, 16, 4, 4), (128, 16, 4, 4),
                                 (32, 16, 4, 3)])
    # exact fp32 (see Tuned's ``exact``): a short K step and more warps for the whole (BLOCK_M x block) accumulator;
    # (32, 32, 4, 3) spilled on sm_80 in the static proof
    _DDS_EXACT = _dds_configs([(64, 16, 8, 3), (32, 16, 4, 3), (64, 16, 4, 3), (128, 16, 8, 3)])

    def _sdd_configs(table):
        return [triton.Config({"BR": br, "BC": bc, "BL": bl}, num_warps=w, num_stages=s)
                for br, bc, bl, w, s in table]

    _SDD_TABLE = [(64, 64, 32, 4, 3), (64, 64, 64, 4, 3), (128, 128, 32, 8, 3), (128, 64, 64, 8, 3),
                  (64, 128, 64, 8, 3), (32, 32, 64, 4, 4), (16, 16, 64, 2, 4), (128, 128, 64, 8, 4)]
    _SDD_CONFIGS = _sdd_configs(_SDD_TABLE)
    # exact fp32: (128, 64, 64, 8, 3) spills there (static proof, both targets); (128, 128, 64, 8, 4) never fits
    # shared memory in fp32
    _SDD_EXACT = _sdd_configs([c for c in _SDD_TABLE if c not in ((128, 64, 64, 8, 3), (128, 128, 64, 8, 4))])
    # Shared memory: the A and S (or A and B) tiles of num_stages pipeline stages.
    # (BLOCK_M, BK, stages, warps) spilling in the static proof's full tier: bf16 on sm_80 (16 B of stack)
    _DDS_SPILLS = {80: {torch.bfloat16: {(128, 16, 4, 4)}}}
    _dds_spills = spill_prune("a_ptr", ("BLOCK_M", "BK"), _DDS_SPILLS)
    _dds_tuned = Tuned(_dds_kernel, _DDS_CONFIGS, key=["M", "P", "Q", "BP", "BQ", "HAS_BIAS", "PRECISION"],
                       prune=lambda configs, named: _dds_spills(_prune_dds(configs, named), named) or configs[:1],
                       smem=("a_ptr", ("BLOCK_M", "BK", "BP")), exact=("PRECISION", _DDS_EXACT))
    _sdd_tuned = Tuned(_sdd_kernel, _SDD_CONFIGS, key=["R", "C", "L", "BM", "BN", "PRECISION"],
                       prune=_prune_sdd, smem=("a_ptr", ("BR", "BL", "BC")), exact=("PRECISION", _SDD_EXACT))


# --------------------------------------------------------------------------------------------- launchers


def dds(a: torch.Tensor, s: torch.Tensor, bias: torch.Tensor | None, offsets: torch.Tensor, q_idx: torch.Tensor,
        order: torch.Tensor, bp: int, bq: int) -> torch.Tensor:
    """Out (M, P) = a (M, Q) @ s (Q, P) + bias, s block-sparse with (bq x bp) blocks; s may be a transposed view.

    ``offsets`` (n_p + 1), ``q_idx`` and ``order`` (n_p) describe s's block columns (see ``BlockSparseLayout``).
    """
    M, Q = a.shape
    P = s.shape[1]
    out = torch.empty(M, P, dtype=a.dtype, device=a.device)
    if out.numel() == 0:
        return out
    n_p = order.numel()
    bias_arg = bias if bias is not None else out  # never read when HAS_BIAS is False
    args = (a, s, bias_arg, out, offsets, q_idx, order)
    strides = (a.stride(0), a.stride(1), s.stride(0), s.stride(1), out.stride(0), out.stride(1))
    meta = dict(HAS_BIAS=bias is not None, BP=bp, BQ=bq, PRECISION=_precision(a.dtype, a.device))
    if gpu_configs(a.device):
        grid = lambda cfg: (n_p * triton.cdiv(M, cfg["BLOCK_M"]),)  # noqa: E731
        _dds_tuned(grid, *args, M, P, Q, *strides, **meta)
    else:
        block_m = _fixed_block_m(M)
        bk = min(bq, 32 if a.dtype == torch.float32 else 64)
        launch(_dds_kernel, (n_p * triton.cdiv(M, block_m),), *args, M, P, Q, *strides, BLOCK_M=block_m, BK=bk,
               num_warps=4, num_stages=3, **meta)
    return out


def sdd(a: torch.Tensor, b: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor, bm: int, bn: int,
        out: torch.Tensor | None = None) -> torch.Tensor:
    """Out (R, C) = (a (R, L) @ b (L, C)) at the (bm x bn) blocks (row_idx, col_idx); zeros elsewhere."""
    R, L = a.shape
    C = b.shape[1]
    if out is None:
        out = torch.zeros(R, C, dtype=a.dtype, device=a.device)
    nnz = row_idx.numel()
    if nnz == 0 or out.numel() == 0:
        return out
    args = (a, b, out, row_idx, col_idx, R, C, L,
            a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1))
    prec = _precision(a.dtype, a.device)
    if gpu_configs(a.device):
        grid = lambda cfg: (nnz * (bm // cfg["BR"]) * (bn // cfg["BC"]),)  # noqa: E731
        _sdd_tuned(grid, *args, BM=bm, BN=bn, PRECISION=prec)
    else:
        br, bc = min(bm, 64), min(bn, 64)
        bl = 32 if a.dtype == torch.float32 else 64
        launch(_sdd_kernel, (nnz * (bm // br) * (bn // bc),), *args, BM=bm, BN=bn, BR=br, BC=bc, BL=bl,
               PRECISION=prec, num_warps=4, num_stages=3)
    return out
