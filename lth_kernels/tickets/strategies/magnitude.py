"""Magnitude pruning (open_lth ``sparse_global``; ``scope="layerwise"`` is open_lth PR #12): score = |w|."""

from __future__ import annotations

import torch

from lth_kernels.tickets.strategies.base import PruneContext, Strategy, register_strategy


@register_strategy("magnitude")
class Magnitude(Strategy):
    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        # float32 holds |w| of fp32/fp16/bf16 weights exactly, so ties stay ties.
        dtype = lambda p: torch.float64 if p.dtype == torch.float64 else torch.float32
        return {name: p.detach().abs().to(dtype(p)) for name, p in ctx.params.items()}
