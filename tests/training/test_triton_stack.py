"""The Triton kernels inside the stack on CPU: ``LTH_KERNELS_BACKEND=triton`` under the interpreter (the suite sets
TRITON_INTERPRET=1 before triton is imported) through ``sparsify``'s masked layers, the scored layers, the Trainer and
its resume, against float64 plain-PyTorch training of the same masked networks. The automatic choice (the library on
CPU) runs the same tests. Shapes stay a few 32-wide tiles, so each test takes seconds in the interpreter."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from lth_kernels.nn import sparsify
from lth_kernels.nn.scored import score_layers
from lth_kernels.ops import _registry
from lth_kernels.training import Callback, Trainer, TrainingHparams
from lth_kernels.training.checkpoint import load_weights, step_paths

from ..conftest import assert_close, require_live

LINEAR_OPS = ("masked_linear", "masked_linear_grad_input", "masked_linear_grad_weight", "masked_linear_grad_scores",
              "masked_linear_grad_weight_and_scores")


@pytest.fixture(params=["auto", "triton"])
def stack_backend(request, monkeypatch) -> list[str]:
    """Runs the test with the automatic backends and with ``LTH_KERNELS_BACKEND=triton``; returns the list of the
    masked-linear ops that ran a Triton implementation (a spy), so a test can prove that the kernels ran."""
    ran = []
    if request.param == "triton":
        require_live("masked_linear", "triton", "cpu")
        monkeypatch.setenv("LTH_KERNELS_BACKEND", "triton")
        for op in LINEAR_OPS:
            impls = _registry.ops()[op].impls
            real = impls["triton"]
            monkeypatch.setitem(impls, "triton", lambda *a, _real=real, _op=op: ran.append(_op) or _real(*a))
    _registry._RESOLVED.clear()
    yield ran
    _registry._RESOLVED.clear()


def _masks(model: nn.Module, density: float = 0.5) -> dict[str, torch.Tensor]:
    """Random masks with one whole 32x32 tile pruned where the layer is large enough (a tile the kernels skip)."""
    out = {}
    for name, p in model.named_parameters():
        if name.endswith("weight") and p.dim() >= 2:
            m = torch.rand(p.shape) < density
            if p.shape[0] >= 32 and p.shape[1] >= 32:
                m[:32, :32] = False
            out[name] = m
    return out


class _Float64Masked(nn.Module):
    """The oracle: the same network in float64 plain PyTorch, weights masked with ``torch.where`` in the forward."""

    def __init__(self, model: nn.Module, masks: dict[str, torch.Tensor]):
        super().__init__()
        self.net = copy.deepcopy(model).double()
        self.masks = masks
        for name, m in masks.items():
            layer = self.net.get_submodule(name.removesuffix(".weight"))
            layer.__class__ = {nn.Linear: _WhereLinear, nn.Conv2d: _WhereConv2d}[type(layer)]
            layer.keep = m
            with torch.no_grad():
                layer.weight.masked_fill_(~m, 0)  # as the masked layers store them; the where keeps them there

    def forward(self, x):
        return self.net(x.double())


class _WhereLinear(nn.Linear):
    def forward(self, x):
        return F.linear(x, torch.where(self.keep, self.weight, 0), self.bias)


class _WhereConv2d(nn.Conv2d):
    def forward(self, x):
        return self._conv_forward(x, torch.where(self.keep, self.weight, 0), self.bias)


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)


def test_sparsified_mlp_trains_like_the_float64_oracle(stack_backend):
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(20, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 5))
    masks = _masks(dense)
    oracle = _Float64Masked(dense, masks)
    model = sparsify(copy.deepcopy(dense), masks)
    opt, opt64 = _sgd(model), _sgd(oracle)
    x, y = torch.randn(24, 20), torch.randint(0, 5, (24,))
    for _ in range(3):
        for m, o, inp in ((model, opt, x), (oracle, opt64, x.double())):
            o.zero_grad()
            F.cross_entropy(m(inp), y).backward()
            o.step()
        for name, m in masks.items():
            w = model.get_parameter(name).detach()
            assert torch.count_nonzero(w[~m]) == 0, name  # the zero invariant after every step
            assert_close(w, oracle.net.get_parameter(name).detach(), torch.float32, msg=name)
    with torch.no_grad():
        assert_close(model(x), oracle(x), torch.float32)
    if "triton" in _registry.resolve("masked_linear", "cpu"):
        assert {"masked_linear", "masked_linear_grad_input", "masked_linear_grad_weight"} <= set(stack_backend)


def test_scored_layers_apply_the_mask_in_the_forward(stack_backend):
    # the weights are frozen and keep their values at pruned positions: the forward itself must mask them
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 36), nn.ReLU(), nn.Linear(36, 4))
    masks = _masks(model, 0.4)
    w, b = ({n: model.get_parameter(f"{n}.{k}").detach().double() for n in ("0", "2")} for k in ("weight", "bias"))
    layers = score_layers(model, masks)
    assert all(torch.count_nonzero(layer.weight) == layer.weight.numel() for layer in layers.values())
    x = torch.randn(9, 40)
    out = model(x)
    gy = torch.randn_like(out)
    out.backward(gy)
    # oracle: float64 autograd through W * s with s = the float mask; ds = (dY^T X) * W over every entry, the
    # straight-through score gradient
    s = {n: masks[f"{n}.weight"].double().requires_grad_() for n in ("0", "2")}
    want = F.linear(torch.relu(F.linear(x.double(), w["0"] * s["0"], b["0"])), w["2"] * s["2"], b["2"])
    want.backward(gy.double())
    assert_close(out, want, torch.float32)
    for n in ("0", "2"):
        assert_close(model.get_parameter(f"{n}.scores").grad, s[n].grad, torch.float32, msg=n)
    if "triton" in _registry.resolve("masked_linear", "cpu"):
        assert "masked_linear" in stack_backend


class _CrashAt(Callback):
    """Raises at the start of a step, as a killed run stops (the epoch checkpoint before it is on disk)."""

    def __init__(self, step):
        self.step = step

    def on_step_start(self, trainer, step):
        if step == self.step:
            raise KeyboardInterrupt(f"crash at step {step}")


class _ZeroAfterEachStep(Callback):
    def __init__(self):
        self.nonzero = []

    def on_step_end(self, trainer, step):
        self.nonzero.append(sum(int(torch.count_nonzero(m.weight.detach()[~m.mask])) for _, m in trainer.guard.modules))


def _masks_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {f"{name}.weight": m.mask.clone() for name, m in model.named_modules() if hasattr(m, "set_mask")}


def _dense_copy(model: nn.Module) -> nn.Module:
    """The plain torch network with the masked layers' weights (pruned entries 0)."""
    dense = copy.deepcopy(model)
    for name in _masks_of(model):
        parent, _, child = name.removesuffix(".weight").rpartition(".")
        holder = dense.get_submodule(parent) if parent else dense
        setattr(holder, child, getattr(holder, child).to_dense())
    return dense


