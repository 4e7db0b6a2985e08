"""Linear mode connectivity (Frankle et al., 2020): the error along the line between two trained networks.

Two copies of a network trained from the same weights with different SGD noise (data orders) are *stable*
when the error does not rise between them; ``instability`` = the maximum error on the line minus the mean
of the two ends' errors (their "error barrier height").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

# The data-order offsets of the two copies (ElasticLTH's change_depth_linear_connect uses data_seed+9999/+10001).
COPY_SEEDS = (9999, 10001)


def interpolate(model: nn.Module, state_a: dict[str, torch.Tensor], state_b: dict[str, torch.Tensor],
                error: Callable[[], float], points: int = 21) -> dict:
    """Load ``(1 - α) θ_a + α θ_b`` into ``model`` for ``points`` evenly spaced α in [0, 1] (integer buffers,
    e.g. BN's batch counts, from ``state_a``) and call ``error()`` at each; returns ``{"alphas", "test_error",
    "instability", "max_error_rise"}``. ``model`` is left holding θ_b."""
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise ValueError(f"points: expected an int >= 2 (the ends included), got {points!r}")
    if state_a.keys() != state_b.keys():
        raise ValueError(f"state_b: other keys than state_a ({sorted(state_a.keys() ^ state_b.keys())[:3]} ...)")
    alphas = [i / (points - 1) for i in range(points)]
    errors = []
    for a in alphas:
        mixed = {k: (1 - a) * va + a * state_b[k] if va.is_floating_point() else va for k, va in state_a.items()}
        model.load_state_dict(mixed)
        errors.append(float(error()))
    return {"alphas": alphas, "test_error": errors, "instability": max(errors) - (errors[0] + errors[-1]) / 2,
            "max_error_rise": max(errors) - min(errors[0], errors[-1])}
