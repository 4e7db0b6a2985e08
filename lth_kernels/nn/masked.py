"""Drop-in masked layers: ``MaskedLinear`` and ``MaskedConv2d``.

Each keeps the dense ``weight`` (and ``bias``) of the layer it replaces, with every pruned entry exactly 0, and its
bool ``mask`` as a non-persistent buffer. So ``state_dict()`` has the dense layer's keys and values and loads into a
plain ``nn.Linear`` / ``nn.Conv2d``; the masks travel separately (a ticket). The forward runs the masked ops of
:mod:`lth_kernels.ops.masked_matmul`, whose weight gradient is masked: pruned weights stay exactly 0 under SGD
(momentum, weight decay), Adam(W), AMP and gradient clipping without re-masking after each step.

The zero invariant is kept by ``set_mask`` (zeroes the newly pruned weights), ``load_state_dict`` and
``reset_parameters`` (re-zero under the current mask) and the masked gradient. The forward relies on it
(``weight_is_masked=True``), so code that writes into ``weight`` directly must call ``set_mask(layer.mask)`` after.
To load weights that belong to a *different* mask (e.g. revived weights), call ``set_mask(new)`` first, then
``load_state_dict``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.ops import cpu_sparse, semi_structured
from lth_kernels.ops.block_sparse import block_layout, block_sparse_linear, detect_block_structure
from lth_kernels.ops.masked_matmul import masked_conv2d, masked_linear
from lth_kernels.ops.semi_structured import semi_structured_linear

# Devices on which a block-structured mask is routed to the block-sparse kernels. Only CUDA: on CPU the
# block-sparse reference is a masked dense GEMM, so the detour buys nothing there.
BLOCK_SPARSE_DEVICES: tuple[str, ...] = ("cuda",)
# Above this density a block-sparse GEMM cannot beat the masked dense-tile kernel by enough to pay for the
# row walk (design A2's target is 0.85 x min(1/d, cap)); to be replaced by a measured GPU dispatch table.
BLOCK_SPARSE_MAX_DENSITY = 0.5
# Devices on which a 2:4 mask may run on the sparse tensor cores (cuSPARSELt), in calls that need no gradient: the
# one-time timing that decides it is a forward timing, and a training step would also re-compress W after every
# optimizer step and run dX dense; training keeps the library path on the weight as stored.
SEMI_STRUCTURED_DEVICES: tuple[str, ...] = ("cuda",)


class _Masked:
    """Mask handling shared by the masked layers (mixed in before the torch layer class)."""

    mask: torch.Tensor
    mask_version: int
    _dense_cls: type[nn.Module]

    def _init_mask(self, mask: torch.Tensor | None) -> None:
        self.register_buffer("mask", torch.ones(self.weight.shape, dtype=torch.bool, device=self.weight.device),
                             persistent=False)
        self.mask_version = 0  # bumped by every set_mask, so kernels can cache per-mask metadata
        if mask is not None:
            self.set_mask(mask)

    @torch.no_grad()
    def set_mask(self, mask: torch.Tensor):
        """Copies the bool ``mask`` (weight's shape, any device) and zeroes the weights it prunes. Returns self."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a torch.bool tensor, got {got}")
        if mask.shape != self.weight.shape:
            raise ValueError(f"mask: expected shape {tuple(self.weight.shape)} (weight.shape), got {tuple(mask.shape)}")
        self.mask.copy_(mask)
        self._zero_pruned()
        self.mask_version += 1
        return self

    @torch.no_grad()
    def _zero_pruned(self) -> None:
        self.weight.masked_fill_(~self.mask, 0)

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if "mask" in self._buffers:  # not yet during the parent's __init__
            self._zero_pruned()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        # A loaded weight may hold values where the current mask prunes: keep the zero invariant the forward uses.
        super()._load_from_state_dict(*args, **kwargs)
        self._zero_pruned()

    @property
    def density(self) -> float:
        """Fraction of kept weights."""
        return self.mask.float().mean().item() if self.mask.numel() else 1.0

    @classmethod
    def _ctor_kwargs(cls, module: nn.Module) -> dict:
        raise NotImplementedError

    @classmethod
    def from_dense(cls, module: nn.Module, mask: torch.Tensor | None = None):
        """A masked layer that shares ``module``'s weight and bias Parameters (optimizer state stays valid).

        ``mask`` (bool, weight's shape) is applied with :meth:`set_mask`, which zeroes the shared weight in place;
        without it the mask is ``module.mask`` for a masked module, else all ones. Hooks are not carried over.
        """
        if not isinstance(module, cls._dense_cls):
            raise TypeError(f"module: expected an {cls._dense_cls.__module__}.{cls._dense_cls.__name__}, "
                            f"got {type(module).__name__}")
        weight = module.weight
        layer = cls(**cls._ctor_kwargs(module), device="meta", dtype=weight.dtype)  # meta: no init work
        layer.weight = weight
        layer.bias = module.bias
        layer.mask = torch.ones(weight.shape, dtype=torch.bool, device=weight.device)
        layer.train(module.training)
        if mask is None and isinstance(module, _Masked):
            mask = module.mask
        if mask is not None:
            layer.set_mask(mask)
        return layer

    def to_dense(self) -> nn.Module:
        """The plain layer, sharing this layer's weight (pruned entries stay 0) and bias."""
        dense = self._dense_cls(**self._ctor_kwargs(self), device="meta", dtype=self.weight.dtype)
        dense.weight = self.weight
        dense.bias = self.bias
        dense.train(self.training)
        return dense


class MaskedLinear(_Masked, nn.Linear):
    """``nn.Linear`` with a fixed bool weight mask; see the module docstring for the invariant."""

    _dense_cls = nn.Linear

    def __init__(self, in_features: int, out_features: int, bias: bool = True, device=None, dtype=None, *,
                 mask: torch.Tensor | None = None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._init_mask(mask)

    @classmethod
    def _ctor_kwargs(cls, module: nn.Linear) -> dict:
        return {"in_features": module.in_features, "out_features": module.out_features, "bias": module.bias is not None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The fast paths choose by data (sparsity, block structure, 2:4) with host syncs, cached per mask
        # version; a compiled graph keeps the one masked op instead, which itself picks the library or the
        # tile-skipping kernels per call (ops/_masked_matmul_dispatch.py).
        if not torch.compiler.is_compiling():
            if not self.training and cpu_sparse.eval_forward_applies(self, x):
                return cpu_sparse.eval_forward(self, x)  # CPU inference: CSR kernel above the crossover, else dense
            layout = self._block_layout(x.device)
            if layout is not None:
                return block_sparse_linear(x, self.weight, layout, self.bias)
            if self._semi_structured_applies(x):
                return semi_structured_linear(x, self.weight, self.mask, self.bias, backend="cusparselt")
        return masked_linear(x, self.weight, self.mask, self.bias, weight_is_masked=True)

    def _semi_structured_applies(self, x: torch.Tensor) -> bool:
        """A call that needs no gradient, on a 2:4 mask that the sparse tensor cores run faster (measured once)."""
        if x.device.type not in SEMI_STRUCTURED_DEVICES:
            return False
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, self.weight, self.bias)):
            return False
        return semi_structured.sparse_applies(x, self.weight, self.mask, self.bias)

    def _block_layout(self, device: torch.device):
        """The block-sparse layout of this mask when it is block-structured and sparse enough, else None."""
        if device.type not in BLOCK_SPARSE_DEVICES:
            return None
        cached = self.__dict__.get("_block_cache")
        if cached is None or cached[0] != (self.mask_version, self.mask.device):
            layout = None
            if self.mask.float().mean().item() <= BLOCK_SPARSE_MAX_DENSITY:
                block = detect_block_structure(self.mask)
                if block is not None:
                    layout = block_layout(self.mask, block, version=self.mask_version)
            cached = self.__dict__["_block_cache"] = ((self.mask_version, self.mask.device), layout)
        return cached[1]


class MaskedConv2d(_Masked, nn.Conv2d):
    """``nn.Conv2d`` (any stride, padding, dilation, groups, padding_mode) with a fixed bool weight mask."""

    _dense_cls = nn.Conv2d

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None, *,
                 mask: torch.Tensor | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode,
                         device=device, dtype=dtype)
        self._init_mask(mask)

    @classmethod
    def _ctor_kwargs(cls, module: nn.Conv2d) -> dict:
        return {"in_channels": module.in_channels, "out_channels": module.out_channels,
                "kernel_size": module.kernel_size, "stride": module.stride, "padding": module.padding,
                "dilation": module.dilation, "groups": module.groups, "bias": module.bias is not None,
                "padding_mode": module.padding_mode}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training and not torch.compiler.is_compiling() and cpu_sparse.eval_forward_applies(self, x):
            return cpu_sparse.eval_forward(self, x)  # CPU inference: 1x1 as CSR kernel above the crossover, else dense
        padding = self.padding
        if self.padding_mode != "zeros":  # as nn.Conv2d: pad explicitly, then convolve unpadded
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return masked_conv2d(x, self.weight, self.mask, self.bias, self.stride, padding, self.dilation, self.groups,
                             weight_is_masked=True)
