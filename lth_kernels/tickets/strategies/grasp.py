"""GraSP (Wang, Zhang & Grosse, ICLR 2020): keep the weights whose removal would reduce gradient flow most.

The paper's score ``S(-w) = -w * Hg`` (``g`` the loss gradient, ``H`` the Hessian) removes the weights
with the *largest* S; here the keep score is ``-S = w * Hg`` and the lowest are removed, so the shared
selection rule applies. As in the authors' code, the logits are divided by a temperature ``T``
(default 200) before ``loss_fn``; ``g`` is summed over the batches (a first pass without graph), then
``Hg`` is the gradient of ``sum_b g . grad L_b`` (a second pass with ``create_graph``). For a model
already pruned, ``g`` is the masked network's gradient (zero at pruned weights).

Differences to the authors' code: their default re-initialises every ``nn.Linear`` with Xavier before
scoring and samples a class-balanced batch; here the model's weights and the given batches are used.

Options: ``num_batches`` (default: all), ``temperature`` (200.0), ``train_mode`` (``True``).
"""

from __future__ import annotations

import torch

from lth_kernels.tickets.strategies._scoring import batches, check_positive_int, model_device, scoring_copy
from lth_kernels.tickets.strategies.base import PruneContext, Strategy, register_strategy


@register_strategy("grasp")
class Grasp(Strategy):
    options = {"num_batches": None, "temperature": 200.0, "train_mode": True}
    signed = True
    needs_data = True
    needs_loss = True

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        check_positive_int("num_batches", ctx.options["num_batches"], allow_none=True)
        t = ctx.options["temperature"]
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
            raise ValueError(f"temperature: expected a positive number, got {t!r}")
        model, params = scoring_copy(ctx)
        model.train(bool(ctx.options["train_mode"]))
        names = list(params)
        weights = [params[n] for n in names]
        masks = [ctx.current[n].to(w.device, w.dtype) for n, w in zip(names, weights)]
        data = batches(ctx, ctx.options["num_batches"], model_device(model))

        g = [torch.zeros_like(w) for w in weights]
        for x, y in data:
            grads = torch.autograd.grad(ctx.loss_fn(model(x) / t, y), weights, allow_unused=True)
            for acc, gr in zip(g, grads):
                if gr is not None:
                    acc += gr
        # The masked network's gradient is zero at pruned weights (d f(w*m)/dw = m * grad).
        g = [gi * m for gi, m in zip(g, masks)]

        for x, y in data:
            grads = torch.autograd.grad(ctx.loss_fn(model(x) / t, y), weights, create_graph=True, allow_unused=True)
            z = sum((gi * gr).sum() for gi, gr in zip(g, grads) if gr is not None)
            if isinstance(z, torch.Tensor) and z.requires_grad:
                z.backward()
        return {n: (w.detach() * w.grad) if w.grad is not None else torch.zeros_like(w.detach())
                for n, w in zip(names, weights)}
