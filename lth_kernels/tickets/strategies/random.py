"""Random pruning, the open_lth control: ``scope="global"`` shuffles across layers, ``"layerwise"`` within
each layer. Each group gets a distinct random rank (one ``randperm`` drawn from ``generator``), so the
counts are exact (no ties) and the same generator state gives the same ticket."""

from __future__ import annotations

import math

import torch

from lth_kernels.tickets.strategies.base import PruneContext, Strategy, register_strategy


@register_strategy("random")
class Random(Strategy):
    def group_scores(self, ctx: PruneContext) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        shapes = {name: ctx.structure.grid_shape(p.shape) for name, p in ctx.params.items()}
        total = sum(math.prod(s) for s in shapes.values())
        # float64 ranks are exact up to 2**53 groups; drawn on CPU so a CPU generator works for any device.
        ranks = torch.randperm(total, generator=ctx.generator, dtype=torch.float64)
        scores, offset = {}, 0
        for name, shape in shapes.items():
            size = math.prod(shape)
            scores[name] = ranks[offset:offset + size].reshape(shape).to(ctx.params[name].device)
            offset += size
        # Alive flags per group come from the structure's reduction of the current mask.
        alive = {name: ctx.structure.reduce(torch.zeros(ctx.current[name].shape, dtype=torch.float64,
                                                        device=ctx.current[name].device), ctx.current[name])[1]
                 for name in shapes}
        return scores, alive
