"""Block-sparse matmul: ``block_sparse_linear`` and the stk-style ``sdd`` / ``dsd`` / ``dds`` family.

Format (``BlockSparseLayout``). A weight W (N, K) is cut into (bm, bk) blocks (the last block row/column may
be partial: the kernels mask the edges). The kept blocks are described by int32 metadata only:

* blocked CSR + COO in row-major block order: ``row_offsets`` (nbr + 1), ``col_idx`` / ``row_idx`` (nnz);
* the transpose, for dX = dY . W: ``col_offsets`` (nbc + 1), ``t_perm`` (nnz; the column-major order as
  indices into the row-major block list) and ``t_row_idx = row_idx[t_perm]``;
* ``row_order`` / ``col_order``: block rows / columns sorted by block count, heaviest first, which the
  kernels use as their program order so the longest walks start first (LPT load balance).

The block *values* stay in the dense weight (zeros outside the kept blocks); the kernels address block
(r, c) at ``W[r*bm:, c*bk:]``. Why not a packed (nnz, bm, bk) copy as stk keeps: masked layers keep a dense
weight so that ``state_dict``, optimizers and checkpoints are those of the dense model; a packed copy would
have to be re-gathered after every optimizer step (one more full pass over W) and the gradient scattered
back. Reading blocks in place costs nothing on the GPU (each block row is bk contiguous elements), and the
transposed operand is only a stride swap, so ``t_perm`` is kept for users of packed data but the kernels need
``t_row_idx`` alone. The metadata is built on the device (nonzero / histogram / cumsum / stable sort, the
one host sync being nnz for the allocation), so a mask that changes during training never loops on the host.

Semantics: every op treats W as ``W * expand(block_map)``: entries inside kept blocks are used as stored,
blocks outside are zero, and the weight gradient is zero outside the kept blocks (so pruned weights stay
zero under any optimizer). Element-level zeros *inside* a kept block are the caller's business; masked
layers route only masks that are exactly block-structured here (see :func:`detect_block_structure`).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from lth_kernels.ops import _registry
from lth_kernels.ops._triton import HAS_TRITON
from lth_kernels.ops.mask_meta import tile_occupancy

BLOCK_SIZES = (16, 32, 64, 128)
_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# --------------------------------------------------------------------------------------------- layout


@dataclass(frozen=True, eq=False)
class BlockSparseLayout:
    """Block-sparse metadata of a (N, K) weight at (bm, bk) blocks; all index tensors int32, on one device."""

    shape: tuple[int, int]
    block: tuple[int, int]
    row_offsets: torch.Tensor
    col_idx: torch.Tensor
    row_idx: torch.Tensor
    col_offsets: torch.Tensor
    t_perm: torch.Tensor
    t_row_idx: torch.Tensor
    row_order: torch.Tensor
    col_order: torch.Tensor

    @property
    def nnz(self) -> int:
        return self.col_idx.numel()

    @property
    def blocks_shape(self) -> tuple[int, int]:
        return self.row_offsets.numel() - 1, self.col_offsets.numel() - 1

    @property
    def device(self) -> torch.device:
        return self.col_idx.device

    @property
    def density(self) -> float:
        """Fraction of blocks kept (edge blocks count as whole blocks)."""
        nbr, nbc = self.blocks_shape
        return self.nnz / max(1, nbr * nbc)

    def meta(self) -> tuple[torch.Tensor, ...]:
        """The tensors the ops take, in their argument order."""
        return (self.row_offsets, self.col_idx, self.row_idx, self.col_offsets, self.t_row_idx, self.row_order,
                self.col_order)

    def block_map(self) -> torch.Tensor:
        return _block_map_from_meta(self.row_idx, self.col_idx, *self.blocks_shape)

    def element_mask(self) -> torch.Tensor:
        """The (N, K) bool mask of the kept blocks."""
        return expand_block_map(self.block_map(), self.shape, self.block)

    @classmethod
    def from_block_map(cls, block_map: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]):
        """Builds the metadata on ``block_map``'s device from a (ceil(N/bm), ceil(K/bk)) bool map."""
        nbr, nbc = block_map.shape
        i32 = dict(dtype=torch.int32, device=block_map.device)
        rc = block_map.nonzero()  # row-major, i.e. already sorted by (row, col)
        row_idx, col_idx = rc[:, 0].to(torch.int32), rc[:, 1].to(torch.int32)
        row_counts, col_counts = block_map.sum(1), block_map.sum(0)
        row_offsets = torch.zeros(nbr + 1, **i32)
        col_offsets = torch.zeros(nbc + 1, **i32)
        torch.cumsum(row_counts, 0, out=row_offsets[1:])
        torch.cumsum(col_counts, 0, out=col_offsets[1:])
        # a stable sort by column keeps rows ascending inside each column: the CSC order
        t_perm = torch.sort(col_idx, stable=True).indices.to(torch.int32)
        row_order = torch.sort(row_counts, descending=True, stable=True).indices.to(torch.int32)
        col_order = torch.sort(col_counts, descending=True, stable=True).indices.to(torch.int32)
        return cls((int(shape[0]), int(shape[1])), (int(block[0]), int(block[1])), row_offsets, col_idx, row_idx,
                   col_offsets, t_perm, row_idx[t_perm.long()], row_order, col_order)

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block: tuple[int, int]):
        """From a (N, K) element mask (a block is kept when it holds any kept entry) or a block map."""
        _check_block(block)
        shape, block_map = _as_block_map(mask, None, block)
        return cls.from_block_map(block_map, shape, block)


