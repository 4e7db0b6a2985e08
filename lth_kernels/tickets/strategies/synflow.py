"""SynFlow (Tanaka, Kunin, Yamins & Ganguli, NeurIPS 2020): data-free pruning by synaptic flow.

Score: on a copy with every floating parameter and buffer replaced by its absolute value (the
"linearised" network, eval mode, float64 to avoid under/overflow), ``R = sum(model(ones))`` for one
all-ones input of ``input_shape``; score_j = ``|w_j * dR/dw_j|``.

Iterative SynFlow (the paper's algorithm, default ``iterations=100``): score, prune to the density of
an exponential schedule ``d_e = d^(e/E)`` (``schedule="linear"``: ``1 - (1 - d) e/E``), re-score with
the new mask, ..., reaching the target count at step ``E``; the schedule runs per unit (all layers for
``scope="global"``, each layer for ``"layerwise"``). ``iterations=1`` is the one-shot score
(ElasticLTH's ``synflow_global``). For an N:M structure the selection is one-shot. The iterative
schedule counts exactly (``rule`` is not applied to its steps).

``input_shape`` (without the batch dimension) comes from the option or from the first batch of ``data``.
"""

from __future__ import annotations

import math

import torch

from lth_kernels.tickets.strategies._scoring import check_positive_int, model_device, scoring_copy
from lth_kernels.tickets.strategies.base import PruneContext, Strategy, register_strategy
from lth_kernels.tickets.strategies.structure import Count


@register_strategy("synflow")
class SynFlow(Strategy):
    options = {"iterations": 100, "input_shape": None, "schedule": "exponential"}

    def _input_shape(self, ctx: PruneContext) -> tuple[int, ...]:
        shape = ctx.options["input_shape"]
        if shape is None:
            if ctx.data is None:
                raise ValueError("synflow needs the input shape: pass input_shape=(C, H, W) or data=[(x, y), ...]")
            first = next(iter(ctx.data), None)
            if not isinstance(first, (tuple, list)) or not first or not isinstance(first[0], torch.Tensor):
                raise ValueError(f"data: the first batch must be an (x, y) pair of tensors, got {type(first).__name__}")
            shape = tuple(first[0].shape[1:])
        if isinstance(shape, int):
            shape = (shape,)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape):
            raise ValueError(f"input_shape: expected a tuple of positive ints (no batch dim), got {shape!r}")
        return tuple(shape)

    def prune(self, ctx: PruneContext, count: Count) -> dict[str, torch.Tensor]:
        iterations = ctx.options["iterations"]
        check_positive_int("iterations", iterations)
        schedule = ctx.options["schedule"]
        if schedule not in ("exponential", "linear"):
            raise ValueError(f"schedule: expected 'exponential' or 'linear', got {schedule!r}")
        model, params = scoring_copy(ctx, dtype=torch.float64)
        model.eval()
        with torch.no_grad():
            for t in model.state_dict().values():
                if t.is_floating_point():
                    t.abs_()
        weights = {n: p.detach().clone() for n, p in params.items()}  # |w| * current mask
        x = torch.ones((1, *self._input_shape(ctx)), dtype=torch.float64, device=model_device(model))

        def score(masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(weights[n] * masks[n].to(p.device, p.dtype))
                    p.grad = None
            model(x).sum().backward()
            return {n: (p.grad * p).detach().abs() if p.grad is not None else torch.zeros_like(p.detach())
                    for n, p in params.items()}

        masks = dict(ctx.current)
        if ctx.structure.kind == "nm" or iterations == 1:
            groups, alive = self.reduce(ctx, score(masks))
            return self.select(ctx, groups, alive, count)

        # Targets per unit from the alive counts at the start (weights: blocks count the weights they hold):
        # keep_final = R0 - count(unit, R0).
        alive0 = {n: int(ctx.structure.group_weights(m).sum()) for n, m in masks.items()}
        units = alive0 if ctx.scope == "layerwise" else {None: sum(alive0.values())}
        final = {u: r - count(u, r) for u, r in units.items()}

        for e in range(1, iterations + 1):
            # Step e keeps the scheduled count per unit; the last step lands on the target exactly.
            keep_e = {u: self._scheduled(r, final[u], e / iterations, schedule) for u, r in units.items()}
            step = lambda u, remaining, keep_e=keep_e: max(0, remaining - keep_e[u])
            sub = PruneContext(**{**ctx.__dict__, "current": masks})
            groups, alive = self.reduce(sub, score(masks))
            masks = self.select(sub, groups, alive, step, rule="exact")
        return masks

    @staticmethod
    def _scheduled(r0: int, final: int, progress: float, schedule: str) -> int:
        if r0 == 0:
            return 0
        d = final / r0
        density = d ** progress if schedule == "exponential" else 1.0 - (1.0 - d) * progress
        if progress >= 1.0:
            return final
        return max(final, math.ceil(round(r0 * density, 9)))
