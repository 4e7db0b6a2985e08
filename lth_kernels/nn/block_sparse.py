"""``BlockSparseLinear``: an ``nn.Linear`` whose weight is kept only at whole (bm, bk) blocks.

Same contract as the masked layers: a dense ``weight`` whose pruned entries are exactly zero, the mask as a
non-persistent ``mask`` buffer (so ``state_dict()`` is the dense layer's), ``set_mask`` and ``mask_version``.
The forward runs :func:`lth_kernels.ops.block_sparse_linear`, whose weight gradient is zero outside the kept
blocks, so pruned weights stay zero under any optimizer.
"""

from __future__ import annotations

import torch
from torch import nn

from lth_kernels.ops.block_sparse import (
    BlockSparseLayout,
    _as_block_map,
    _check_block,
    block_sparse_linear,
    expand_block_map,
)


class BlockSparseLinear(nn.Linear):
    """Linear layer with a block mask at ``block=(bm, bk)`` (each of 16, 32, 64, 128; edge blocks may be partial).

    ``mask``: a (out, in) bool element mask that is a union of whole blocks, or a (ceil(out/bm), ceil(in/bk))
    block map; None keeps every block. ``backend`` is passed to the op (None: the best for the device).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 block: tuple[int, int] = (64, 64), mask: torch.Tensor | None = None, backend: str | None = None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        _check_block(tuple(block))
        self.block = (int(block[0]), int(block[1]))
        self.backend = backend
        self.mask_version = 0
        self._layout: BlockSparseLayout | None = None
        self._layout_key = None
        self._layout_counter = -1
        self.register_buffer("mask", torch.ones(out_features, in_features, dtype=torch.bool, device=device),
                             persistent=False)
        if mask is not None:
            self.set_mask(mask)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: torch.Tensor | None = None, *, block: tuple[int, int] = (64, 64),
                    backend: str | None = None) -> BlockSparseLinear:
        """A BlockSparseLinear sharing ``linear``'s parameters (no copy), masked by ``mask``."""
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, bias=linear.bias is not None, device="meta",
                    dtype=w.dtype, block=block, backend=backend)
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.mask = torch.ones(w.shape, dtype=torch.bool, device=w.device)
        if mask is not None:
            layer.set_mask(mask)
        return layer

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor) -> None:
        """Installs a new block mask, zeroes the weight outside it and bumps ``mask_version``."""
        shape = (self.out_features, self.in_features)
        if isinstance(mask, torch.Tensor):
            mask = mask.to(self.weight.device)
        _, block_map = _as_block_map(mask, shape, self.block)
        element = expand_block_map(block_map, shape, self.block)
        if tuple(mask.shape) == shape and not torch.equal(element, mask):
            raise ValueError(f"mask: not a union of whole {self.block} blocks; use a MaskedLinear for element "
                             f"masks or pass the block map of shape {tuple(block_map.shape)}")
        self.mask = element.contiguous()
        self.weight.mul_(self.mask.to(self.weight.dtype))
        self.mask_version += 1
        self._layout = None

    def layout(self) -> BlockSparseLayout:
        """The block metadata of the current mask, rebuilt only when the mask or its device changed."""
        key = (self.mask_version, self.mask.device)
        stale = self._layout is None or self._layout_key != key
        if not stale and not torch.compiler.is_compiling():
            stale = self._layout_counter != self.mask._version  # in-place edits of the buffer (eager only)
        if stale:
            self._layout = BlockSparseLayout.from_mask(self.mask, self.block)
            self._layout_key, self._layout_counter = key, self.mask._version
        return self._layout

    @property
    def density(self) -> float:
        return float(self.mask.float().mean()) if self.mask.numel() else 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return block_sparse_linear(x, self.weight, self.layout(), self.bias, backend=self.backend)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, block={self.block}, density={self.density:.3f}"
