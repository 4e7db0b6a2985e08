"""Triton flash attention (online softmax, exp2) for :mod:`lth_kernels.ops.sparse_attention`.

One kernel family covers three row layouts, chosen by the constexpr ``MODE``:
  0 dense    (B, H, N, d): logical position i of sample b is row i;
  1 index    (B, H, N, d) + keep_index (B, K): position i is row keep_index[b, i] (no separate gather);
  2 varlen   packed (T, H, d) + cu_seqlens (B + 1): position i of sequence b is row cu_seqlens[b] + i.
On top, ``BLOCK_SPARSE`` walks FlexAttention-style block lists instead of every KV block: full blocks
without the element mask, partial blocks with it; a mask block may span several kernel tiles (``_TILES``:
the tiles are chosen per GPU, the mask block by the user). The backward is FA2's two-pass scheme without
atomics, one kernel launched twice (constexpr ``KV_PASS``): one program per KV tile accumulates dK, dV over the
query tiles that see it (transposed lists), one program per query tile accumulates dQ; both recompute P from the
saved log-sum-exp.
Fully masked query rows output 0 and get 0 gradient (their LSE is stored as +inf).
"""

from __future__ import annotations

import torch

from lth_kernels.ops._triton import HAS_TRITON, capability, gpu_configs, launch, tl, triton

LOG2E = 1.4426950408889634