def _conv_net():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 40),
                        nn.ReLU(), nn.Linear(40, 3))
    return sparsify(net, _masks(net))


def test_small_conv_net_trains_and_resumes_bit_exactly(stack_backend, tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)
    train, test = TensorDataset(x[:32], y[:32]), TensorDataset(x[32:], y[32:])
    hp = TrainingHparams(training_steps="2ep", lr=0.05, momentum=0.9, weight_decay=1e-3, eval_every="0it",
                         milestone_steps="", warmup_steps="0it")
    zero = _ZeroAfterEachStep()
    whole = Trainer(_conv_net(), train, test, hp, batch_size=16, out_dir=tmp_path / "whole", callbacks=[zero],
                    progress=False)
    done = whole.train()
    assert done.step == 4 and zero.nonzero == [0, 0, 0, 0]
    # the same training of the float64 oracle (same data order and schedule) ends at the same weights
    net = _conv_net()
    oracle = _Float64Masked(_dense_copy(net), _masks_of(net))
    Trainer(oracle, train, test, hp, batch_size=16, progress=False).train()
    for name, p in whole.model.state_dict().items():
        assert_close(p, oracle.net.state_dict()[name], torch.float32, msg=name)
    with pytest.raises(KeyboardInterrupt):
        Trainer(_conv_net(), train, test, hp, batch_size=16, out_dir=tmp_path / "run", callbacks=[_CrashAt(3)],
                progress=False).train()
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    resumed = Trainer(_conv_net(), train, test, hp, batch_size=16, out_dir=tmp_path / "run", progress=False).train()
    assert resumed.resumed_from == 2 and resumed.step == 4
    a, b = _conv_net(), _conv_net()
    load_weights(a, step_paths(tmp_path / "whole", 4)[0])
    load_weights(b, step_paths(tmp_path / "run", 4)[0])
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name
    assert resumed.metrics["test_acc"] == done.metrics["test_acc"]
    if "triton" in _registry.resolve("masked_linear", "cpu"):
        assert {"masked_linear", "masked_linear_grad_weight"} <= set(stack_backend)