def _block_map_from_meta(row_idx, col_idx, nbr: int, nbc: int) -> torch.Tensor:
    block_map = torch.zeros(nbr, nbc, dtype=torch.bool, device=row_idx.device)
    block_map[row_idx.long(), col_idx.long()] = True
    return block_map


def expand_block_map(block_map: torch.Tensor, shape: tuple[int, int], block: tuple[int, int]) -> torch.Tensor:
    """(nbr, nbc) block map -> (N, K) element mask, edge blocks cropped."""
    bm, bk = block
    return block_map.repeat_interleave(bm, 0).repeat_interleave(bk, 1)[: shape[0], : shape[1]]


def _blocks_shape(shape, block) -> tuple[int, int]:
    return -(-shape[0] // block[0]), -(-shape[1] // block[1])


def _as_block_map(mask: torch.Tensor, shape, block) -> tuple[tuple[int, int], torch.Tensor]:
    """(weight shape, block map) from an element mask of ``shape`` or a block map; ``shape=None`` means the mask's."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        got = f"{mask.dtype} shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"block_mask_or_layout: expected a 2-D bool mask or a BlockSparseLayout, got {got}")
    if shape is None or tuple(mask.shape) == tuple(shape):
        return tuple(mask.shape), tile_occupancy(mask, tuple(block))
    if tuple(mask.shape) == _blocks_shape(shape, block):
        return tuple(shape), mask
    raise ValueError(f"block_mask_or_layout: shape {tuple(mask.shape)} is neither the weight's {tuple(shape)} nor "
                     f"its block grid {_blocks_shape(shape, block)} at block {tuple(block)}")


# A small cache so that repeated calls with the same mask object reuse the metadata. A hit needs the very
# same mask tensor (weak reference: a freed mask whose address is reused cannot hit), the same in-place
# version counter (``mask._version``: edits in place invalidate) and the same caller-supplied version.
_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 64


def block_layout(mask: torch.Tensor, block: tuple[int, int], *, shape: tuple[int, int] | None = None,
                 version: int = 0) -> BlockSparseLayout:
    """Cached layout of an element mask (N, K) or, with ``shape=(N, K)``, of a block map.

    Keyed by (mask identity, ``mask._version``, caller ``version``, shapes, block, device); at most 64 entries.
    """
    _check_block(block)
    block = (int(block[0]), int(block[1]))
    if not isinstance(mask, torch.Tensor):
        _as_block_map(mask, shape, block)  # raises the argument error
    key = (mask.data_ptr(), tuple(mask.shape), shape, block, str(mask.device), int(version))
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is mask and hit[1] == mask._version:
        _CACHE.move_to_end(key)
        return hit[2]
    full_shape, block_map = _as_block_map(mask, shape, block)
    layout = BlockSparseLayout.from_block_map(block_map, full_shape, block)
    _CACHE[key] = (weakref.ref(mask), mask._version, layout)
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return layout


def detect_block_structure(mask: torch.Tensor, candidates=((128, 128), (64, 64), (32, 32), (16, 16))):
    """The first (bm, bk) in ``candidates`` at which ``mask`` (N, K) is exactly a union of whole blocks
    (edge blocks cropped), or None. Empty and full masks match the first candidate."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
        return None
    for block in candidates:
        block = (int(block[0]), int(block[1]))
        if torch.equal(expand_block_map(tile_occupancy(mask, block), mask.shape, block), mask):
            return block
    return None


# --------------------------------------------------------------------------------------------- reference


def _masked_weight(w, row_offsets, col_idx, row_idx, col_offsets, bm, bk):
    block_map = _block_map_from_meta(row_idx, col_idx, row_offsets.numel() - 1, col_offsets.numel() - 1)
    return w * expand_block_map(block_map, w.shape, (bm, bk)).to(w.dtype)


def _mm(a, b):
    # CPU half matmul is slow and not fp32-accumulated everywhere: compute in fp32 like the kernels do.
    if a.device.type == "cpu" and a.dtype in (torch.float16, torch.bfloat16):
        return (a.float() @ b.float()).to(a.dtype)
    return a @ b


@_registry.register("block_sparse_dds", "reference")
def dds_reference(a, w, bias, meta, bm, bk, transpose_w):
    row_offsets, col_idx, row_idx, col_offsets = meta[:4]
    w_eff = _masked_weight(w, row_offsets, col_idx, row_idx, col_offsets, bm, bk)
    out = _mm(a, w_eff.t() if transpose_w else w_eff)
    return out + bias if bias is not None else out


@_registry.register("block_sparse_sdd", "reference")
def sdd_reference(a, b, meta, bm, bk):
    row_offsets, col_idx, row_idx, col_offsets = meta[:4]
    return _masked_weight(_mm(a, b), row_offsets, col_idx, row_idx, col_offsets, bm, bk)


# --------------------------------------------------------------------------------------------- triton

if HAS_TRITON:
    from lth_kernels.ops import _block_sparse_triton as _bst

    @_registry.register("block_sparse_dds", "triton")
    def dds_triton(a, w, bias, meta, bm, bk, transpose_w):
        row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order = meta
        if transpose_w:  # S = W^T: S's block columns are W's block rows (CSR walk); blocks are (bk x bm) in S
            return _bst.dds(a, w.t(), bias, row_offsets, col_idx, row_order, bp=bm, bq=bk)
        # S = W: walk W's block columns through the transposed (CSC) metadata
        return _bst.dds(a, w, bias, col_offsets, t_row_idx, col_order, bp=bk, bq=bm)

    @_registry.register("block_sparse_sdd", "triton")
    def sdd_triton(a, b, meta, bm, bk):
        return _bst.sdd(a, b, meta[2], meta[1], bm, bk)


for _backend in ("reference", "triton") if HAS_TRITON else ("reference",):
    _registry.register("block_sparse_linear", _backend)(_registry.implementation("block_sparse_dds", _backend))

# --------------------------------------------------------------------------------------------- ops


@torch.library.custom_op("lth_kernels::block_sparse_dds", mutates_args=())
def _dds_op(a: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, row_offsets: torch.Tensor,
            col_idx: torch.Tensor, row_idx: torch.Tensor, col_offsets: torch.Tensor, t_row_idx: torch.Tensor,
            row_order: torch.Tensor, col_order: torch.Tensor, bm: int, bk: int, transpose_w: bool,
            backend: str) -> torch.Tensor:
    meta = (row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order)
    return _registry.implementation("block_sparse_dds", backend)(a, w, bias, meta, bm, bk, transpose_w)


@_dds_op.register_fake
def _(a, w, bias, row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order, bm, bk, transpose_w,
      backend):
    return a.new_empty(a.shape[0], w.shape[0] if transpose_w else w.shape[1])


@torch.library.custom_op("lth_kernels::block_sparse_sdd", mutates_args=())
def _sdd_op(a: torch.Tensor, b: torch.Tensor, row_offsets: torch.Tensor, col_idx: torch.Tensor,
            row_idx: torch.Tensor, col_offsets: torch.Tensor, t_row_idx: torch.Tensor, row_order: torch.Tensor,
            col_order: torch.Tensor, bm: int, bk: int, backend: str) -> torch.Tensor:
    meta = (row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order)
    return _registry.implementation("block_sparse_sdd", backend)(a, b, meta, bm, bk)


@_sdd_op.register_fake
def _(a, b, row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order, bm, bk, backend):
    return a.new_empty(a.shape[0], b.shape[1])


@torch.library.custom_op("lth_kernels::block_sparse_linear", mutates_args=())
def _linear_op(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, row_offsets: torch.Tensor,
               col_idx: torch.Tensor, row_idx: torch.Tensor, col_offsets: torch.Tensor, t_row_idx: torch.Tensor,
               row_order: torch.Tensor, col_order: torch.Tensor, bm: int, bk: int, backend: str) -> torch.Tensor:
    meta = (row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order)
    x2d = x.reshape(-1, x.shape[-1])
    out = _registry.implementation("block_sparse_linear", backend)(x2d, weight, bias, meta, bm, bk, True)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@_linear_op.register_fake
def _(x, weight, bias, row_offsets, col_idx, row_idx, col_offsets, t_row_idx, row_order, col_order, bm, bk, backend):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


# --------------------------------------------------------------------------------------------- autograd
# Every backward is made of the two registered ops, at the same backend as the forward:
#   Y = A . W^T (dds, CSR walk)   ->  dA = dY . W (dds, CSC walk),  dW = dY^T . A (sdd at W's pattern)
#   Y = A . W   (dds, CSC walk)   ->  dA = dY . W^T (dds, CSR walk), dW = A^T . dY (sdd)
#   Y = (A . B) at the pattern (sdd; the pattern makes dY sparse) -> dA = (B . dY^T)^T, dB = A^T . dY (dds)


def _setup(meta_at: int, scalars: tuple[str, ...]):
    """setup_context saving the two operands, the 7 pattern tensors at ``inputs[meta_at:]`` and the scalars after
    them (the three ops differ only in where the pattern starts and which scalars follow)."""
    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1], *inputs[meta_at:meta_at + 7])
        for name, value in zip(scalars, inputs[meta_at + 7:], strict=True):
            setattr(ctx, name, value)
    return setup