if HAS_TRITON:

    @triton.jit
    def _program(CU, SEQ, H, MODE: tl.constexpr):
        # (b, h, b * H + h, first packed row, length) of this program's sequence (grid axis 1 = batch x head)
        bh = tl.program_id(1)
        b = (bh // H).to(tl.int64)
        if MODE == 2:
            start = tl.load(CU + b).to(tl.int64)
            return b, (bh % H).to(tl.int64), bh, start, (tl.load(CU + b + 1).to(tl.int64) - start).to(tl.int32)
        # SEQ as an int32 tensor even when Triton specializes the argument to a constant
        return b, (bh % H).to(tl.int64), bh, tl.zeros((), dtype=tl.int64), tl.zeros((), dtype=tl.int32) + SEQ

    @triton.jit
    def _meta_offsets(b, h, pid, s_meta, s_em):
        # offsets of this program's block count, block list and element-mask plane (batch/head dims may broadcast);
        # s_meta = (count batch, count head, list batch, list head, list row), s_em = (batch, head, row)
        return (b * s_meta[0] + h * s_meta[1] + pid, b * s_meta[2] + h * s_meta[3] + pid * s_meta[4],
                b * s_em[0] + h * s_em[1])

    @triton.jit
    def _head(s, b, h):
        # offset of (batch b, head h) in a tensor with (batch, head, row) strides s
        return b * s[0] + h * s[1]

    @triton.jit
    def _rows(IDX, idx_off, start, pos, valid, MODE: tl.constexpr):
        # physical row of each logical position
        if MODE == 1:
            return tl.load(IDX + idx_off + pos, mask=valid, other=0).to(tl.int64)
        return start + pos.to(tl.int64)

    @triton.jit
    def _load_rows(P, off, rows, s_n, valid, offs_d, HEAD_DIM: tl.constexpr):
        ptrs = P + off + rows[:, None] * s_n + offs_d[None, :]
        return tl.load(ptrs, mask=valid[:, None] & (offs_d[None, :] < HEAD_DIM), other=0.0)

    @triton.jit
    def _q_block(IDX, idx_off, start, L, start_m, BLOCK_M: tl.constexpr, MODE: tl.constexpr,
                 O_COMPACT: tl.constexpr):
        # positions of a query block, their validity, rows of Q / dQ and rows of O / dO (compact: the position)
        offs_m = start_m + tl.arange(0, BLOCK_M)
        m_valid = offs_m < L
        qrows = _rows(IDX, idx_off, start, offs_m, m_valid, MODE)
        if O_COMPACT:
            return offs_m, m_valid, qrows, offs_m.to(tl.int64)
        return offs_m, m_valid, qrows, qrows

    @triton.jit
    def _kv_block(K, V, k_off, v_off, s_kn, s_vn, IDX, idx_off, start, L, start_n, offs_d, HEAD_DIM: tl.constexpr,
                  BLOCK_N: tl.constexpr, MODE: tl.constexpr):
        # positions of a KV block, their validity, their rows, and the K and V tiles
        offs_n = start_n + tl.arange(0, BLOCK_N)
        n_valid = offs_n < L
        krows = _rows(IDX, idx_off, start, offs_n, n_valid, MODE)
        k = _load_rows(K, k_off, krows, s_kn, n_valid, offs_d, HEAD_DIM)
        v = _load_rows(V, v_off, krows, s_vn, n_valid, offs_d, HEAD_DIM)
        return offs_n, n_valid, krows, k, v

    @triton.jit
    def _keep(q_pos, q_ok, kv_pos, kv_ok, EM, em_off, s_emq, APPLY_EM: tl.constexpr):
        # which (query, key) pairs count; positions and validity come broadcast to the score tile's orientation
        keep = q_ok & kv_ok
        if APPLY_EM:
            em = tl.load(EM + em_off + q_pos.to(tl.int64) * s_emq + kv_pos, mask=keep, other=0)
            keep = keep & (em != 0)
        return keep

    @triton.jit
    def _row_stats(LSE, DELTA, stat_off, offs_m, m_valid):
        # the saved log-sum-exp in log2 units (+inf on padding rows: P = 0 there) and the softmax-backward delta
        lse2 = tl.load(LSE + stat_off + offs_m, mask=m_valid, other=float("inf")) * 1.4426950408889634
        return lse2, tl.load(DELTA + stat_off + offs_m, mask=m_valid, other=0.0)

    @triton.jit
    def _block_list(phase: tl.constexpr, NUM_FULL, LIST_FULL, NUM_PART, LIST_PART, num_off, lst_off, L,
                    TILE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_SPARSE: tl.constexpr):
        # (tile count, list) one phase visits: phase 0 the full blocks (every tile when dense), phase 1 the partial
        # ones (element mask read); each listed BLOCK-wide mask block is visited in BLOCK // TILE tiles
        if not BLOCK_SPARSE:
            return tl.cdiv(L, TILE), LIST_FULL
        if phase == 0:
            return tl.load(NUM_FULL + num_off) * (BLOCK // TILE), LIST_FULL + lst_off
        return tl.load(NUM_PART + num_off) * (BLOCK // TILE), LIST_PART + lst_off

    @triton.jit
    def _block_start(lst, j, TILE: tl.constexpr, BLOCK: tl.constexpr, BLOCK_SPARSE: tl.constexpr):
        # first position of the j-th tile of _block_list
        if BLOCK_SPARSE:
            return tl.load(lst + j // (BLOCK // TILE)) * BLOCK + (j % (BLOCK // TILE)) * TILE
        return j * TILE

    @triton.jit
    def _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_kn, s_vn, IDX, idx_off, start, L, start_n, offs_m,
                  m_valid, offs_d, EM, em_off, s_emq, qk_scale, HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr,
                  MODE: tl.constexpr, APPLY_EM: tl.constexpr, PREC: tl.constexpr):
        offs_n, n_valid, _, k, v = _kv_block(K, V, k_off, v_off, s_kn, s_vn, IDX, idx_off, start, L, start_n, offs_d,
                                             HEAD_DIM, BLOCK_N, MODE)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        keep = _keep(offs_m[:, None], m_valid[:, None], offs_n[None, :], n_valid[None, :], EM, em_off, s_emq, APPLY_EM)
        s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with nothing kept yet: avoid inf - inf
        p = tl.exp2(s - m_safe[:, None])
        alpha = tl.exp2(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PREC)
        return acc, l_i, m_new

    @triton.jit
    def _attn_fwd_kernel(Q, K, V, OUT, LSE, IDX, CU, KVN, KVI, FKVN, FKVI, EM, s_q, s_k, s_v, s_o, s_ib, s_meta, s_em,
                         H, SEQ, LSE_LEN, qk_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, MASK_M: tl.constexpr, MASK_N: tl.constexpr, MODE: tl.constexpr,
                         O_COMPACT: tl.constexpr, BLOCK_SPARSE: tl.constexpr, PREC: tl.constexpr):
        pid_m = tl.program_id(0)
        b, h, bh, start, L = _program(CU, SEQ, H, MODE)
        if pid_m * BLOCK_M >= L:
            return
        idx_off = b * s_ib
        offs_d = tl.arange(0, BLOCK_D)
        offs_m, m_valid, qrows, orows = _q_block(IDX, idx_off, start, L, pid_m * BLOCK_M, BLOCK_M, MODE, O_COMPACT)
        q = _load_rows(Q, _head(s_q, b, h), qrows, s_q[2], m_valid, offs_d, HEAD_DIM)
        k_off, v_off = _head(s_k, b, h), _head(s_v, b, h)
        # metadata row of the mask block this tile lies in
        num_off, lst_off, em_off = _meta_offsets(b, h, pid_m // (MASK_M // BLOCK_M), s_meta, s_em)
        m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        PHASES: tl.constexpr = 2 if BLOCK_SPARSE else 1
        for phase in tl.static_range(PHASES):
            n, lst = _block_list(phase, FKVN, FKVI, KVN, KVI, num_off, lst_off, L, BLOCK_N, MASK_N, BLOCK_SPARSE)
            for j in range(n):
                start_n = _block_start(lst, j, BLOCK_N, MASK_N, BLOCK_SPARSE)
                acc, l_i, m_i = _fwd_tile(acc, l_i, m_i, q, K, V, k_off, v_off, s_k[2], s_v[2], IDX, idx_off, start,
                                          L, start_n, offs_m, m_valid, offs_d, EM, em_off, s_em[2], qk_scale,
                                          HEAD_DIM, BLOCK_N, MODE, phase == 1, PREC)
        empty = l_i == 0.0
        out = acc / tl.where(empty, 1.0, l_i)[:, None]
        optrs = OUT + _head(s_o, b, h) + orows[:, None] * s_o[2] + offs_d[None, :]
        tl.store(optrs, out.to(OUT.dtype.element_ty), mask=m_valid[:, None] & (offs_d[None, :] < HEAD_DIM))
        # natural-log LSE; +inf marks a fully masked row so that the backward's P is exactly 0 there
        lse = tl.where(empty, float("inf"), (m_i + tl.log2(tl.where(empty, 1.0, l_i))) * 0.6931471805599453)
        tl.store(LSE + bh.to(tl.int64) * LSE_LEN + offs_m, lse, mask=m_valid)

    @triton.jit
    def _attn_bwd_delta_kernel(OUT, DO, DELTA, IDX, CU, s_o, s_do, s_ib, H, SEQ, LSE_LEN,
                               HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                               MODE: tl.constexpr, O_COMPACT: tl.constexpr):
        # delta_i = sum_d O_id dO_id, the softmax-backward row term
        pid_m = tl.program_id(0)
        b, h, bh, start, L = _program(CU, SEQ, H, MODE)
        if pid_m * BLOCK_M >= L:
            return
        offs_d = tl.arange(0, BLOCK_D)
        offs_m, m_valid, _, rows = _q_block(IDX, b * s_ib, start, L, pid_m * BLOCK_M, BLOCK_M, MODE, O_COMPACT)
        o = _load_rows(OUT, _head(s_o, b, h), rows, s_o[2], m_valid, offs_d, HEAD_DIM).to(tl.float32)
        do = _load_rows(DO, _head(s_do, b, h), rows, s_do[2], m_valid, offs_d, HEAD_DIM).to(tl.float32)
        tl.store(DELTA + bh.to(tl.int64) * LSE_LEN + offs_m, tl.sum(o * do, 1), mask=m_valid)

    @triton.jit
    def _bwd_dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, s_qn, s_dn, stat_off, IDX, idx_off, start,
                       L, start_m, offs_n, n_valid, offs_d, EM, em_off, s_emq, qk_scale,
                       HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, MODE: tl.constexpr, O_COMPACT: tl.constexpr,
                       APPLY_EM: tl.constexpr, PREC: tl.constexpr):
        offs_m, m_valid, qrows, orows = _q_block(IDX, idx_off, start, L, start_m, BLOCK_M, MODE, O_COMPACT)
        q = _load_rows(Q, q_off, qrows, s_qn, m_valid, offs_d, HEAD_DIM)
        do = _load_rows(DO, do_off, orows, s_dn, m_valid, offs_d, HEAD_DIM)
        lse2, delta = _row_stats(LSE, DELTA, stat_off, offs_m, m_valid)
        s_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        keep = _keep(offs_m[None, :], m_valid[None, :], offs_n[:, None], n_valid[:, None], EM, em_off, s_emq, APPLY_EM)
        p_t = tl.where(keep, tl.exp2(s_t - lse2[None, :]), 0.0)
        dv += tl.dot(p_t.to(do.dtype), do, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q, input_precision=PREC)
        return dk, dv

    @triton.jit
    def _bwd_dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_kn, s_vn, IDX, idx_off, start, L, start_n,
                     offs_m, m_valid, offs_d, EM, em_off, s_emq, qk_scale, HEAD_DIM: tl.constexpr,
                     BLOCK_N: tl.constexpr, MODE: tl.constexpr, APPLY_EM: tl.constexpr, PREC: tl.constexpr):
        offs_n, n_valid, _, k, v = _kv_block(K, V, k_off, v_off, s_kn, s_vn, IDX, idx_off, start, L, start_n, offs_d,
                                             HEAD_DIM, BLOCK_N, MODE)
        s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        keep = _keep(offs_m[:, None], m_valid[:, None], offs_n[None, :], n_valid[None, :], EM, em_off, s_emq, APPLY_EM)
        p = tl.where(keep, tl.exp2(s - lse2[:, None]), 0.0)
        dp = tl.dot(do, tl.trans(v), input_precision=PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=PREC)
        return dq

    @triton.jit
    def _attn_bwd_kernel(Q, K, V, DO, G, G2, LSE, DELTA, IDX, CU, NUM, LST, FNUM, FLST, EM,
                         s_q, s_k, s_v, s_do, s_g, s_g2, s_ib, s_meta, s_em, H, SEQ, LSE_LEN, qk_scale, sm_scale,
                         HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, MASK_M: tl.constexpr, MASK_N: tl.constexpr, MODE: tl.constexpr,
                         O_COMPACT: tl.constexpr, BLOCK_SPARSE: tl.constexpr, PREC: tl.constexpr,
                         KV_PASS: tl.constexpr):
        # KV_PASS: one program per KV tile writes dK (G) and dV (G2), summed over the query tiles that attend to it
        # (NUM/LST are the transposed lists); otherwise one program per query tile writes dQ (G) over its KV tiles.
        # Two launches of one kernel, no atomics; the pass is a constexpr, so each compiles to its own code.
        pid = tl.program_id(0)
        b, h, bh, start, L = _program(CU, SEQ, H, MODE)
        TILE: tl.constexpr = BLOCK_N if KV_PASS else BLOCK_M
        if pid * TILE >= L:
            return
        idx_off = b * s_ib
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d[None, :] < HEAD_DIM
        q_off, k_off, v_off, do_off = _head(s_q, b, h), _head(s_k, b, h), _head(s_v, b, h), _head(s_do, b, h)
        stat_off = bh.to(tl.int64) * LSE_LEN
        # metadata row of the mask block this tile lies in
        MASK: tl.constexpr = MASK_N if KV_PASS else MASK_M
        num_off, lst_off, em_off = _meta_offsets(b, h, pid // (MASK // TILE), s_meta, s_em)
        PHASES: tl.constexpr = 2 if BLOCK_SPARSE else 1
        if KV_PASS:
            offs_n, n_valid, krows, k, v = _kv_block(K, V, k_off, v_off, s_k[2], s_v[2], IDX, idx_off, start, L,
                                                     pid * BLOCK_N, offs_d, HEAD_DIM, BLOCK_N, MODE)
            dk = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            dv = tl.zeros((BLOCK_N, BLOCK_D), dtype=tl.float32)
            for phase in tl.static_range(PHASES):
                n, lst = _block_list(phase, FNUM, FLST, NUM, LST, num_off, lst_off, L, BLOCK_M, MASK_M, BLOCK_SPARSE)
                for j in range(n):
                    dk, dv = _bwd_dkdv_tile(dk, dv, k, v, Q, DO, LSE, DELTA, q_off, do_off, s_q[2], s_do[2], stat_off,
                                            IDX, idx_off, start, L, _block_start(lst, j, BLOCK_M, MASK_M, BLOCK_SPARSE),
                                            offs_n, n_valid, offs_d, EM, em_off, s_em[2], qk_scale, HEAD_DIM, BLOCK_M,
                                            MODE, O_COMPACT, phase == 1, PREC)
            st = n_valid[:, None] & d_ok
            tl.store(G + _head(s_g, b, h) + krows[:, None] * s_g[2] + offs_d[None, :],
                     (dk * sm_scale).to(G.dtype.element_ty), mask=st)
            tl.store(G2 + _head(s_g2, b, h) + krows[:, None] * s_g2[2] + offs_d[None, :],
                     dv.to(G2.dtype.element_ty), mask=st)
        else:
            offs_m, m_valid, qrows, orows = _q_block(IDX, idx_off, start, L, pid * BLOCK_M, BLOCK_M, MODE, O_COMPACT)
            q = _load_rows(Q, q_off, qrows, s_q[2], m_valid, offs_d, HEAD_DIM)
            do = _load_rows(DO, do_off, orows, s_do[2], m_valid, offs_d, HEAD_DIM)
            lse2, delta = _row_stats(LSE, DELTA, stat_off, offs_m, m_valid)
            dq = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
            for phase in tl.static_range(PHASES):
                n, lst = _block_list(phase, FNUM, FLST, NUM, LST, num_off, lst_off, L, BLOCK_N, MASK_N, BLOCK_SPARSE)
                for j in range(n):
                    dq = _bwd_dq_tile(dq, q, do, lse2, delta, K, V, k_off, v_off, s_k[2], s_v[2], IDX, idx_off, start,
                                      L, _block_start(lst, j, BLOCK_N, MASK_N, BLOCK_SPARSE), offs_m, m_valid,
                                      offs_d, EM, em_off, s_em[2], qk_scale, HEAD_DIM, BLOCK_N, MODE, phase == 1, PREC)
            tl.store(G + _head(s_g, b, h) + qrows[:, None] * s_g[2] + offs_d[None, :],
                     (dq * sm_scale).to(G.dtype.element_ty), mask=m_valid[:, None] & d_ok)


# --------------------------------------------------------------------------------------------- launchers


def _rows_strides(t: torch.Tensor, varlen: bool) -> tuple[int, int, int]:
    # (batch, head, row) strides; packed varlen tensors (T, H, d) have no batch dim
    return (0, t.stride(1), t.stride(0)) if varlen else (t.stride(0), t.stride(1), t.stride(2))


def _bcast(t: torch.Tensor, dim: int) -> int:
    return t.stride(dim) if t.shape[dim] > 1 else 0


# GPU tiles (TILE_M, TILE_N, num_warps, num_stages) of the forward, dK/dV and dQ kernels, per (architecture, fp32,
# head-dim bucket), as the static proof (bench/gpu_proof.py) chose them at 128-blocks: large tiles that compile
# without register spills (the two-phase block-sparse loop holds the most registers) and fit shared memory.
# sm_80's mma.sync needs more registers per tile than sm_90's wgmma; exact fp32 (no tensor cores) holds whole
# operand rows per thread, so it gets small tiles at 8 warps. Head dims over 128 are outside the proof's shapes:
# small tiles, not proven. A mask block larger than a tile is walked in several tiles (the block lists stay per
# mask block); a smaller one shrinks the tile to the block, at 4 warps at most.
_TILES = {
    (90, False, 64): ((128, 64, 8, 3), (64, 128, 8, 2), (128, 64, 8, 2)),
    (90, False, 128): ((64, 64, 8, 3), (32, 128, 8, 2), (64, 64, 8, 2)),
    (80, False, 64): ((64, 64, 8, 2), (64, 32, 4, 2), (64, 32, 4, 2)),
    (80, False, 128): ((64, 32, 8, 2), (64, 64, 8, 2), (64, 64, 8, 2)),
}
for _arch in (90, 80):
    _TILES[(_arch, False, 256)] = ((32, 32, 4, 2),) * 3
    _TILES[(_arch, True, 64)] = ((32, 32, 4, 2), (32, 32, 8, 1), (64, 32, 8, 2))
    _TILES[(_arch, True, 128)] = ((32, 16, 8, 2), (16, 32, 8, 1), (32, 16, 8, 1))
    _TILES[(_arch, True, 256)] = ((16, 16, 4, 1),) * 3
KERNELS = ("fwd", "dkdv", "dq")
# The interpreter: few, wide tiles when dense; 16-wide tiles under a block mask, so that the CPU tests walk mask
# blocks of 32 in several tiles, as the GPU walks blocks of 128.
_INTERPRETER_TILES = {False: (32, 32, 4, 1), True: (16, 16, 4, 1)}


def tiles(dtype: torch.dtype, block_d: int, mask_block: tuple[int, int] | None, device) -> dict[str, tuple]:
    """kernel ("fwd", "dkdv", "dq") -> (TILE_M, TILE_N, num_warps, num_stages) for these operands on ``device``."""
    if not gpu_configs(device):
        chosen = (_INTERPRETER_TILES[mask_block is not None],) * len(KERNELS)
    else:
        arch = 90 if capability(device) >= 90 else 80
        chosen = _TILES[(arch, dtype == torch.float32, 64 if block_d <= 64 else 128 if block_d <= 128 else 256)]
    out = {}
    for kernel, (tm, tn, warps, stages) in zip(KERNELS, chosen):
        if mask_block is not None and (tm > mask_block[0] or tn > mask_block[1]):
            tm, tn, warps = min(tm, mask_block[0]), min(tn, mask_block[1]), min(warps, 4)
        out[kernel] = (tm, tn, warps, stages)
    return out


class _Plan:
    """Everything the three kernels share: mode, sizes, block sizes, metadata pointers and strides."""

    def __init__(self, q, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale, compact):
        self.varlen = cu_seqlens is not None
        self.mode = 2 if self.varlen else (1 if keep_index is not None else 0)
        if self.varlen:
            self.batch, self.heads, self.seq = cu_seqlens.shape[0] - 1, q.shape[1], 0
            self.lse_len = max_seqlen
        else:
            self.batch, self.heads = q.shape[0], q.shape[1]
            self.seq = keep_index.shape[1] if keep_index is not None else q.shape[2]
            self.lse_len = self.seq
        self.head_dim = q.shape[-1]
        self.block_d = max(16, triton.next_power_of_2(self.head_dim))
        self.o_compact = self.mode == 1 and compact
        self.scale = scale
        self.qk_scale = scale * LOG2E
        self.prec = "ieee" if q.dtype == torch.float32 else "tf32"
        self.idx = keep_index if keep_index is not None else q
        self.s_ib = keep_index.stride(0) if keep_index is not None else 0
        self.cu = cu_seqlens if cu_seqlens is not None else q
        self.sparse = bool(block_mask)
        if self.sparse:
            self.bm = block_mask
            kvn, kvi, em = block_mask[0], block_mask[1], block_mask[8]
            self.meta_strides = (_bcast(kvn, 0), _bcast(kvn, 1), _bcast(kvi, 0), _bcast(kvi, 1), kvi.stride(2))
            qn, qi = block_mask[4], block_mask[5]
            self.meta_strides_t = (_bcast(qn, 0), _bcast(qn, 1), _bcast(qi, 0), _bcast(qi, 1), qi.stride(2))
            em8 = em.view(torch.int8)
            self.em = em8
            self.em_strides = (_bcast(em8, 0), _bcast(em8, 1), em8.stride(2))
            self.mask_m, self.mask_n = block_size
        else:
            # never read; int32 like real lists, since the compiler checks the return types of _block_list's
            # branches against each other even where the branch is not taken
            self.bm = [torch.zeros(1, dtype=torch.int32, device=q.device)] * 8
            self.meta_strides = self.meta_strides_t = (0, 0, 0, 0, 0)
            self.em, self.em_strides = q, (0, 0, 0)
            self.mask_m = self.mask_n = None
        self.tiles = tiles(q.dtype, self.block_d, (self.mask_m, self.mask_n) if self.sparse else None, q.device)

    def strides(self, *tensors) -> list[tuple[int, int, int]]:
        """(batch, head, row) strides of each tensor, one tuple per kernel argument."""
        return [_rows_strides(t, self.varlen) for t in tensors]

    def grid(self, kernel: str, rows: str):
        tile_m, tile_n = self.tiles[kernel][:2]
        return (triton.cdiv(max(self.lse_len, 1), tile_m if rows == "m" else tile_n), self.batch * self.heads)

    def consts(self, kernel: str):
        tile_m, tile_n, warps, stages = self.tiles[kernel]
        # dense: the mask block is the tile itself
        mask_m, mask_n = (self.mask_m, self.mask_n) if self.sparse else (tile_m, tile_n)
        return dict(HEAD_DIM=self.head_dim, BLOCK_D=self.block_d, BLOCK_M=tile_m, BLOCK_N=tile_n, MASK_M=mask_m,
                    MASK_N=mask_n, MODE=self.mode, O_COMPACT=self.o_compact, BLOCK_SPARSE=self.sparse,
                    PREC=self.prec, num_warps=warps, num_stages=stages)


def _unit_last(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention_forward(q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale, compact):
    q, k, v = _unit_last(q), _unit_last(k), _unit_last(v)
    plan = _Plan(q, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale, compact)
    if plan.mode == 1 and compact:
        out = q.new_empty(plan.batch, plan.heads, plan.seq, plan.head_dim)
    elif plan.mode == 0:
        out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    else:  # rows outside the kept set / outside every sequence stay 0
        out = torch.zeros(q.shape, dtype=q.dtype, device=q.device)
    lse = torch.full((plan.batch, plan.heads, plan.lse_len), float("inf"), dtype=torch.float32, device=q.device)
    if out.numel() == 0 or lse.numel() == 0:
        return out, lse
    kvn, kvi, fkvn, fkvi = plan.bm[:4]
    launch(_attn_fwd_kernel, plan.grid("fwd", "m"),
        q, k, v, out, lse, plan.idx, plan.cu, kvn, kvi, fkvn, fkvi, plan.em, *plan.strides(q, k, v, out), plan.s_ib,
        plan.meta_strides, plan.em_strides, plan.heads, plan.seq, plan.lse_len, plan.qk_scale, **plan.consts("fwd"))
    return out, lse


def attention_backward(dout, q, k, v, out, lse, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale,
                       compact):
    q, k, v, out, dout = (_unit_last(t) for t in (q, k, v, out, dout))
    plan = _Plan(q, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale, compact)
    # kept-only (index) and packed (varlen) layouts leave rows no program writes: they must read as 0
    alloc = torch.empty if plan.mode == 0 else torch.zeros
    dq, dk, dv = (alloc(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v))
    if q.numel() == 0 or lse.numel() == 0:
        return dq, dk, dv
    delta = torch.empty_like(lse)
    # the row-term kernel is a reduction over d: any tile works, the dQ kernel's saves a recompile
    launch(_attn_bwd_delta_kernel, plan.grid("dq", "m"),
        out, dout, delta, plan.idx, plan.cu, *plan.strides(out, dout), plan.s_ib, plan.heads, plan.seq,
        plan.lse_len, HEAD_DIM=plan.head_dim, BLOCK_D=plan.block_d, BLOCK_M=plan.tiles["dq"][0], MODE=plan.mode,
        O_COMPACT=plan.o_compact)
    shared = (lse, delta, plan.idx, plan.cu)
    scalars = (plan.heads, plan.seq, plan.lse_len, plan.qk_scale, plan.scale)
    qn, qi, fqn, fqi = plan.bm[4:8]
    launch(_attn_bwd_kernel, plan.grid("dkdv", "n"),
        q, k, v, dout, dk, dv, *shared, qn, qi, fqn, fqi, plan.em, *plan.strides(q, k, v, dout, dk, dv),
        plan.s_ib, plan.meta_strides_t, plan.em_strides, *scalars, KV_PASS=True, **plan.consts("dkdv"))
    kvn, kvi, fkvn, fkvi = plan.bm[:4]
    launch(_attn_bwd_kernel, plan.grid("dq", "m"),
        q, k, v, dout, dq, dq, *shared, kvn, kvi, fkvn, fkvi, plan.em, *plan.strides(q, k, v, dout, dq, dq),
        plan.s_ib, plan.meta_strides, plan.em_strides, *scalars, KV_PASS=False, **plan.consts("dq"))
    return dq, dk, dv
