"""Mask metadata: bit-packed masks and tile occupancy maps, the inputs of the masked/sparse kernels.

Layout: ``pack_mask(mask)`` packs the last dim into int32 words, bit ``j`` of word ``w`` holding column
``32*w + j`` (padding bits 0), so a (N, K) weight mask costs N*ceil(K/32)*4 bytes (1 bit per weight).
``tile_occupancy(mask, (bm, bn))`` is a bool map of the (bm x bn) tiles holding any kept weight: the
kernels skip the others.
"""

from __future__ import annotations

import math

import torch

from lth_kernels.ops import _registry
from lth_kernels.ops._triton import HAS_TRITON, launch, tl, triton

# --------------------------------------------------------------------------------------------- reference


def _to_int32_words(v: torch.Tensor) -> torch.Tensor:
    # int64 in [0, 2^32) -> the int32 with the same bit pattern
    return torch.where(v >= 2**31, v - 2**32, v).to(torch.int32)


@_registry.register("pack_mask", "reference")
def pack_mask_reference(mask: torch.Tensor) -> torch.Tensor:
    cols = mask.shape[-1]
    words = (cols + 31) // 32
    flat = mask.reshape(math.prod(mask.shape[:-1]), cols).to(torch.int64)
    flat = torch.nn.functional.pad(flat, (0, words * 32 - cols))
    weights = torch.ones(32, dtype=torch.int64, device=mask.device) << torch.arange(32, device=mask.device)
    packed = (flat.view(flat.shape[0], words, 32) * weights).sum(-1)
    return _to_int32_words(packed).reshape(*mask.shape[:-1], words)


@_registry.register("unpack_mask", "reference")
def unpack_mask_reference(packed: torch.Tensor, cols: int) -> torch.Tensor:
    words = packed.shape[-1]
    shifts = torch.arange(32, device=packed.device)
    bits = ((packed.to(torch.int64) & 0xFFFFFFFF).unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], words * 32)[..., :cols].bool()