def _saved(ctx):
    """(operand 0, operand 1, pattern tensors, (bm, bk, backend)) as the setup stored them."""
    first, second, *meta = ctx.saved_tensors
    return first, second, meta, (ctx.bm, ctx.bk, ctx.backend)


def _dds_backward(ctx, grad):
    a, w, meta, (bm, bk, backend) = _saved(ctx)
    da = dw = db = None
    if ctx.needs_input_grad[0]:
        da = _dds_op(grad, w, None, *meta, bm, bk, not ctx.transpose_w, backend)
    if ctx.needs_input_grad[1]:
        dw = (_sdd_op(grad.t(), a, *meta, bm, bk, backend) if ctx.transpose_w
              else _sdd_op(a.t(), grad, *meta, bm, bk, backend))
    if ctx.needs_input_grad[2]:
        db = grad.sum(0)
    return da, dw, db, *([None] * 11)


def _sdd_backward(ctx, grad):
    a, b, meta, (bm, bk, backend) = _saved(ctx)
    da = db = None
    if ctx.needs_input_grad[0]:
        da = _dds_op(b, grad, None, *meta, bm, bk, True, backend).t()
    if ctx.needs_input_grad[1]:
        db = _dds_op(a.t(), grad, None, *meta, bm, bk, False, backend)
    return da, db, *([None] * 10)


