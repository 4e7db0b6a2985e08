"""The GPU tests' tolerance rule (``≤ 2×`` torch's own error in the dtype against a float64 oracle) checked on CPU,
where the GPU tests themselves cannot run."""

import pytest
import torch
import torch.nn.functional as F

from tests.conftest import assert_within_torch_error, tf32_off, torch_error_bound


def _linear(dtype):
    g = torch.Generator().manual_seed(0)
    x, w = torch.randn(64, 300, generator=g), torch.randn(40, 300, generator=g)
    want = F.linear(x.double(), w.double())
    own = F.linear(x.to(dtype), w.to(dtype))
    return want, own


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_bound_is_twice_torchs_own_error_plus_a_tiny_floor(dtype):
    want, own = _linear(dtype)
    own_err = float((own.double() - want).abs().max())
    assert own_err > 0
    floor = torch.finfo(torch.float32).eps * float(want.abs().max())
    assert torch_error_bound(want, own) == pytest.approx(2 * own_err + floor)
    assert torch_error_bound(want, own, factor=3) == pytest.approx(3 * own_err + floor)
    assert floor < own_err / 10 or dtype == torch.float32  # tiny next to a low-precision dtype's own error


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ours_within_or_beyond_twice_torchs_error(dtype):
    want, own = _linear(dtype)
    err = (own.double() - want)
    assert_within_torch_error(own, want, own)  # torch against itself: its own error, within 2x
    assert_within_torch_error((want + 1.9 * err).to(torch.float64), want, own)
    worse = want + 2.2 * err.abs().max() * torch.sign(torch.randn_like(want))  # every entry 2.2x off
    with pytest.raises(AssertionError, match=r"max abs error .* > .*2 x torch's own torch.float64 error"):
        assert_within_torch_error(worse, want, own)


def test_floor_covers_outputs_torch_gets_exactly():
    want = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    exact = want.float()
    assert_within_torch_error(exact, want, exact)  # zero error on both sides
    with pytest.raises(AssertionError):
        assert_within_torch_error(exact + 1e-3, want, exact)  # ...but no more than the floor
    empty = torch.zeros(0, 3, dtype=torch.float64)
    assert_within_torch_error(empty.float(), empty, empty.float())


def test_shapes_must_agree():
    want, own = _linear(torch.bfloat16)
    with pytest.raises(AssertionError, match="shapes"):
        assert_within_torch_error(own[:5], want, own)


def test_tf32_off_restores_the_flags():
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        with tf32_off():
            assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        with pytest.raises(RuntimeError), tf32_off():
            raise RuntimeError("a failing comparison")
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
