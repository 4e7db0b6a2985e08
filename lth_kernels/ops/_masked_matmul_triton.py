"""Triton backend of the masked matmul ops (design A1): a dense-tile GEMM that applies the bit-packed mask while it
loads W tiles, skips all-zero W tiles through per-tile lists, and fuses the masked weight gradient and the score
gradient into the dW epilogue.

* forward ``Y = X · (W ⊙ M)ᵀ + b`` and ``dX = dY · (W ⊙ M)`` share one kernel (:func:`_masked_mm_kernel`); the
  reduction loop visits only the tiles listed in :class:`~lth_kernels.ops._mask_cache.MaskMeta`.
* ``dW = (dYᵀ · X) ⊙ M`` and the score gradient ``G = (dYᵀ · X) ⊙ W`` come from one kernel
  (:func:`_grad_weight_kernel`) that emits either or both, so ``dYᵀX`` is never written out; tiles without a kept
  weight are not computed (zeros written) unless ``G`` is wanted. When the (N, K) output has fewer tiles than the
  GPU has SMs, the token dimension is split in a fixed number of chunks whose fp32 partials a second kernel sums in
  a fixed order (deterministic, no atomics) and finishes with the same epilogue.

fp16/bf16 operands go to ``tl.dot`` as they are, with fp32 accumulation; fp32 uses TF32 on the GPU only when
``torch.backends.cuda.matmul.allow_tf32`` allows it. float64 runs on the reference. On the GPU the configs are
autotuned per (M, N, K); under the interpreter (CPU tensors, ``TRITON_INTERPRET=1``) a fixed small config runs.
"""

from __future__ import annotations

import torch

from lth_kernels.ops import _mask_cache, _registry
from lth_kernels.ops._triton import HAS_TRITON, Tuned, gpu_configs, launch, sm_count, spill_prune, tl, triton