def _linear_backward(ctx, grad):
    x, w, meta, (bm, bk, backend) = _saved(ctx)
    g2d = grad.reshape(-1, grad.shape[-1])
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _dds_op(g2d, w, None, *meta, bm, bk, False, backend).reshape(x.shape)
    if ctx.needs_input_grad[1]:
        dw = _sdd_op(g2d.t(), x.reshape(-1, x.shape[-1]), *meta, bm, bk, backend)
    if ctx.needs_input_grad[2]:
        db = g2d.sum(0)
    return dx, dw, db, *([None] * 10)


torch.library.register_autograd("lth_kernels::block_sparse_dds", _dds_backward,
                                setup_context=_setup(3, ("bm", "bk", "transpose_w", "backend")))
torch.library.register_autograd("lth_kernels::block_sparse_sdd", _sdd_backward,
                                setup_context=_setup(2, ("bm", "bk", "backend")))
torch.library.register_autograd("lth_kernels::block_sparse_linear", _linear_backward,
                                setup_context=_setup(3, ("bm", "bk", "backend")))

# --------------------------------------------------------------------------------------------- public


def _check_block(block) -> None:
    if (not isinstance(block, tuple | list) or len(block) != 2
            or not all(isinstance(b, int) and b in BLOCK_SIZES for b in block)):
        raise ValueError(f"block: expected (bm, bk) with each in {BLOCK_SIZES}, got {block!r}")


