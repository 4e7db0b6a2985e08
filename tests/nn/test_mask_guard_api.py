"""The mask guard's own contract (``lth_kernels.nn.mask_guard``): which modules it guards, what each mode does
between evaluations, and that detaching and re-attaching it leaves exactly one working hook."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lth_kernels.nn import MaskedLinear, guard_optimizer
from lth_kernels.nn.mask_guard import MaskGuard, guarded_modules


def _net():
    torch.manual_seed(0)
    net = nn.Sequential(MaskedLinear(6, 5), nn.ReLU(), MaskedLinear(5, 3))
    for m in (net[0], net[2]):
        m.set_mask(torch.rand(m.weight.shape) > 0.5)
    return net


def _revive(m):
    """Write non-zero values at the pruned positions behind the guard's back (a dense dW would do this)."""
    with torch.no_grad():
        m.weight[~m.mask] = 1.0


def _pruned_nonzero(m):
    return int((m.weight.detach()[~m.mask] != 0).sum())


def test_guarded_modules_need_a_mask_buffer_shaped_like_the_weight():
    class MaskOnly(nn.Module):  # a mask but no weight
        def __init__(self):
            super().__init__()
            self.register_buffer("mask", torch.ones(3, 3, dtype=torch.bool))

    class ChannelMask(nn.Linear):  # a mask of another shape (per output channel)
        def __init__(self):
            super().__init__(4, 3)
            self.register_buffer("mask", torch.ones(3, dtype=torch.bool))

    class MaskAttribute(nn.Linear):  # a plain attribute, not a buffer
        def __init__(self):
            super().__init__(4, 3)
            self.mask = torch.ones(3, 4, dtype=torch.bool)

    net = nn.Sequential(MaskOnly(), ChannelMask(), MaskAttribute(), MaskedLinear(4, 3), nn.Linear(3, 3))
    assert [name for name, _ in guarded_modules(net)] == ["3"]


def test_default_mode_is_auto_and_bad_modes_name_the_choices():
    net = _net()
    guard = MaskGuard(net)
    assert guard.mode == "auto"
    guard.after_step()  # first sight of every mask: applied once
    assert all(_pruned_nonzero(m) == 0 for _, m in guard.modules)
    _revive(net[0])
    guard.after_step()  # auto trusts an unchanged mask between evaluations...
    assert _pruned_nonzero(net[0]) > 0
    assert guard.verify() == ["0"]  # ...and the evaluation-time check repairs and escalates the layer
    assert _pruned_nonzero(net[0]) == 0
    _revive(net[0])
    _revive(net[2])
    guard.after_step()  # the escalated layer is enforced every step now; the other is still trusted
    assert _pruned_nonzero(net[0]) == 0 and _pruned_nonzero(net[2]) > 0
    with pytest.raises(ValueError, match=r"^mode: expected one of auto, always, off, got 'sometimes'$"):
        MaskGuard(net, mode="sometimes")


def test_guard_optimizer_uses_the_mode_it_is_given():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)  # a step that changes nothing by itself
    guard = guard_optimizer(net, opt, mode="always")
    assert guard.mode == "always"
    _revive(net[2])
    opt.step()  # "always" re-applies the mask after every step, changed or not
    assert _pruned_nonzero(net[2]) == 0
    guard.remove()

    net2 = _net()
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.0)
    guard_optimizer(net2, opt2, mode="off")
    _revive(net2[2])
    opt2.step()  # "off" trusts the layers
    assert _pruned_nonzero(net2[2]) > 0


def test_guard_optimizer_rejects_a_non_optimizer_naming_its_type():
    with pytest.raises(TypeError, match=r"^optimizer: expected a torch.optim.Optimizer, got str$"):
        guard_optimizer(_net(), "sgd")


def test_remove_detaches_and_a_new_guard_takes_over():
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    MaskGuard(net).remove()  # a guard that never had a hook: nothing to do
    g1 = guard_optimizer(net, opt)
    g1.remove()
    g1.remove()  # twice is harmless
    assert not opt._optimizer_step_post_hooks
    g2 = guard_optimizer(net, opt)
    assert g2 is not g1 and len(opt._optimizer_step_post_hooks) == 1
    # the new guard is the live one: a mask change is zeroed after the next step
    x = torch.randn(8, 6)
    net(x).sum().backward()
    opt.step()  # momentum exists everywhere now
    net[0].set_mask(net[0].mask & (torch.rand(net[0].weight.shape) > 0.5))
    for _ in range(3):
        opt.zero_grad()
        net(x).sum().backward()
        opt.step()
    assert _pruned_nonzero(net[0]) == 0