@_registry.register("tile_occupancy", "reference")
def tile_occupancy_reference(mask: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    rows, cols = mask.shape
    tr, tc = -(-rows // bm), -(-cols // bn)
    padded = torch.nn.functional.pad(mask, (0, tc * bn - cols, 0, tr * bm - rows))
    return padded.view(tr, bm, tc, bn).any(dim=3).any(dim=1)


# --------------------------------------------------------------------------------------------- compiled


def _compiled(name: str):
    def call(*args):
        return getattr(torch.ops.lth_kernels_C, name)(*args)

    return call


for _op in ("pack_mask", "unpack_mask", "tile_occupancy"):
    _registry.register(_op, "cpu", needs=_op)(_compiled(_op))
    _registry.register(_op, "cuda", needs=_op)(_compiled(_op))

# --------------------------------------------------------------------------------------------- triton

if HAS_TRITON:

    @triton.jit
    def _pack_mask_kernel(mask_ptr, out_ptr, n_rows, n_cols, n_words, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
        # Each program packs a (BLOCK_R rows x BLOCK_W words) patch; bit j of every word in one pass.
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        words = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        acc = tl.zeros((BLOCK_R, BLOCK_W), dtype=tl.int32)
        for j in tl.static_range(32):
            cols = words * 32 + j
            bit = tl.load(mask_ptr + rows * n_cols + cols, mask=(rows < n_rows) & (cols < n_cols), other=0)
            acc |= (bit != 0).to(tl.int32) << j
        tl.store(out_ptr + rows * n_words + words, acc, mask=(rows < n_rows) & (words < n_words))

    @triton.jit
    def _unpack_mask_kernel(packed_ptr, out_ptr, n_rows, n_cols, n_words, BLOCK_R: tl.constexpr,
                            BLOCK_C: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)[:, None]
        cols = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)[None, :]
        inside = (rows < n_rows) & (cols < n_cols)
        word = tl.load(packed_ptr + rows * n_words + cols // 32, mask=inside, other=0)
        bit = (word >> (cols % 32)) & 1
        tl.store(out_ptr + rows * n_cols + cols, bit.to(tl.int8), mask=inside)

    @triton.jit
    def _tile_occupancy_kernel(mask_ptr, out_ptr, n_rows, n_cols, n_tile_cols, bm, bn, BN: tl.constexpr,
                               SUB: tl.constexpr):
        # One program per (bm x bn) tile, scanned in (SUB x BN) strips (BN = next pow2 of bn) so any tile shape
        # works and big tiles stay in registers.
        ti = tl.program_id(0)
        tj = tl.program_id(1)
        offs_c = tl.arange(0, BN)[None, :]
        cols = tj * bn + offs_c
        any_kept = tl.zeros((SUB, BN), dtype=tl.int32)
        for r0 in range(0, bm, SUB):
            offs_r = r0 + tl.arange(0, SUB)[:, None]
            rows = ti * bm + offs_r
            inside = (offs_r < bm) & (offs_c < bn) & (rows < n_rows) & (cols < n_cols)
            m = tl.load(mask_ptr + rows * n_cols + cols, mask=inside, other=0)
            any_kept = tl.maximum(any_kept, (m != 0).to(tl.int32))
        tl.store(out_ptr + ti * n_tile_cols + tj, (tl.max(tl.max(any_kept, axis=1), axis=0) > 0).to(tl.int8))

    def _as_bytes(mask: torch.Tensor) -> torch.Tensor:
        return mask.contiguous().view(torch.uint8)

    @_registry.register("pack_mask", "triton")
    def pack_mask_triton(mask: torch.Tensor) -> torch.Tensor:
        cols = mask.shape[-1]
        words = (cols + 31) // 32
        src = _as_bytes(mask).reshape(math.prod(mask.shape[:-1]), cols)
        out = torch.empty(src.shape[0], words, dtype=torch.int32, device=mask.device)
        if out.numel():
            grid = (triton.cdiv(src.shape[0], 16), triton.cdiv(words, 16))
            launch(_pack_mask_kernel, grid, src, out, src.shape[0], cols, words, BLOCK_R=16, BLOCK_W=16)
        return out.reshape(*mask.shape[:-1], words)

    @_registry.register("unpack_mask", "triton")
    def unpack_mask_triton(packed: torch.Tensor, cols: int) -> torch.Tensor:
        src = packed.contiguous().reshape(math.prod(packed.shape[:-1]), packed.shape[-1])
        out = torch.empty(src.shape[0], cols, dtype=torch.bool, device=packed.device)
        if out.numel():
            grid = (triton.cdiv(src.shape[0], 16), triton.cdiv(cols, 64))
            launch(_unpack_mask_kernel, grid, src, out.view(torch.int8), src.shape[0], cols, src.shape[1], BLOCK_R=16,
                                      BLOCK_C=64)
        return out.reshape(*packed.shape[:-1], cols)

    @_registry.register("tile_occupancy", "triton")
    def tile_occupancy_triton(mask: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
        rows, cols = mask.shape
        tr, tc = triton.cdiv(rows, bm), triton.cdiv(cols, bn)
        out = torch.empty(tr, tc, dtype=torch.bool, device=mask.device)
        if out.numel():
            BN = triton.next_power_of_2(bn)
            SUB = max(1, min(triton.next_power_of_2(bm), 4096 // BN))
            launch(_tile_occupancy_kernel, (tr, tc), _as_bytes(mask), out.view(torch.int8), rows, cols, tc, bm, bn,
                   BN=BN, SUB=SUB)
        return out


# --------------------------------------------------------------------------------------------- ops


@torch.library.custom_op("lth_kernels::pack_mask", mutates_args=())
def _pack_mask_op(mask: torch.Tensor, backend: str) -> torch.Tensor:
    return _registry.implementation("pack_mask", backend)(mask)


@_pack_mask_op.register_fake
def _(mask, backend):
    return mask.new_empty((*mask.shape[:-1], (mask.shape[-1] + 31) // 32), dtype=torch.int32)


@torch.library.custom_op("lth_kernels::unpack_mask", mutates_args=())
def _unpack_mask_op(packed: torch.Tensor, cols: int, backend: str) -> torch.Tensor:
    return _registry.implementation("unpack_mask", backend)(packed, cols)


@_unpack_mask_op.register_fake
def _(packed, cols, backend):
    return packed.new_empty((*packed.shape[:-1], cols), dtype=torch.bool)


@torch.library.custom_op("lth_kernels::tile_occupancy", mutates_args=())
def _tile_occupancy_op(mask: torch.Tensor, bm: int, bn: int, backend: str) -> torch.Tensor:
    return _registry.implementation("tile_occupancy", backend)(mask, bm, bn)


@_tile_occupancy_op.register_fake
def _(mask, bm, bn, backend):
    return mask.new_empty((-(-mask.shape[0] // bm), -(-mask.shape[1] // bn)), dtype=torch.bool)


# --------------------------------------------------------------------------------------------- public


def _check_mask(mask, name: str = "mask", dims: int | None = None) -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(f"{name}: expected dtype torch.bool, got {mask.dtype}")
    if dims is not None and mask.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims, got shape {tuple(mask.shape)}")
    if mask.dim() == 0:
        raise ValueError(f"{name}: expected at least 1 dim, got a 0-dim tensor")


def pack_mask(mask: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
    """Packs a bool mask (..., C) into int32 words (..., ceil(C/32)); bit j of word w is column 32w+j."""
    _check_mask(mask)
    return _pack_mask_op(mask, _registry.resolve("pack_mask", mask.device, backend))


def unpack_mask(packed: torch.Tensor, cols: int, *, backend: str | None = None) -> torch.Tensor:
    """Inverse of :func:`pack_mask`: (..., W) int32 words -> (..., cols) bool, with ceil(cols/32) == W."""
    if not isinstance(packed, torch.Tensor) or packed.dtype != torch.int32 or packed.dim() == 0:
        got = f"{packed.dtype} shape {tuple(packed.shape)}" if isinstance(packed, torch.Tensor) else type(packed)
        raise TypeError(f"packed: expected an int32 tensor with at least 1 dim, got {got}")
    if not isinstance(cols, int) or cols < 0 or (cols + 31) // 32 != packed.shape[-1]:
        raise ValueError(f"cols: needs ceil(cols/32) == packed.shape[-1] = {packed.shape[-1]}, got {cols!r}")
    return _unpack_mask_op(packed, cols, _registry.resolve("unpack_mask", packed.device, backend))


def tile_occupancy(mask: torch.Tensor, block: tuple[int, int] = (64, 64), *, backend: str | None = None):
    """Bool map (ceil(R/bm), ceil(C/bn)) of the tiles of a 2-D mask that hold any kept entry."""
    _check_mask(mask, dims=2)
    if (
        not isinstance(block, tuple | list)
        or len(block) != 2
        or not all(isinstance(b, int) and b > 0 for b in block)
    ):
        raise ValueError(f"block: expected two positive ints (bm, bn), got {block!r}")
    bm, bn = block
    return _tile_occupancy_op(mask, bm, bn, _registry.resolve("tile_occupancy", mask.device, backend))
