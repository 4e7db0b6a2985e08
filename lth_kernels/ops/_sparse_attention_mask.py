"""Block masks for :func:`lth_kernels.ops.sparse_attention`, in FlexAttention's ``BlockMask`` layout.

Per (batch, head, query block): a count and a list of the KV blocks to visit, split into *full* blocks
(every element kept: no element mask is read) and *partial* blocks (the element mask is read), plus the
transposed lists (per KV block, the query blocks) for the dK/dV backward. The batch and head dims are 1
when the pattern is shared (the kernels broadcast them). The element mask is stored densely as bool
(Bm, Hm, Lq, Lkv) and read only on partial blocks; patterns given as a ``mask_mod`` are evaluated into it
once, when the mask is built (O(L^2) bytes: fine for ViT lengths, the kernels never touch the full blocks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BlockMask:
    kv_num_blocks: torch.Tensor  # (Bm, Hm, Qb) int32: partial KV blocks per query block
    kv_indices: torch.Tensor  # (Bm, Hm, Qb, KVb) int32, the first kv_num_blocks entries valid
    full_kv_num_blocks: torch.Tensor  # (Bm, Hm, Qb) int32
    full_kv_indices: torch.Tensor  # (Bm, Hm, Qb, KVb) int32
    q_num_blocks: torch.Tensor  # (Bm, Hm, KVb) int32: transposed partial lists (backward)
    q_indices: torch.Tensor  # (Bm, Hm, KVb, Qb) int32
    full_q_num_blocks: torch.Tensor  # (Bm, Hm, KVb) int32
    full_q_indices: torch.Tensor  # (Bm, Hm, KVb, Qb) int32
    mask: torch.Tensor  # (Bm, Hm, Lq, Lkv) bool element mask
    block_size: tuple[int, int]  # (query block, KV block)
    mask_mod: Callable | None = None  # (b, h, q_idx, kv_idx) -> bool, FlexAttention style, if known

    @property
    def seq_len(self) -> tuple[int, int]:
        return self.mask.shape[-2], self.mask.shape[-1]

    def tensors(self) -> list[torch.Tensor]:
        """The metadata in the order the registered op takes it."""
        return [self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks, self.full_kv_indices,
                self.q_num_blocks, self.q_indices, self.full_q_num_blocks, self.full_q_indices, self.mask]

    def to(self, device) -> BlockMask:
        moved = [t.to(device) for t in self.tensors()]
        return BlockMask(*moved, block_size=self.block_size, mask_mod=self.mask_mod)

    def density(self) -> float:
        """Fraction of (query block, KV block) pairs the kernels visit."""
        qb, kvb = self.kv_indices.shape[-2], self.kv_indices.shape[-1]
        visited = (self.kv_num_blocks + self.full_kv_num_blocks).sum().item()
        return visited / max(1, self.kv_num_blocks.numel() // qb * qb * kvb)

    def to_flex(self):
        """The same mask as a ``torch.nn.attention.flex_attention.BlockMask`` (for comparisons)."""
        from torch.nn.attention.flex_attention import BlockMask as FlexBlockMask

        mod = self.mask_mod
        if mod is None:
            dense = self.mask

            def mod(b, h, q_idx, kv_idx):
                bb = b if dense.shape[0] > 1 else 0
                hh = h if dense.shape[1] > 1 else 0
                return dense[bb, hh, q_idx, kv_idx]

        return FlexBlockMask.from_kv_blocks(self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks,
                                            self.full_kv_indices, BLOCK_SIZE=self.block_size, mask_mod=mod,
                                            seq_lengths=self.seq_len)


def _block_pair(block) -> tuple[int, int]:
    pair = (block, block) if isinstance(block, int) else tuple(block)
    if len(pair) != 2 or not all(isinstance(b, int) and b >= 16 and b & (b - 1) == 0 and b <= 128 for b in pair):
        raise ValueError(f"block: expected a power of two in [16, 128] or a pair of them, got {block!r}")
    return pair


def _lists(sel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Selected block indices first, ascending (a stable sort of the "not selected" flags).
    num = sel.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~sel).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num, idx.contiguous()


def block_mask_from_dense(mask: torch.Tensor, block=64, *, mask_mod: Callable | None = None) -> BlockMask:
    """A :class:`BlockMask` from a bool element mask (Lq, Lkv), (Bm, Lq, Lkv) or (Bm, Hm, Lq, Lkv)."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or not 2 <= mask.dim() <= 4:
        got = f"{mask.dtype} shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a bool tensor (Lq, Lkv), (B, Lq, Lkv) or (B, H, Lq, Lkv), got {got}")
    bq, bk = _block_pair(block)
    m4 = {2: lambda m: m[None, None], 3: lambda m: m[:, None], 4: lambda m: m}[mask.dim()](mask)
    lq, lk = m4.shape[-2:]
    qb, kb = -(-lq // bq), -(-lk // bk)
    pad = (0, kb * bk - lk, 0, qb * bq - lq)
    shape = (*m4.shape[:2], qb, bq, kb, bk)
    any_ = torch.nn.functional.pad(m4, pad, value=False).view(shape).any(3).any(-1)
    # Out-of-range entries count as kept for "full": the kernels bound-check the sequence anyway.
    all_ = torch.nn.functional.pad(m4, pad, value=True).view(shape).all(3).all(-1)
    partial = any_ & ~all_
    kv_num, kv_idx = _lists(partial)
    fkv_num, fkv_idx = _lists(all_)
    q_num, q_idx = _lists(partial.transpose(-1, -2))
    fq_num, fq_idx = _lists(all_.transpose(-1, -2))
    return BlockMask(kv_num, kv_idx, fkv_num, fkv_idx, q_num, q_idx, fq_num, fq_idx, m4.contiguous(), (bq, bk),
                     mask_mod)


def block_mask_from_mask_mod(mask_mod: Callable, q_len: int, kv_len: int | None = None, block=64, *,
                             device=None) -> BlockMask:
    """Evaluates a position-only ``mask_mod(b, h, q_idx, kv_idx)`` on a (q_len, kv_len) grid (b = h = 0)."""
    kv_len = q_len if kv_len is None else kv_len
    qi = torch.arange(q_len, device=device)[:, None]
    ki = torch.arange(kv_len, device=device)[None, :]
    zero = torch.zeros((), dtype=torch.long, device=device)
    dense = torch.as_tensor(mask_mod(zero, zero, qi, ki), device=device).expand(q_len, kv_len)
    return block_mask_from_dense(dense.bool(), block, mask_mod=mask_mod)


def _with_prefix(mod: Callable, prefix: int) -> Callable:
    # The first `prefix` tokens (CLS, registers) attend to everything and are attended by everything.
    if prefix == 0:
        return mod
    return lambda b, h, q, kv: (q < prefix) | (kv < prefix) | mod(b, h, q - prefix, kv - prefix)


def _check_pos(name, value, allow_zero=False):
    if not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise ValueError(f"{name}: expected a {'non-negative' if allow_zero else 'positive'} int, got {value!r}")


def _grid(size) -> tuple[int, int]:
    grid = (1, size) if isinstance(size, int) else tuple(size)
    if len(grid) != 2 or not all(isinstance(g, int) and g > 0 for g in grid):
        raise ValueError(f"size: expected a positive int or a (rows, cols) pair, got {size!r}")
    return grid


def local_window_block_mask(size, window: int, *, block=64, prefix: int = 0, device=None) -> BlockMask:
    """Local attention: 1-D ``|i - j| <= window`` for ``size = L``; on a (rows, cols) token grid (row-major
    order) both the row and the column distance must be ``<= window``. ``prefix`` global tokens come first."""
    rows, cols = _grid(size)
    _check_pos("window", window, allow_zero=True)
    _check_pos("prefix", prefix, allow_zero=True)

    def mod(b, h, q, kv):
        return ((q // cols - kv // cols).abs() <= window) & ((q % cols - kv % cols).abs() <= window)

    full = _with_prefix(mod, prefix)
    return block_mask_from_mask_mod(full, rows * cols + prefix, block=block, device=device)


def swin_window_block_mask(grid, window, *, shift: int = 0, block=64, prefix: int = 0, device=None) -> BlockMask:
    """Swin windows on a (rows, cols) token grid: tokens attend iff they share a ``window``-sized window.

    ``shift`` gives the shifted-window layer. Swin rolls the map by -shift and masks attention across the
    wrap-around regions; in the original coordinates that is the non-cyclic partition whose window edges
    sit at ``shift + k * window`` (a first window of ``shift`` rows/cols), which is what this builds.
    """
    rows, cols = _grid(grid)
    wr, wc = (window, window) if isinstance(window, int) else tuple(window)
    _check_pos("window", wr)
    _check_pos("window", wc)
    sr, sc = (shift, shift) if isinstance(shift, int) else tuple(shift)
    if not (0 <= sr < wr and 0 <= sc < wc):
        raise ValueError(f"shift: expected 0 <= shift < window = {window!r}, got {shift!r}")

    def mod(b, h, q, kv):
        same_r = (q // cols + wr - sr) // wr == (kv // cols + wr - sr) // wr
        same_c = (q % cols + wc - sc) // wc == (kv % cols + wc - sc) // wc
        return same_r & same_c

    return block_mask_from_mask_mod(_with_prefix(mod, prefix), rows * cols + prefix, block=block, device=device)


def strided_block_mask(seq_len: int, stride: int, *, local: int | None = None, block=64, prefix: int = 0,
                       device=None) -> BlockMask:
    """Sparse-Transformer "strided" pattern (both directions): attend iff ``|i - j| < local`` (default
    ``stride``) or ``(i - j) % stride == 0``."""
    _check_pos("seq_len", seq_len)
    _check_pos("stride", stride)
    local = stride if local is None else local
    _check_pos("local", local, allow_zero=True)

    def mod(b, h, q, kv):
        d = q - kv
        return (d.abs() < local) | (d % stride == 0)

    return block_mask_from_mask_mod(_with_prefix(mod, prefix), seq_len + prefix, block=block, device=device)
