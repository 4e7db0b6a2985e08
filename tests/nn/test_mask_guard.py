"""Pruned weights stay exactly zero in a user's own loop: train, prune, keep training with the same optimizer
(momentum / Adam state from before the pruning), through ``Ticket.apply(..., optimizer=)`` / ``sparsify``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lth_kernels.models import create_model
from lth_kernels.nn import guard_optimizer, sparsify
from lth_kernels.nn.mask_guard import guarded_modules
from lth_kernels.tickets import prune

OPTIMIZERS = {
    "sgd_momentum": lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-4),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=1e-2, amsgrad=True),
}


def _batch(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 10, (32,), generator=g)


def _steps(model, opt, n, seed=0):
    model.train()
    for i in range(n):
        x, y = _batch(seed + i)
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()


def _pruned_nonzero(model):
    return sum(int((m.weight.detach() != 0)[~m.mask].sum()) for _, m in guarded_modules(model))


def _setup(name):
    torch.manual_seed(0)
    model = create_model("lenet_300_100", num_classes=10, in_chans=1, img_size=8)
    sparsify(model)
    opt = OPTIMIZERS[name](model.parameters())
    _steps(model, opt, 3)  # optimizer state now exists at every position
    return model, opt


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_apply_with_optimizer_keeps_pruned_weights_zero(name):
    model, opt = _setup(name)
    ticket = prune(model, "magnitude", 0.5)
    ticket.apply(model, optimizer=opt)
    pruned = sum(int((~m.mask).sum()) for _, m in guarded_modules(model))
    assert pruned > 10_000
    _steps(model, opt, 5, seed=10)
    assert _pruned_nonzero(model) == 0
    # the forward is exactly the masked network's (weights at pruned positions are 0, not merely masked)
    x, _ = _batch(99)
    model.eval()
    for _, m in guarded_modules(model):
        assert torch.equal(m.weight.detach(), m.weight.detach() * m.mask)
    # a later mask change (a second level) is caught by the post-step hook before state can revive it
    ticket2 = prune(model, "magnitude", 0.5)
    for name_, m in guarded_modules(model):
        m.set_mask(ticket2[f"{name_}.weight"])
    _steps(model, opt, 1, seed=20)  # the hook zeroes the newly pruned state after this step
    _steps(model, opt, 4, seed=21)
    assert _pruned_nonzero(model) == 0
    assert torch.isfinite(model(x)).all()


@pytest.mark.parametrize("name", ["sgd_momentum", "adam"])
def test_without_optimizer_the_old_state_revives_pruned_weights(name):
    """The hole the optimizer argument closes (so the test above proves something)."""
    model, opt = _setup(name)
    prune(model, "magnitude", 0.5).apply(model)
    _steps(model, opt, 5, seed=10)
    assert _pruned_nonzero(model) > 1000


def test_sparsify_optimizer_and_one_hook_per_model():
    model, opt = _setup("adam")
    ticket = prune(model, "magnitude", 0.3)
    sparsify(model, ticket=ticket, optimizer=opt)
    g1 = guard_optimizer(model, opt)
    g2 = guard_optimizer(model, opt)
    assert g1 is g2 and len(opt._optimizer_step_post_hooks) == 1
    state = opt.state[g1.modules[0][1].weight]
    assert all(bool((v[~g1.modules[0][1].mask] == 0).all()) for v in state.values() if v.dim() == 2)
    g1.remove()
    assert not opt._optimizer_step_post_hooks
    with pytest.raises(TypeError, match="optimizer: expected a torch.optim.Optimizer"):
        sparsify(model, optimizer="adam")
