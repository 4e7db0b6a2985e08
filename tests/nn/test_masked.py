"""MaskedLinear / MaskedConv2d: dense-compatible state, mask handling, copies, and the zero invariant."""

import copy
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn import MaskedConv2d, MaskedLinear

from ..conftest import HAS_CUDA


def _random_mask(weight, p=0.5):
    return torch.rand(weight.shape, device=weight.device) > p


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = MaskedConv2d(3, 8, 3, padding=1)
        self.dw = MaskedConv2d(8, 8, 3, stride=2, groups=8, bias=False)
        self.fc1 = MaskedLinear(8 * 3 * 3, 17)
        self.fc2 = MaskedLinear(17, 5)

    def forward(self, x):
        x = F.relu(self.dw(F.relu(self.conv(x))))
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def _dense_net():
    net = nn.Module()
    net.conv, net.dw = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, stride=2, groups=8, bias=False)
    net.fc1, net.fc2 = nn.Linear(72, 17), nn.Linear(17, 5)
    net.forward = _Net.forward.__get__(net)
    return net


def _masked_layers(net):
    return [m for m in net.modules() if isinstance(m, MaskedLinear | MaskedConv2d)]


def _pruned_net(p=0.6):
    net = _Net()
    for layer in _masked_layers(net):
        layer.set_mask(_random_mask(layer.weight, p))
    return net


def _assert_invariant(net):
    for layer in _masked_layers(net):
        assert torch.all(layer.weight[~layer.mask] == 0), f"pruned weight revived in {layer}"


def test_forward_matches_dense_layers_and_state_dict_is_dense():
    net = _pruned_net()
    dense = _dense_net()
    sd = net.state_dict()
    assert list(sd) == list(dense.state_dict()), "state_dict keys differ from the dense model's"
    assert not any("mask" in k for k in sd)
    dense.load_state_dict(sd)
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(net(x), dense(x))
    # and back: a dense checkpoint (with pruned zeros) loads into the masked model
    net2 = _pruned_net()
    net2.load_state_dict(dense.state_dict())
    for a, b in zip(_masked_layers(net2), _masked_layers(net), strict=True):
        kept = a.mask & b.mask
        assert torch.equal(a.weight[kept], b.weight[kept])
    _assert_invariant(net2)


def test_set_mask_zeroes_copies_and_versions():
    layer = MaskedLinear(7, 5)
    assert layer.mask.dtype == torch.bool and layer.mask.all() and layer.mask_version == 0
    w0 = layer.weight.detach().clone()
    m = _random_mask(layer.weight)
    assert layer.set_mask(m) is layer
    assert layer.mask_version == 1 and torch.equal(layer.mask, m) and layer.mask is not m
    torch.testing.assert_close(layer.weight.detach(), torch.where(m, w0, 0))
    m.fill_(True)  # the layer copied the mask
    assert not layer.mask.all()
    layer.set_mask(layer.mask)
    assert layer.mask_version == 2
    assert abs(layer.density - layer.mask.float().mean().item()) < 1e-9
    conv = MaskedConv2d(4, 6, (3, 2), groups=2, mask=torch.zeros(6, 2, 3, 2, dtype=torch.bool))
    assert conv.mask_version == 1 and torch.all(conv.weight == 0) and conv.density == 0.0


@pytest.mark.parametrize(
    "mask,err,match",
    [
        (torch.ones(5, 7), TypeError, r"^mask: expected a torch.bool tensor, got torch.float32"),
        ([[True]], TypeError, r"^mask: expected a torch.bool tensor, got list"),
        (torch.ones(7, 5, dtype=torch.bool), ValueError,
         r"^mask: expected shape \(5, 7\) \(weight.shape\), got \(7, 5\)$"),
    ],
)
def test_set_mask_bad_input(mask, err, match):
    layer = MaskedLinear(7, 5)
    with pytest.raises(err, match=match):
        layer.set_mask(mask)
    assert layer.mask_version == 0


def test_from_dense_shares_parameters_and_to_dense():
    lin = nn.Linear(9, 4)
    m = _random_mask(lin.weight)
    masked = MaskedLinear.from_dense(lin, m)
    assert masked.weight is lin.weight and masked.bias is lin.bias and torch.all(lin.weight[~m] == 0)
    x = torch.randn(3, 9)
    torch.testing.assert_close(masked(x), lin(x))
    back = masked.to_dense()
    assert type(back) is nn.Linear and back.weight is lin.weight
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=(1, 0), dilation=(1, 2), groups=2, bias=False, padding_mode="reflect")
    mc = MaskedConv2d.from_dense(conv.eval())
    assert mc.mask.all() and mc.mask_version == 0 and not mc.training and mc.bias is None
    assert (mc.stride, mc.padding, mc.dilation, mc.groups, mc.padding_mode) == ((2, 2), (1, 0), (1, 2), 2, "reflect")
    xc = torch.randn(2, 4, 9, 10)
    torch.testing.assert_close(mc(xc), conv(xc))
    again = MaskedConv2d.from_dense(mc.set_mask(_random_mask(mc.weight)))  # a masked layer keeps its mask
    assert torch.equal(again.mask, mc.mask) and again.mask_version == 1
    assert type(mc.to_dense()) is nn.Conv2d
    with pytest.raises(TypeError, match=r"^module: expected an torch.nn.modules.linear.Linear, got Conv2d"):
        MaskedLinear.from_dense(conv)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")
