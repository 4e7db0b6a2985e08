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


def test_cosine_min_lr_is_reached_at_the_end():
    # DeiT's --min-lr: lr_min + (lr - lr_min) * (1 + cos(pi t)) / 2, warmup from 0 multiplying it
    s = LRSchedule(5e-4, 110, "cosine", warmup_steps=10, min_lr=1e-5)
    assert s.lr(0) == 0.0 and s.lr(5) == pytest.approx(0.5 * 5e-4)
    assert s.lr(10) == pytest.approx(5e-4)
    assert s.lr(60) == pytest.approx(1e-5 + (5e-4 - 1e-5) * 0.5)
    assert s.lr(35) == pytest.approx(1e-5 + (5e-4 - 1e-5) * 0.5 * (1 + math.cos(math.pi * 0.25)))
    assert s.lr(110) == pytest.approx(1e-5, rel=1e-12) and s.lr(500) == pytest.approx(1e-5, rel=1e-12)
    assert min(s.lr(i) for i in range(10, 111)) == pytest.approx(1e-5, rel=1e-12)
    # min_lr 0 is the plain cosine, bit for bit
    assert all(LRSchedule(0.1, 50, "cosine", min_lr=0.0).lr(i) == LRSchedule(0.1, 50, "cosine").lr(i)
               for i in range(51))
    with pytest.raises(ValueError, match="min_lr: needs the cosine schedule"):
        LRSchedule(0.1, 10, "multistep", min_lr=1e-3)
    with pytest.raises(ValueError, match="min_lr: needs the cosine schedule and 0 <= min_lr < lr"):
        LRSchedule(0.1, 10, "cosine", min_lr=0.2)
