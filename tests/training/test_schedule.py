import math

import pytest

from lth_kernels.training.schedule import LRSchedule


def test_multistep_matches_hand_values():
    s = LRSchedule(0.1, 160, "multistep", milestones=(120, 80), gamma=0.1)
    expected = {0: 0.1, 79: 0.1, 80: 0.01, 119: 0.01, 120: 0.001, 159: 0.001}
    for step, lr in expected.items():
        assert s.lr(step) == pytest.approx(lr, rel=1e-12), step


def test_warmup_then_milestones():
    s = LRSchedule(0.4, 100, "multistep", milestones=(30,), gamma=0.5, warmup_steps=10)
    expected = {0: 0.0, 1: 0.04, 5: 0.2, 10: 0.4, 29: 0.4, 30: 0.2, 99: 0.2}
    for step, lr in expected.items():
        assert s.lr(step) == pytest.approx(lr, rel=1e-12, abs=1e-15), step


def test_cosine_with_warmup():
    s = LRSchedule(1.0, 110, "cosine", warmup_steps=10)
    assert s.lr(0) == 0.0 and s.lr(5) == pytest.approx(0.5)
    assert s.lr(10) == pytest.approx(1.0)
    assert s.lr(60) == pytest.approx(0.5)  # half way through the cosine
    assert s.lr(35) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s.lr(110) == pytest.approx(0.0, abs=1e-15)
    c = LRSchedule(0.1, 100, "cosine")
    assert c.lr(0) == pytest.approx(0.1) and c.lr(50) == pytest.approx(0.05)


def test_bad_kind():
    with pytest.raises(ValueError, match="kind"):
        LRSchedule(0.1, 10, "linear")
