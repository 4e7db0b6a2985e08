"""Plain eager calls of the masked ops skip the custom-op dispatch; traced calls (a dispatch mode, fake tensors,
torch.compile) keep the registered op. Both run the same function and autograd formula: same values, same grads."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lth_kernels import ops


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


def _cases():
    m = torch.rand(6, 5) > 0.5
    mc = torch.rand(4, 2, 3, 3) > 0.5
    return [
        ("masked_linear", lambda x, w, s: ops.masked_linear(x, w, m), ((3, 5), (6, 5))),
        ("masked_linear_scores", lambda x, w, s: ops.masked_linear_scores(x, w, m, s), ((3, 5), (6, 5))),
        ("masked_conv2d", lambda x, w, s: ops.masked_conv2d(x, w, mc, None, 1, 1), ((2, 2, 5, 5), (4, 2, 3, 3))),
    ]


@pytest.mark.parametrize("case", range(3))
def test_eager_and_dispatched_paths_agree(case):
    name, fn, (xs, ws) = _cases()[case]
    results = []
    for traced in (False, True):
        torch.manual_seed(1)
        x = torch.randn(xs, requires_grad=True)
        w = torch.randn(ws, requires_grad=True)
        s = torch.rand(ws, requires_grad=True)
        mode = _Ops()
        if traced:
            with mode:
                y = fn(x, w, s)
                y.square().sum().backward()
        else:
            y = fn(x, w, s)
            y.square().sum().backward()
        # the dispatched path shows the op (and its backward ops) to the mode; the eager one has no mode to see
        assert (f"lth_kernels.{name}.default" in mode.names) == traced
        assert ("_FunctionBackward" in type(y.grad_fn).__name__) == (not traced)
        results.append([y.detach(), x.grad, w.grad, s.grad])
    for eager, traced in zip(*results, strict=True):
        if eager is None:
            assert traced is None
        else:
            torch.testing.assert_close(eager, traced, rtol=0, atol=0)


def test_tensor_subclasses_take_the_registered_op():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w = torch.randn(3, 5), torch.randn(6, 5)
        y = ops.masked_linear(x, w, torch.ones(6, 5, dtype=torch.bool))
    assert y.shape == (3, 6)