def _check_float(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float16/bfloat16/float32/float64 tensor, got {t.dtype}")


def _resolve_layout(block_mask_or_layout, weight: torch.Tensor, block) -> BlockSparseLayout:
    if isinstance(block_mask_or_layout, BlockSparseLayout):
        layout = block_mask_or_layout
        if layout.shape != tuple(weight.shape):
            raise ValueError(f"block_mask_or_layout: layout is for shape {layout.shape}, weight is "
                             f"{tuple(weight.shape)}")
        if block is not None and tuple(block) != layout.block:
            raise ValueError(f"block: {tuple(block)} differs from the layout's {layout.block}")
        if layout.device != weight.device:
            raise ValueError(f"block_mask_or_layout: layout is on {layout.device}, weight on {weight.device}")
        return layout
    if block is None:
        raise ValueError("block: required (bm, bk) when block_mask_or_layout is a mask, got None")
    mask = block_mask_or_layout
    if isinstance(mask, torch.Tensor) and mask.device != weight.device:
        raise ValueError(f"block_mask_or_layout: mask is on {mask.device}, weight on {weight.device}")
    return block_layout(mask, block, shape=tuple(weight.shape))


def _autocast(*tensors):
    device_type = tensors[0].device.type
    if not torch.is_autocast_enabled(device_type):
        return tensors
    dtype = torch.get_autocast_dtype(device_type)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() else t for t in tensors)


def _backend(op: str, device, backend, dtype) -> str:
    name = _registry.resolve(op, device, backend)
    if name == "triton" and dtype == torch.float64:
        raise TypeError("x: float64 runs on the reference backend only (Triton has no fp64 tensor-core dot)")
    return name


