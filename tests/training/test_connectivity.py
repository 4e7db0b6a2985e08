"""interpolate(): the weights on the line between two states, the error barrier, bad input."""

import pytest
import torch
from torch import nn

from lth_kernels.training.connectivity import interpolate


def test_line_between_two_states_and_instability():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    a = {k: torch.zeros_like(v) if v.is_floating_point() else v.clone() for k, v in model.state_dict().items()}
    b = {k: torch.ones_like(v) if v.is_floating_point() else v + 7 for k, v in model.state_dict().items()}
    seen = []

    def error():
        w = model[0].weight.detach()
        assert torch.all(w == w.flatten()[0])  # every weight sits at the same point of the line
        assert int(model[1].num_batches_tracked) == int(a["1.num_batches_tracked"])  # integer buffers from a
        seen.append(float(w.flatten()[0]))
        return 1 - (seen[-1] - 0.5) ** 2  # a barrier: highest in the middle

    out = interpolate(model, a, b, error, points=5)
    assert out["alphas"] == [0, 0.25, 0.5, 0.75, 1] and seen == pytest.approx(out["alphas"])
    assert out["test_error"] == pytest.approx([0.75, 0.9375, 1.0, 0.9375, 0.75])
    assert out["instability"] == pytest.approx(0.25) and out["max_error_rise"] == pytest.approx(0.25)


def test_bad_inputs():
    model = nn.Linear(2, 2)
    s = model.state_dict()
    with pytest.raises(ValueError, match=r"^points: expected an int >= 2"):
        interpolate(model, s, s, lambda: 0.0, points=1)
    with pytest.raises(ValueError, match="^state_b: other keys"):
        interpolate(model, s, {"weight": s["weight"]}, lambda: 0.0)
