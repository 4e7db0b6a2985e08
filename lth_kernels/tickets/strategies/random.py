"""Random pruning, the open_lth control: ``scope="global"`` shuffles across layers, ``"layerwise"`` within
each layer. Each group gets a distinct random rank (one ``randperm`` drawn from ``generator``), so the
counts are exact (no ties) and the same generator state gives the same ticket.

``shuffle(ticket, scope=...)`` is open_lth's ``randomly_prune`` branch: it keeps a given ticket's counts
(per layer or in total) and moves the kept weights to random places."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from lth_kernels.tickets.prunable import excluded
from lth_kernels.tickets.strategies.base import PruneContext, Strategy, register_strategy
from lth_kernels.tickets.ticket import Ticket


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


def shuffle(ticket: Ticket, *, scope: str = "layerwise", generator: torch.Generator | None = None,
            exclude: Iterable[str] = ()) -> Ticket:
    """open_lth's ``randomly_prune`` control: the same number of kept weights as ``ticket``, at random places.

    ``scope="layerwise"`` keeps each layer's count (shuffle within layers); ``"global"`` keeps only the
    total (shuffle across layers). Entries matching ``exclude`` globs are left as they are.
    """
    if scope not in ("global", "layerwise"):
        raise ValueError(f"scope: expected 'global' or 'layerwise', got {scope!r}")
    globs = tuple(exclude) if not isinstance(exclude, str) else (exclude,)
    names = [n for n in ticket if not excluded(n, globs)]
    out = dict(ticket.items())
    if scope == "layerwise":
        for n in names:
            flat = ticket[n].flatten()
            out[n] = flat[torch.randperm(flat.numel(), generator=generator)].reshape(ticket[n].shape)
    elif names:
        flat = torch.cat([ticket[n].flatten() for n in names])
        flat = flat[torch.randperm(flat.numel(), generator=generator)]
        offset = 0
        for n in names:
            size = ticket[n].numel()
            out[n] = flat[offset:offset + size].reshape(ticket[n].shape)
            offset += size
    return Ticket(out, {**ticket.metadata, "strategy": f"shuffle_{scope}",
                        "shuffled_from": ticket.metadata.get("strategy", "")})