@pytest.mark.parametrize("padding_mode", ["zeros", "reflect", "replicate", "circular"])
@pytest.mark.parametrize("padding", [1, (2, 1), "same"])
def test_conv_padding_modes_match_nn_conv2d(padding_mode, padding):
    conv = nn.Conv2d(3, 4, (3, 4), padding=padding, padding_mode=padding_mode)
    with torch.no_grad():
        conv.weight.mul_(_random_mask(conv.weight))
    masked = MaskedConv2d.from_dense(copy.deepcopy(conv), conv.weight != 0)
    for x in (torch.randn(2, 3, 8, 9), torch.randn(3, 8, 9)):  # batched and unbatched
        torch.testing.assert_close(masked(x), conv(x))


def test_deepcopy_pickle_to_half():
    net = _pruned_net()
    for clone in (copy.deepcopy(net), pickle.loads(pickle.dumps(net))):
        for a, b in zip(_masked_layers(clone), _masked_layers(net), strict=True):
            assert torch.equal(a.mask, b.mask) and a.mask is not b.mask and a.mask_version == b.mask_version
        x = torch.randn(2, 3, 7, 7)
        torch.testing.assert_close(clone(x), net(x))
    half = copy.deepcopy(net).half()
    double = copy.deepcopy(net).to(torch.float64)
    for layer in _masked_layers(half) + _masked_layers(double):
        assert layer.mask.dtype == torch.bool
    assert _masked_layers(half)[0].weight.dtype == torch.float16
    x = torch.randn(2, 3, 7, 7)
    torch.testing.assert_close(double(x.double()).float(), net(x))
    reset = copy.deepcopy(net)
    for layer in _masked_layers(reset):
        layer.reset_parameters()
    _assert_invariant(reset)


OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "sgd_nesterov_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-2),
    "adam_wd": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adam_amsgrad": lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def _train(net, opt, steps, amp=False, clip=None):
    for _ in range(steps):
        x, target = torch.randn(4, 3, 7, 7), torch.randint(0, 5, (4,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = F.cross_entropy(net(x), target)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        _assert_invariant(net)


@pytest.mark.parametrize("amp,clip", [(False, None), (True, 0.1)], ids=["fp32", "bf16_autocast_clip"])
@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero(opt_name, amp, clip):
    net = _pruned_net()
    before = [layer.weight.detach().clone() for layer in _masked_layers(net)]
    _train(net, OPTIMIZERS[opt_name](net.parameters()), steps=4, amp=amp, clip=clip)
    for layer, w0 in zip(_masked_layers(net), before, strict=True):
        assert not torch.equal(layer.weight[layer.mask], w0[layer.mask]), "kept weights did not train"


def test_rewind_and_reapply_cycle():
    net = _pruned_net(p=0.2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    _train(net, opt, steps=2)
    rewind = copy.deepcopy(net.state_dict())  # the rewind point (step K)
    for _level in range(3):  # IMP: train, prune the smallest kept weights, rewind, re-apply
        _train(net, opt, steps=3)
        for layer in _masked_layers(net):
            kept = layer.weight.detach().abs()[layer.mask]
            threshold = kept.kthvalue(max(1, kept.numel() // 5)).values if kept.numel() else 0
            new_mask = layer.mask & (layer.weight.detach().abs() > threshold)
            layer.set_mask(new_mask)
        net.load_state_dict(rewind)
        for layer in _masked_layers(net):
            layer.set_mask(layer.mask)
        _assert_invariant(net)
        for layer, (name, w) in zip(_masked_layers(net), [(k, v) for k, v in rewind.items() if "weight" in k],
                                    strict=True):
            assert torch.equal(layer.weight[layer.mask], w[layer.mask]), f"{name} not rewound"
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)  # fresh state per level
    _train(net, opt, steps=2)


def test_compile_fullgraph_trace_masked_model():
    # aot_eager: dynamo + AOT autograd without a C++ toolchain; the inductor run is a gpu test in tests/ops
    net = _pruned_net()
    ref = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 7, 7)
    compiled(x).square().sum().backward()
    ref(x).square().sum().backward()
    for a, b in zip(_masked_layers(net), _masked_layers(ref), strict=True):
        torch.testing.assert_close(a.weight.grad, b.weight.grad)
        assert torch.all(a.weight.grad[~a.mask] == 0)


def test_meta_device_forward():  # shape inference on meta models (no autocast on meta)
    assert MaskedLinear(4, 3, device="meta")(torch.empty(2, 4, device="meta")).shape == (2, 3)
    conv = MaskedConv2d(4, 3, 3, device="meta")
    assert conv(torch.empty(2, 4, 5, 5, device="meta")).shape == (2, 3, 3, 3)


def test_direct_weight_write_then_set_mask_restores_invariant():
    layer = MaskedLinear(6, 4, mask=torch.rand(4, 6) > 0.5)
    with torch.no_grad():
        layer.weight.normal_()
    layer.set_mask(layer.mask)
    assert torch.all(layer.weight[~layer.mask] == 0)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_ranks_gloo(tmp_path):
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "tests.nn._ddp_masked_worker", str(_free_port()), str(tmp_path)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    assert r0.keys() == r1.keys() and "mask0" in r0
    for k in r0:
        assert torch.equal(r0[k], r1[k]), f"{k} differs between ranks"
    for i, w in ((0, "0.weight"), (1, "3.weight")):
        assert torch.all(r0[w][~r0[f"mask{i}"]] == 0)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")
@pytest.mark.gpu
def test_cuda_amp_fp16_invariant():
    net = _pruned_net().cuda()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2, weight_decay=0.1)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(5):
        x, target = torch.randn(4, 3, 7, 7, device="cuda"), torch.randint(0, 5, (4,), device="cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            loss = F.cross_entropy(net(x), target)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        _assert_invariant(net)
