"""Helpers of the gradient-based strategies (SNIP, GraSP, SynFlow): a scoring copy of the model and its batches.

The scores are computed on a deep copy so that the caller's model (weights, BN statistics, gradients,
mode) is left untouched. In the copy, masked layers become their plain torch base class and every
prunable weight is multiplied by its current mask: the copy computes the masked network's function
with dense autograd (GraSP needs a Hessian-vector product, which custom sparse ops need not support).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lth_kernels.tickets.prunable import iter_maskable, unwrap_model
from lth_kernels.tickets.strategies.base import PruneContext


def scoring_copy(ctx: PruneContext, dtype: torch.dtype | None = None) -> tuple[nn.Module, dict[str, nn.Parameter]]:
    """Deep copy of the model with masks multiplied in; returns it and its prunable weights (requires_grad on,
    every other parameter off)."""
    model = copy.deepcopy(unwrap_model(ctx.model))
    if dtype is not None:
        model.to(dtype)
    params = {}
    modules = {name: module for name, module, _ in iter_maskable(model)}
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        for module in modules.values():
            mask = getattr(module, "mask", None)
            if not (hasattr(module, "set_mask") and isinstance(mask, torch.Tensor)
                    and mask.shape == module.weight.shape):
                continue
            for base in (nn.Linear, nn.Conv2d):
                # A masked layer subclasses the torch layer and holds its attributes: the base class computes
                # the same function once the mask is in the weight. Every masked layer is swapped, excluded ones
                # too, since GraSP differentiates through all of them twice.
                if isinstance(module, base) and type(module) is not base:
                    module.weight.mul_(mask.to(module.weight.dtype))
                    module.__class__ = base
        for name in ctx.params:
            w = modules[name].weight
            w.mul_(ctx.current[name].to(w.device, w.dtype))
            w.grad = None
            w.requires_grad_(True)
            params[name] = w
    return model, params


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def batches(ctx: PruneContext, limit: int | None, device: torch.device) -> list[tuple[Any, Any]]:
    """The first ``limit`` (x, y) batches of ``ctx.data`` (all when ``None``), moved to ``device``."""
    out = []
    data: Iterable[Any] = ctx.data if ctx.data is not None else ()
    for i, batch in enumerate(data):
        if limit is not None and i >= limit:
            break
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise ValueError(f"data: every batch must be an (x, y) pair, got {type(batch).__name__} at batch {i}")
        x, y = batch[0], batch[1]
        out.append((x.to(device), y.to(device) if isinstance(y, torch.Tensor) else y))
    if not out:
        raise ValueError("data: no batches (an iterable of (x, y) batches is required)")
    return out


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer{' or None' if allow_none else ''}, got {value!r}")