def block_sparse_linear(x: torch.Tensor, weight: torch.Tensor, block_mask_or_layout, bias: torch.Tensor | None = None,
                        *, block: tuple[int, int] | None = None, backend: str | None = None) -> torch.Tensor:
    """Y = x . (W * B)^T + bias with B the block pattern: x (..., K), weight (N, K) -> (..., N).

    ``block_mask_or_layout``: a :class:`BlockSparseLayout`, a (N, K) bool element mask (a block is kept when it
    holds any kept entry) or a (ceil(N/bm), ceil(K/bk)) bool block map; masks need ``block=(bm, bk)`` with
    bm, bk in (16, 32, 64, 128). Differentiable in x, weight and bias; the weight gradient is zero outside the
    kept blocks. Under ``torch.compile`` pass a layout built beforehand (building one syncs on nnz).
    """
    _check_float(x, "x")
    _check_float(weight, "weight")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected 2 dims (N, K), got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x: expected (..., {weight.shape[1]}) to match weight (N, K), got {tuple(x.shape)}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {got}")
    x, weight, bias = _autocast(x, weight, bias)
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"weight: dtype {weight.dtype} (bias {getattr(bias, 'dtype', None)}) must match x's {x.dtype}")
    if x.device != weight.device:
        raise ValueError(f"x: on {x.device}, weight on {weight.device}")
    layout = _resolve_layout(block_mask_or_layout, weight, block)
    name = _backend("block_sparse_linear", x.device, backend, x.dtype)
    return _linear_op(x, weight, bias, *layout.meta(), *layout.block, name)


def _check_pair(a, w, layout):
    _check_float(a, "a")
    _check_float(w, "w")
    if not isinstance(layout, BlockSparseLayout):
        raise TypeError(f"layout: expected a BlockSparseLayout, got {type(layout).__name__}")
    if a.dim() != 2 or w.dim() != 2:
        raise ValueError(f"a, w: expected 2-D tensors, got {tuple(a.shape)} and {tuple(w.shape)}")
    if a.dtype != w.dtype or a.device != w.device:
        raise TypeError(f"w: dtype/device {w.dtype}/{w.device} must match a's {a.dtype}/{a.device}")
    if layout.device != a.device:
        raise ValueError(f"layout: on {layout.device}, tensors on {a.device}")


def dds(a: torch.Tensor, w: torch.Tensor, layout: BlockSparseLayout, *, transpose_w: bool = False,
        backend: str | None = None) -> torch.Tensor:
    """Dense = dense . sparse: ``a @ w`` (or ``a @ w.T``), w (N, K) read only at ``layout``'s blocks."""
    _check_pair(a, w, layout)
    if tuple(w.shape) != layout.shape:
        raise ValueError(f"w: shape {tuple(w.shape)} differs from the layout's {layout.shape}")
    inner = w.shape[1] if transpose_w else w.shape[0]
    if a.shape[1] != inner:
        raise ValueError(f"a: expected (M, {inner}) for w {tuple(w.shape)} (transpose_w={transpose_w}), "
                         f"got {tuple(a.shape)}")
    name = _backend("block_sparse_dds", a.device, backend, a.dtype)
    return _dds_op(a, w, None, *layout.meta(), *layout.block, bool(transpose_w), name)


def dsd(w: torch.Tensor, layout: BlockSparseLayout, b: torch.Tensor, *, transpose_w: bool = False,
        backend: str | None = None) -> torch.Tensor:
    """Dense = sparse . dense: ``w @ b`` (or ``w.T @ b``), computed as ``(b.T @ w.T).T`` by :func:`dds`."""
    return dds(b.t(), w, layout, transpose_w=not transpose_w, backend=backend).t()


def sdd(a: torch.Tensor, b: torch.Tensor, layout: BlockSparseLayout, *, backend: str | None = None) -> torch.Tensor:
    """Sparse = dense . dense: ``a @ b`` (N, K) computed only at ``layout``'s blocks, exact zeros elsewhere."""
    _check_pair(a, b, layout)
    if (a.shape[0], b.shape[1]) != layout.shape or a.shape[1] != b.shape[0]:
        raise ValueError(f"a, b: {tuple(a.shape)} @ {tuple(b.shape)} does not give the layout's {layout.shape}")
    name = _backend("block_sparse_sdd", a.device, backend, a.dtype)
    return _sdd_op(a, b, *layout.meta(), *layout.block, name)
