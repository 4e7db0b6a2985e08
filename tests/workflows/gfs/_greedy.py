"""The greedy rule replayed by hand: what each GFS step must have chosen, given a gated forward ``oracle``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F


def assert_greedy_steps(res, oracle, y: torch.Tensor, d: int) -> torch.Tensor:
    """Check every step of ``res`` (a ``GfsLayerResult`` without repeats) against the argmin of the batch loss of
    ``oracle(alpha)`` over the channels not chosen yet (ties: the lowest index); returns the replayed alpha."""
    alpha, chosen = torch.zeros(d, dtype=torch.float64), []
    for k, step in enumerate(res.steps):
        eta = 1.0 / (k + 1)
        losses = {}
        for i in (i for i in range(d) if i not in chosen):
            trial = alpha * (1 - eta)
            trial[i] += eta
            losses[i] = float(F.cross_entropy(oracle(trial), y))
        best = min(losses, key=lambda i: (losses[i], i))
        assert step.chosen == best and step.loss == pytest.approx(losses[best], rel=1e-5)
        alpha = alpha * (1 - eta)
        alpha[best] += eta
        chosen.append(best)
    return alpha
