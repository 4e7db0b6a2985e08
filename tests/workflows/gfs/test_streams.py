"""GFS on residual streams (the reference's ``mask2``): one gate shared by every branch that writes the stream,
exact against a hand-written gated forward, folded and physically removed; streams the gate would not gate
exactly (a GELU after the add, a BN on the stream) are not offered."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn._channel_graph import analyse
from lth_kernels.tickets.gfs import select_layer
from tests.workflows.gfs._greedy import assert_greedy_steps


class ResMLP(nn.Module):
    """stem -> one residual block -> head: the stream (width 6) is written by the stem and by the block."""

    def __init__(self, post_act=F.relu, stream_bn=False):
        super().__init__()
        self.stem, self.stem_bn = nn.Linear(4, 6), nn.BatchNorm1d(6)
        self.fc1, self.bn1 = nn.Linear(6, 5), nn.BatchNorm1d(5)
        self.fc2, self.bn2 = nn.Linear(5, 6), nn.BatchNorm1d(6)
        self.pre = nn.BatchNorm1d(6) if stream_bn else nn.Identity()
        self.head = nn.Linear(6, 3)
        self.post_act = post_act

    def forward(self, x):
        h = F.relu(self.stem_bn(self.stem(x.flatten(1))))
        b = self.bn2(self.fc2(F.relu(self.bn1(self.fc1(self.pre(h))))))
        return self.head(self.post_act(h + b))


def _model(**kw):
    torch.manual_seed(0)
    model = ResMLP(**kw).eval()
    with torch.no_grad():
        for bn in (model.stem_bn, model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
            bn.running_mean.normal_()
    return model


def test_the_stream_is_one_gfs_layer_with_a_gate_per_branch():
    x = torch.randn(2, 4, 1, 1)
    g = analyse(_model(), x)
    assert g.streams() == [["stem_bn", "bn2"]]
    assert "bn1" in g.gateable() and "stem_bn" not in g.gateable()  # merged: not a layer of its own
    assert analyse(_model(post_act=F.gelu), x).streams() == []  # gelu(s h + s b) != s gelu(h + b)
    assert analyse(_model(stream_bn=True), x).streams() == []  # a BN on the stream has a shift: not gated


def test_shared_gate_selects_exactly_like_a_gate_on_the_stream():
    model = _model()
    x, y = torch.randn(24, 4, 1, 1), torch.randint(0, 3, (24,))

    def oracle(alpha):  # the stream itself multiplied by D * alpha, at every point it exists
        s = (6 * alpha).float()
        with torch.no_grad():
            h = F.relu(model.stem_bn(model.stem(x.flatten(1)))) * s
            b = model.bn2(model.fc2(F.relu(model.bn1(model.fc1(h)))))
            return model.head(F.relu(h + s * b))

    res = select_layer(model, "stem_bn", itertools.repeat((x, y)), num_candidates=10, max_steps=4,
                       gate_at=["stem_bn", "bn2"])
    alpha = assert_greedy_steps(res, oracle, y, 6)
    torch.testing.assert_close(res.alpha, alpha)


def test_gfs_prune_narrows_the_stream_and_keeps_the_function():
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.workflows.gfs.hparams import GfsOptions
    from lth_kernels.workflows.gfs.prune import gfs_prune

    ds = TensorImageDataset(torch.randn(60, 4, 1, 1), torch.arange(60) % 3)
    x = ds.tensors[0]
    model = _model()
    res = gfs_prune(model, ds, ds, GfsOptions(layer_finetune_steps="0it"), batch_size=20, example=x[:2],
                    fixed_size=3)
    stream = next(r for r in res["layers"] if r["layer"] == "stem_bn (stream, 2 branches)")
    assert stream["gate_at"] == ["stem_bn", "bn2"] and stream["kept"] == 3
    assert torch.equal(res["masks"]["stem_bn"], res["masks"]["bn2"]) and int(res["masks"]["bn2"].sum()) == 3
    narrow = res["model"].eval()
    assert narrow.stem.out_features == narrow.fc2.out_features == narrow.head.in_features == 3
    assert narrow.fc1.in_features == 3 and narrow.fc1.out_features == 3
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), model(x), rtol=1e-5, atol=1e-5)  # folded gates == narrow model
    # the switch: without streams only the block's own layer is grown
    off = gfs_prune(_model(), ds, ds, GfsOptions(layer_finetune_steps="0it", residual_streams=False),
                    batch_size=20, example=x[:2], fixed_size=3)
    assert [r["layer"] for r in off["layers"]] == ["bn1"] and off["model"].stem.out_features == 6


def test_cifar_resnet_stage_streams_shrink_as_one_and_the_narrow_net_is_exact():
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.models import create_model
    from lth_kernels.workflows.gfs.hparams import GfsOptions
    from lth_kernels.workflows.gfs.prune import gfs_prune

    torch.manual_seed(0)
    model = create_model("cifar_resnet_20", num_classes=3, in_chans=3, img_size=8).eval()
    ds = TensorImageDataset(torch.randn(12, 3, 8, 8), torch.arange(12) % 3)
    x = ds.tensors[0]
    res = gfs_prune(model, ds, ds, GfsOptions(candidates=2, layer_finetune_steps="0it"), batch_size=6,
                    example=x[:2], fixed_size=3)
    streams = [r for r in res["layers"] if isinstance(r["gate_at"], list)]
    assert [r["gate_at"][0] for r in streams] == ["bn", "blocks.3.bn2", "blocks.6.bn2"]
    assert all(r["layer"].endswith("(stream, 4 branches)") for r in streams)
    assert len(res["layers"]) == 9 + 3
    narrow = res["model"].eval()
    assert narrow.fc.in_features == 3 and narrow.blocks[3].shortcut[0].out_channels == 3
    with torch.no_grad():
        torch.testing.assert_close(narrow(x), model(x), rtol=1e-4, atol=1e-4)