if HAS_TRITON:

    @triton.jit
    def _grouped_pid(pid, num_pid_a, num_pid_b, GROUP: tl.constexpr):
        # Grouped ordering (Triton matmul tutorial): GROUP consecutive a-blocks share the b-blocks in L2.
        num_pid_in_group = GROUP * num_pid_b
        first_pid_a = (pid // num_pid_in_group) * GROUP
        group_size = min(num_pid_a - first_pid_a, GROUP)
        return first_pid_a + ((pid % num_pid_in_group) % group_size), (pid % num_pid_in_group) // group_size

    @triton.jit
    def _expand_bits(words, ROWS: tl.constexpr, COLS: tl.constexpr, ALONG_ROWS: tl.constexpr):
        # (ROWS, COLS) 0/1 tile from packed int32 words: bit b of word w is row 32w + b of its column when the
        # bits run along the rows (words (ROWS/32, COLS)), else column 32w + b of its row (words (ROWS, COLS/32)).
        bit = tl.arange(0, 32)
        if ALONG_ROWS:
            return tl.reshape((words[:, None, :] >> bit[None, :, None]) & 1, (ROWS, COLS))
        return tl.reshape((words[:, :, None] >> bit[None, None, :]) & 1, (ROWS, COLS))

    # Integer arguments that only index the mask bits and tile table are not specialized on (divisibility by 16):
    # that would compile each config again per layer width for no faster load.
    @triton.jit(do_not_specialize=["n_words", "table_row2", "table_row4", "table_cols"])
    def _masked_mm_kernel(
        # pointers: activations (M, RED), weight (N, K), packed mask bits (N, n_words), tile table, bias, output
        a_ptr, w_ptr, bits_ptr, table_ptr, bias_ptr, c_ptr,
        # sizes; table_row2/table_row4: first table row of fan-out 2 / 4; table_cols = 1 + reduction tiles
        M, OUT, RED, n_words, table_row2, table_row4, table_cols,
        # strides
        stride_am, stride_ar, stride_wn, stride_wk, stride_cm, stride_co,
        # meta: W_RED_IS_K: forward (reduce over K, output N) vs dX (reduce over N, output K)
        W_RED_IS_K: tl.constexpr, APPLY_MASK: tl.constexpr, HAS_BIAS: tl.constexpr, TILE: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_OUT: tl.constexpr, GROUP_SIZE_M: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    ):
        """C[m, o] = sum_r A[m, r] · B[r, o] (+ bias[o]), B = (W ⊙ M)ᵀ (forward) or W ⊙ M (dX).

        The reduction runs in TILE-wide steps over the reduction tiles that the table lists for this program's
        output-column group (BLOCK_OUT = 1, 2 or 4 TILEs), so all-zero W tiles are never loaded. The mask bits of a
        W tile are TILE·BLOCK_OUT/32 int32 words, expanded to a bool tile in registers (32x less traffic than a
        bool mask), and applied with ``where`` so a pruned entry contributes 0 even if it stores inf/nan.
        """
        pid_m, pid_o = _grouped_pid(tl.program_id(0), tl.cdiv(M, BLOCK_M), tl.cdiv(OUT, BLOCK_OUT), GROUP_SIZE_M)

        # The table row of this output-column group; the fan-out is a compile-time choice of the config.
        row = pid_o
        if BLOCK_OUT == 2 * TILE:
            row += table_row2
        elif BLOCK_OUT == 4 * TILE:
            row += table_row4
        table_row = table_ptr + row.to(tl.int64) * table_cols
        count = tl.load(table_row)

        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_o = pid_o * BLOCK_OUT + tl.arange(0, BLOCK_OUT)
        offs_t = tl.arange(0, TILE)
        a_rows = a_ptr + offs_m[:, None].to(tl.int64) * stride_am
        in_m = offs_m[:, None] < M
        in_o = offs_o[None, :] < OUT

        acc = tl.zeros((BLOCK_M, BLOCK_OUT), dtype=tl.float32)
        for i in range(0, count):
            r_tile = tl.load(table_row + 1 + i)
            offs_r = r_tile * TILE + offs_t
            in_r = offs_r[:, None] < RED
            a = tl.load(a_rows + offs_r[None, :] * stride_ar, mask=in_m & (offs_r[None, :] < RED), other=0.0)
            # B[r, o] = W[n, k] with (n, k) = (o, r) forward, (r, o) for dX; the mask words of W row n hold its
            # k-columns 32w..32w+31, so they run along r forward (words (TILE/32, BLOCK_OUT)) and along o for dX.
            if W_RED_IS_K:
                w_n, w_k, in_n = offs_o[None, :], offs_r[:, None], in_o
                word = r_tile * (TILE // 32) + tl.arange(0, TILE // 32)[:, None]
            else:
                w_n, w_k, in_n = offs_r[:, None], offs_o[None, :], in_r
                word = (pid_o * BLOCK_OUT) // 32 + tl.arange(0, BLOCK_OUT // 32)[None, :]
            b = tl.load(w_ptr + w_n.to(tl.int64) * stride_wn + w_k * stride_wk, mask=in_r & in_o, other=0.0)
            if APPLY_MASK:
                words = tl.load(bits_ptr + w_n.to(tl.int64) * n_words + word, mask=in_n & (word < n_words), other=0)
                b = tl.where(_expand_bits(words, TILE, BLOCK_OUT, W_RED_IS_K) != 0, b, 0.0)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

        # Epilogue on the fp32 accumulator: bias, then one rounding to the output dtype.
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_o, mask=offs_o < OUT, other=0.0).to(tl.float32)[None, :]
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * stride_cm + offs_o[None, :] * stride_co
        tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=in_m & in_o)

    @triton.jit(do_not_specialize=["n_words", "m_per_split"])
    def _grad_weight_kernel(
        # pointers: dY (M, N), X (M, K), W (N, K), bits (N, n_words), outputs dW / G (N, K), fp32 split partials
        g_ptr, x_ptr, w_ptr, bits_ptr, dw_ptr, ds_ptr, ws_ptr,
        # sizes; m_per_split: tokens per split (all M without PARTIALS)
        M, N, K, n_words, m_per_split,
        # strides (outputs and partials are contiguous (N, K))
        stride_gm, stride_gn, stride_xm, stride_xk, stride_wn, stride_wk,
        # meta
        # PARTIALS: the tokens are split (grid axis 1); write the fp32 partial, not the epilogue
        WANT_DW: tl.constexpr, WANT_SCORES: tl.constexpr, PARTIALS: tl.constexpr,
        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_M: tl.constexpr, GROUP_SIZE_N: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        """(dYᵀ · X) over tokens [split·m_per_split, ...) for one (BLOCK_N x BLOCK_K) tile; epilogue dW = acc ⊙ M,
        G = acc ⊙ W, or the fp32 partial (PARTIALS, finished by :func:`_split_reduce_kernel`).

        A tile without a kept weight runs zero loop iterations unless G is wanted (G covers every entry)."""
        split = tl.program_id(1)
        pid_n, pid_k = _grouped_pid(tl.program_id(0), tl.cdiv(N, BLOCK_N), tl.cdiv(K, BLOCK_K), GROUP_SIZE_N)

        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
        in_n = offs_n[:, None] < N
        in_k = offs_k[None, :] < K
        m_start = split * m_per_split
        m_end = tl.minimum(M, m_start + m_per_split)
        if WANT_DW:
            word_k = (pid_k * BLOCK_K) // 32 + tl.arange(0, BLOCK_K // 32)
            words = tl.load(bits_ptr + offs_n[:, None].to(tl.int64) * n_words + word_k[None, :],
                            mask=in_n & (word_k[None, :] < n_words), other=0)
            if not WANT_SCORES:
                # Occupancy straight from the bits: exact for any tile shape the autotuner picks.
                occupied = tl.max(tl.max((words != 0).to(tl.int32), axis=1), axis=0)
                m_end = tl.where(occupied > 0, m_end, m_start)

        offs_mb = tl.arange(0, BLOCK_M)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for m0 in range(m_start, m_end, BLOCK_M):
            offs_m = m0 + offs_mb
            in_m = offs_m < m_end
            a = tl.load(g_ptr + offs_m[None, :].to(tl.int64) * stride_gm + offs_n[:, None] * stride_gn,
                        mask=in_m[None, :] & in_n, other=0.0)  # dYᵀ tile (BLOCK_N, BLOCK_M)
            b = tl.load(x_ptr + offs_m[:, None].to(tl.int64) * stride_xm + offs_k[None, :] * stride_xk,
                        mask=in_m[:, None] & in_k, other=0.0)  # X tile (BLOCK_M, BLOCK_K)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

        out = offs_n[:, None].to(tl.int64) * K + offs_k[None, :]
        inside = in_n & in_k
        if PARTIALS:
            tl.store(ws_ptr + split.to(tl.int64) * N * K + out, acc, mask=inside)
        else:
            if WANT_DW:
                keep = _expand_bits(words, BLOCK_N, BLOCK_K, False)
                tl.store(dw_ptr + out, tl.where(keep != 0, acc, 0.0).to(dw_ptr.dtype.element_ty), mask=inside)
            if WANT_SCORES:
                w = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :] * stride_wk,
                            mask=inside, other=0.0).to(tl.float32)
                tl.store(ds_ptr + out, (acc * w).to(ds_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _split_reduce_kernel(ws_ptr, w_ptr, bits_ptr, dw_ptr, ds_ptr, N, K, n_words, stride_wn, stride_wk,
                             SPLIT: tl.constexpr, WANT_DW: tl.constexpr, WANT_SCORES: tl.constexpr,
                             BLOCK: tl.constexpr):
        """Sums the SPLIT fp32 partials of each (N, K) entry in split order (deterministic) and applies the dW / G
        epilogue. Partials of skipped tiles are zeros, and their entries are all masked anyway."""
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < N * K
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for s in tl.static_range(SPLIT):
            acc += tl.load(ws_ptr + s * N * K + offs, mask=inside, other=0.0)
        n = offs // K
        k = offs % K
        if WANT_DW:
            word = tl.load(bits_ptr + n * n_words + k // 32, mask=inside, other=0)
            keep = ((word >> (k % 32)) & 1) != 0
            tl.store(dw_ptr + offs, tl.where(keep, acc, 0.0).to(dw_ptr.dtype.element_ty), mask=inside)
        if WANT_SCORES:
            w = tl.load(w_ptr + n * stride_wn + k * stride_wk, mask=inside, other=0.0).to(tl.float32)
            tl.store(ds_ptr + offs, (acc * w).to(ds_ptr.dtype.element_ty), mask=inside)

    # ----------------------------------------------------------------------------------------- GPU configs

    # (BLOCK_M, BLOCK_OUT, stages, warps), after the Hopper/Ampere list of the Triton matmul tutorial; BLOCK_OUT is
    # 1, 2 or 4 base tiles (64), the reduction step is one base tile. Configs whose pipelined tiles do not fit in
    # shared memory are dropped (fp32 at 4-5 stages, A100). PINNED_*: the config LTH_KERNELS_AUTOTUNE=0 runs, a
    # middle-sized tile that fits every 16-bit dtype on both architectures.
    _MM_CONFIGS = [(128, 256, 3, 8), (256, 128, 3, 8), (128, 256, 4, 8), (128, 128, 3, 8), (128, 128, 4, 4),
                   (128, 128, 5, 4), (64, 256, 4, 4), (64, 128, 4, 4), (64, 128, 5, 4), (128, 64, 4, 4),
                   (64, 64, 4, 4)]
    PINNED_MM = 3
    # (BLOCK_N, BLOCK_K, BLOCK_M, stages, warps) for dW: the reduction runs over tokens.
    _GW_CONFIGS = [(128, 128, 64, 3, 8), (128, 128, 64, 4, 4), (128, 256, 64, 3, 8), (256, 128, 64, 3, 8),
                   (64, 128, 64, 4, 4), (128, 64, 64, 4, 4), (64, 64, 64, 4, 4), (128, 128, 32, 5, 4)]
    PINNED_GW = 0
    # Exact fp32 (no TF32): no tensor cores, smaller tiles at more warps (see Tuned's ``exact``); the first pinned.
    # The static proof kept the configs that compile without spills on both sm_90a and sm_80: of (128, 128, 2, 8),
    # (128, 64, 3, 8), (64, 128, 3, 8), (64, 64, 2, 4), (32, 64, 3, 4) and (64, 64, 3, 8) only the last one for the
    # forward/dX kernel (its reduction step is the 64-wide mask tile), every dW candidate.
    _MM_EXACT = [(64, 64, 3, 8)]
    _GW_EXACT = [(64, 64, 32, 3, 8), (64, 64, 16, 3, 4), (128, 64, 16, 3, 8), (64, 128, 16, 3, 8),
                 (128, 128, 16, 3, 8), (32, 64, 32, 3, 4)]

    # Configs whose variants spill registers in the static proof's full tier (8-416 B of stack), by architecture and
    # operand dtype: the forward/dX kernel with the mask applied in bf16 (the mask words expanded to a bool tile
    # beside the bf16 operands) one tile on Hopper, five on Ampere-class GPUs; dW on Ampere four bf16 tiles, two of
    # which spill in every dtype there. fp16/fp32 variants of the other tiles compile without spills.
    _MM_SPILLS = {90: {torch.bfloat16: {(64, 256, 4, 4)}},
                  80: {torch.bfloat16: {(64, 256, 4, 4), (256, 128, 3, 8), (128, 256, 3, 8), (128, 128, 5, 4),
                                        (128, 128, 4, 4)}}}
    _GW_SPILLS = {80: {"*": {(128, 128, 32, 5, 4), (128, 128, 64, 4, 4)},
                       torch.bfloat16: {(256, 128, 64, 3, 8), (128, 256, 64, 3, 8)}}}

    def _mm_configs(table):
        return [triton.Config({"BLOCK_M": m, "BLOCK_OUT": o, "GROUP_SIZE_M": 8}, num_stages=s, num_warps=w)
                for m, o, s, w in table]

    def _gw_configs(table):
        return [triton.Config({"BLOCK_N": n, "BLOCK_K": k, "BLOCK_M": m, "GROUP_SIZE_N": 8}, num_stages=s,
                              num_warps=w) for n, k, m, s, w in table]

    _masked_mm_tuned = Tuned(
        _masked_mm_kernel, _mm_configs(_MM_CONFIGS),
        key=["M", "OUT", "RED", "W_RED_IS_K", "APPLY_MASK", "HAS_BIAS", "INPUT_PRECISION"],
        prune=spill_prune("a_ptr", ("BLOCK_M", "BLOCK_OUT"), _MM_SPILLS, lambda n: n.get("APPLY_MASK")),
        smem=("a_ptr", ("BLOCK_M", "TILE", "BLOCK_OUT")), pinned=PINNED_MM,
        exact=("INPUT_PRECISION", _mm_configs(_MM_EXACT)))

    _grad_weight_tuned = Tuned(
        _grad_weight_kernel, _gw_configs(_GW_CONFIGS),
        key=["M", "N", "K", "m_per_split", "WANT_DW", "WANT_SCORES", "PARTIALS", "INPUT_PRECISION"],
        prune=spill_prune("g_ptr", ("BLOCK_N", "BLOCK_K", "BLOCK_M"), _GW_SPILLS),
        smem=("g_ptr", ("BLOCK_N", "BLOCK_M", "BLOCK_K")), pinned=PINNED_GW,
        exact=("INPUT_PRECISION", _gw_configs(_GW_EXACT)))

# Fixed configs for the interpreter (tiny shapes; a 32-wide base tile keeps the tile lists non-trivial).
INTERPRETER_TILE = 32
GPU_TILE = 64
INTERPRETER_MM = {"BLOCK_M": 64, "BLOCK_OUT": 32, "GROUP_SIZE_M": 2}
INTERPRETER_GW = {"BLOCK_N": 32, "BLOCK_K": 32, "BLOCK_M": 64, "GROUP_SIZE_N": 2}


def _tile(device: torch.device) -> int:
    return GPU_TILE if gpu_configs(device) else INTERPRETER_TILE


def _precision(dtype: torch.dtype, device: torch.device) -> str:
    if not gpu_configs(device) or (dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32):
        return "ieee"
    return "tf32"  # ignored for fp16/bf16 operands; TF32 for fp32 when the caller allows it


def mask_meta(mask: torch.Tensor) -> _mask_cache.MaskMeta:
    """The cached kernel metadata of ``mask`` at this device's base tile."""
    t = _tile(mask.device)
    return _mask_cache.get(mask, (t, t))


# --------------------------------------------------------------------------------------------- launchers


def masked_matmul_forward(a: torch.Tensor, weight: torch.Tensor, meta: _mask_cache.MaskMeta,
                          bias: torch.Tensor | None = None, *, apply_mask: bool = True, grad_input: bool = False,
                          config: dict | None = None) -> torch.Tensor:
    """(M, RED) @ masked weight -> (M, OUT) in a's dtype: ``a · (W ⊙ M)ᵀ + bias`` (RED = K, OUT = N), or with
    ``grad_input=True`` ``a · (W ⊙ M)`` (RED = N, OUT = K). ``apply_mask=False`` trusts W to be 0 where M is False
    (tiles are still skipped). ``config``: fixed kernel config (BLOCK_OUT = 1, 2 or 4 base tiles) instead of the
    GPU autotuner / the interpreter default."""
    n, k = weight.shape
    m, red = a.shape
    out_dim = k if grad_input else n
    tile = meta.tile[0]
    if meta.tile[0] != meta.tile[1] or tuple(meta.shape) != (n, k):
        raise ValueError(f"meta: expected square tiles for a mask of shape {(n, k)}, got tile {meta.tile} for "
                         f"shape {meta.shape}")
    c = torch.empty(m, out_dim, dtype=a.dtype, device=a.device)
    if m == 0 or out_dim == 0:
        return c
    table, rows = (meta.bwd_table, meta.bwd_rows) if grad_input else (meta.fwd_table, meta.fwd_rows)
    args = (a, weight, meta.bits, table, c if bias is None else bias, c,
            m, out_dim, red, meta.bits.shape[1], rows[1], rows[2], table.shape[1],
            a.stride(0), a.stride(1), weight.stride(0), weight.stride(1), c.stride(0), c.stride(1))
    meta_args = {"W_RED_IS_K": not grad_input, "APPLY_MASK": bool(apply_mask), "HAS_BIAS": bias is not None,
                 "TILE": tile, "INPUT_PRECISION": _precision(a.dtype, a.device)}
    if gpu_configs(a.device) and config is None:
        grid = lambda META: (triton.cdiv(m, META["BLOCK_M"]) * triton.cdiv(out_dim, META["BLOCK_OUT"]),)
        _masked_mm_tuned(grid, *args, **meta_args)
    else:
        cfg = {**INTERPRETER_MM, **(config or {})}
        if cfg["BLOCK_OUT"] not in [r * tile for r in _mask_cache.FANOUT]:
            raise ValueError(f"config: BLOCK_OUT must be 1, 2 or 4 x the tile {tile}, got {cfg['BLOCK_OUT']}")
        grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(out_dim, cfg["BLOCK_OUT"]),)
        launch(_masked_mm_kernel, grid, *args, **meta_args, **cfg)
    return c


def _auto_split(m: int, n: int, k: int, device: torch.device) -> int:
    """Token splits for dW: enough (N, K) tiles x splits to fill the SMs, at least 1024 tokens per split, a power
    of two (fewer autotuner keys), and at most 256 MB of fp32 partials."""
    if not gpu_configs(device):
        return 1
    sms = sm_count(device)
    tiles = triton.cdiv(n, 128) * triton.cdiv(k, 128)
    want = min(triton.cdiv(sms, tiles), m // 1024, 16, (256 << 20) // max(1, 4 * n * k))
    return 1 << (max(want, 1).bit_length() - 1)


def masked_matmul_grad_weight(grad_out: torch.Tensor, x: torch.Tensor, *, bits: torch.Tensor | None = None,
                              weight: torch.Tensor | None = None, split: int | None = None,
                              config: dict | None = None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """From dY (M, N) and X (M, K): ``(dYᵀX) ⊙ M`` when ``bits`` (packed mask) is given, and the score gradient
    ``(dYᵀX) ⊙ W`` when ``weight`` is given, in one pass; both (N, K) in x's dtype (None where not asked).
    ``split``: token splits (default: by SM count on the GPU, 1 under the interpreter)."""
    want_dw, want_scores = bits is not None, weight is not None
    if not (want_dw or want_scores):
        raise ValueError("bits/weight: give the packed mask (masked dW), the weight (score gradient) or both")
    m, n = grad_out.shape
    k = x.shape[1]
    dev = x.device
    dw = torch.empty(n, k, dtype=x.dtype, device=dev) if want_dw else None
    ds = torch.empty(n, k, dtype=x.dtype, device=dev) if want_scores else None
    if n == 0 or k == 0:
        return dw, ds
    if m == 0:
        return (None if dw is None else dw.zero_()), (None if ds is None else ds.zero_())
    split = _auto_split(m, n, k, dev) if split is None else split
    per = triton.cdiv(m, split)
    if split > 1 and gpu_configs(dev):
        per = triton.cdiv(per, 128) * 128  # whole BLOCK_M steps per split
    split = triton.cdiv(m, per)
    ws = torch.empty(split, n, k, dtype=torch.float32, device=dev) if split > 1 else x
    # Unused pointers (a constexpr flag is off) get x; they are never dereferenced.
    w_arg, bits_arg = (x if weight is None else weight), (x if bits is None else bits)
    dw_arg, ds_arg = (x if dw is None else dw), (x if ds is None else ds)
    n_words = 0 if bits is None else bits.shape[1]
    stride_wn, stride_wk = (0, 0) if weight is None else weight.stride()
    args = (grad_out, x, w_arg, bits_arg, dw_arg, ds_arg, ws, m, n, k, n_words, per,
            grad_out.stride(0), grad_out.stride(1), x.stride(0), x.stride(1), stride_wn, stride_wk)
    meta_args = {"WANT_DW": want_dw, "WANT_SCORES": want_scores, "PARTIALS": split > 1,
                 "INPUT_PRECISION": _precision(x.dtype, dev)}
    if gpu_configs(dev) and config is None:
        grid = lambda META: (triton.cdiv(n, META["BLOCK_N"]) * triton.cdiv(k, META["BLOCK_K"]), split)
        _grad_weight_tuned(grid, *args, **meta_args)
    else:
        cfg = {**INTERPRETER_GW, **(config or {})}
        grid = (triton.cdiv(n, cfg["BLOCK_N"]) * triton.cdiv(k, cfg["BLOCK_K"]), split)
        launch(_grad_weight_kernel, grid, *args, **meta_args, **cfg)
    if split > 1:
        block = 1024
        launch(_split_reduce_kernel, (triton.cdiv(n * k, block),), ws, w_arg, bits_arg, dw_arg, ds_arg, n, k,
               n_words, stride_wn, stride_wk, SPLIT=split, WANT_DW=want_dw, WANT_SCORES=want_scores, BLOCK=block)
    return dw, ds


# --------------------------------------------------------------------------------------------- registration
# The op names, signatures and autograd live in lth_kernels/ops/masked_matmul.py; float64 runs on its reference.


def _reference(op: str):
    return _registry.implementation(op, "reference")


@_registry.register("masked_linear", "triton")
def masked_linear_triton(x, weight, mask, bias, weight_is_masked):
    if x.dtype == torch.float64:
        return _reference("masked_linear")(x, weight, mask, bias, weight_is_masked)
    n, k = weight.shape
    y = masked_matmul_forward(x.reshape(-1, k), weight, mask_meta(mask), bias, apply_mask=not weight_is_masked)
    return y.reshape(*x.shape[:-1], n)


@_registry.register("masked_linear_grad_input", "triton")
def masked_linear_grad_input_triton(grad_out, weight, mask, weight_is_masked):
    if weight.dtype == torch.float64:
        return _reference("masked_linear_grad_input")(grad_out, weight, mask, weight_is_masked)
    n, k = weight.shape
    g = grad_out.reshape(-1, n).to(weight.dtype)
    dx = masked_matmul_forward(g, weight, mask_meta(mask), apply_mask=not weight_is_masked, grad_input=True)
    return dx.reshape(*grad_out.shape[:-1], k)


def _grad_weight_2d(grad_out, x, **outputs):
    # dY and X as (tokens, features) in x's dtype, then one dW / score-gradient pass
    g = grad_out.reshape(-1, grad_out.shape[-1]).to(x.dtype)
    return masked_matmul_grad_weight(g, x.reshape(-1, x.shape[-1]), **outputs)


@_registry.register("masked_linear_grad_weight_and_scores", "triton")
def masked_linear_grad_weight_and_scores(grad_out, x, weight, mask):
    """Masked dW and score gradient from one pass over dY and X (lottery jackpots / edge-popup backward)."""
    if x.dtype == torch.float64:
        return (_reference("masked_linear_grad_weight")(grad_out, x, mask),
                _reference("masked_linear_grad_scores")(grad_out, x, weight))
    return _grad_weight_2d(grad_out, x, bits=mask_meta(mask).bits, weight=weight)


@_registry.register("masked_linear_grad_weight", "triton")
def masked_linear_grad_weight_triton(grad_out, x, mask):
    if x.dtype == torch.float64:
        return _reference("masked_linear_grad_weight")(grad_out, x, mask)
    return _grad_weight_2d(grad_out, x, bits=mask_meta(mask).bits)[0]


@_registry.register("masked_linear_grad_scores", "triton")
def masked_linear_grad_scores_triton(grad_out, x, weight):
    if x.dtype == torch.float64:
        return _reference("masked_linear_grad_scores")(grad_out, x, weight)
    return _grad_weight_2d(grad_out, x, weight=weight)[1]
