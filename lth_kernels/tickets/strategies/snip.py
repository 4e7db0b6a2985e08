"""SNIP (Lee, Ajanthan & Torr, ICLR 2019): connection sensitivity at the current weights.

score_j = |dL/dc_j| at c = 1 for the masked network ``f(c * w)``, i.e. ``|w_j * dL/dw_j|``, the loss
``loss_fn(model(x), y)`` summed over the given batches (the paper uses one batch). The paper's
normalisation by the sum of scores does not change the ranking and is left out.

Options: ``num_batches`` (default: every batch of ``data``), ``train_mode`` (default ``True``: BN uses
batch statistics as in the paper; ``False`` runs the copy in eval mode).
"""

from __future__ import annotations

import torch

from lth_kernels.tickets.strategies._scoring import batches, check_positive_int, model_device, scoring_copy
from lth_kernels.tickets.strategies.base import PruneContext, Strategy, register_strategy


@register_strategy("snip")
class Snip(Strategy):
    options = {"num_batches": None, "train_mode": True}
    needs_data = True
    needs_loss = True

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        check_positive_int("num_batches", ctx.options["num_batches"], allow_none=True)
        model, params = scoring_copy(ctx)
        model.train(bool(ctx.options["train_mode"]))
        for x, y in batches(ctx, ctx.options["num_batches"], model_device(model)):
            ctx.loss_fn(model(x), y).backward()
        return {name: (p.grad * p).detach().abs() if p.grad is not None else torch.zeros_like(p.detach())
                for name, p in params.items()}
