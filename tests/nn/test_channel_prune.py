"""Physical channel pruning equals the masked-channel model; residual groups; graph rules; bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from lth_kernels.models import create_model
from lth_kernels.nn.channel_prune import (
    ChannelPruneError,
    analyse,
    channel_param_masks,
    count_flops,
    mask_channels_,
    prune_channels,
)

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _random_masks(model, names, p=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    out = {}
    for n in names:
        m = mods[n]
        c = getattr(m, "num_features", None) or getattr(m, "out_channels", None) or m.out_features
        out[n] = torch.rand(c, generator=g) > p
    return out


def _perturb_bn(model, seed=1):
    """Non-trivial running statistics and affine parameters, so eval-mode BN is not the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BN):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _model_input_bns(name, *, num_classes, img_size, batch):
    """A model with perturbed BN statistics, an input batch for it, and the names of its BN layers."""
    model = create_model(name, num_classes=num_classes, in_chans=3, img_size=img_size)
    _perturb_bn(model)
    return model, torch.randn(batch, 3, img_size, img_size), [n for n, m in model.named_modules() if isinstance(m, _BN)]


def _check_equal(model, masks, x, mode="eval"):
    model.train(mode == "train")
    ref = mask_channels_(copy.deepcopy(model), masks)
    narrow, record = prune_channels(model, masks, x)
    narrow.train(mode == "train")
    with torch.no_grad():
        a, b = ref(x), narrow(x)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    return narrow, record


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_vgg_physical_equals_masked(mode):
    model, x, bns = _model_input_bns("cifar_vgg_11", num_classes=7, img_size=16, batch=3)
    masks = _random_masks(model, bns)
    narrow, record = _check_equal(model, masks, x, mode)
    # VGG has no residual adds: every BN keeps exactly its own mask.
    for n in bns:
        assert record.after[n] == int(masks[n].sum())
        assert dict(narrow.named_modules())[n].num_features == int(masks[n].sum())
    assert sum(p.numel() for p in narrow.parameters()) < sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_cifar_resnet_physical_equals_masked(mode):
    model, x, bns = _model_input_bns("cifar_resnet_8", num_classes=5, img_size=8, batch=4)
    _check_equal(model, _random_masks(model, bns, p=0.4), x, mode)


def test_residual_group_keeps_union_and_zeroes_members():
    """A channel of a residual group goes only when every branch masks it; a member's own masked channels
    that the group keeps are zeroed (gamma = beta = 0)."""
    model = create_model("cifar_resnet_8", num_classes=5, in_chans=3, img_size=8).eval()
    _perturb_bn(model)
    x = torch.randn(2, 3, 8, 8)
    c = model.bn.num_features  # stem BN: in the first segment's residual stream with blocks.0.bn2
    m_stem = torch.zeros(c, dtype=torch.bool)
    m_stem[: c // 2] = True
    m_block = torch.zeros(c, dtype=torch.bool)
    m_block[c // 4: 3 * c // 4] = True
    masks = {"bn": m_stem, "blocks.0.bn2": m_block}
    narrow, record = _check_equal(model, masks, x)
    assert record.after["bn"] == record.after["blocks.0.bn2"] == int((m_stem | m_block).sum())
    kept = record.kept["bn"]
    stem = dict(narrow.named_modules())["bn"]
    for j, ch in enumerate(kept):
        if not m_stem[ch]:
            assert stem.weight[j] == 0 and stem.bias[j] == 0
    # A residual group with an unmasked branch cannot lose channels.
    _, rec2 = _check_equal(model, {"bn": m_stem}, x)
    assert rec2.after["bn"] == c


def test_torchvision_resnet50_physical_equals_masked():
    import torchvision  # a dependency of the package (timm needs it): a failing import is a failure, not a skip

    model = torchvision.models.resnet50(num_classes=10).eval()
    _perturb_bn(model)
    x = torch.randn(2, 3, 32, 32)
    bns = [n for n, m in model.named_modules() if isinstance(m, _BN)]
    narrow, _ = _check_equal(model, _random_masks(model, bns, p=0.3), x)
    assert sum(p.numel() for p in narrow.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())


def test_mlp_and_flatten_into_linear():
    """Masks on Linear outputs (no BN), and conv channels flattened into a Linear (``c * H * W + pos``)."""
    mlp = create_model("lenet_12_9", num_classes=4, in_chans=1, img_size=4)
    _check_equal(mlp, _random_masks(mlp, ["fc_layers.0", "fc_layers.1"]), torch.randn(3, 1, 4, 4))
    conv = create_model("conv2", num_classes=4, in_chans=1, img_size=4)
    narrow, record = _check_equal(conv, _random_masks(conv, ["convs.2"]), torch.randn(3, 1, 4, 4))
    kept = record.after["convs.2"]
    assert dict(narrow.named_modules())["fc_layers.0"].in_features == kept * 2 * 2


def test_mlp_bn_all_channels_masked_keeps_one_zero_channel():
    model = create_model("mlp_bn_6", num_classes=3, in_chans=1, img_size=2).eval()
    masks = {"bns.0": torch.zeros(6, dtype=torch.bool)}
    narrow, record = _check_equal(model, masks, torch.randn(2, 1, 2, 2))
    assert record.after["bns.0"] == 1


def test_channel_param_masks_and_mask_channels():
    model = create_model("mlp_bn_6", num_classes=3, in_chans=1, img_size=2)
    mask = torch.tensor([1, 0, 1, 1, 0, 1], dtype=torch.bool)
    pm = channel_param_masks(model, {"bns.0": mask, "fc_layers.0": mask})
    assert set(pm) == {"bns.0.weight", "bns.0.bias", "fc_layers.0.weight", "fc_layers.0.bias"}
    assert pm["fc_layers.0.weight"].shape == (6, 1)
    mask_channels_(model, {"bns.0.weight": mask})  # a parameter-name key works too
    assert torch.equal(model.bns[0].weight[~mask], torch.zeros(2))
    assert torch.equal(model.bns[0].bias[~mask], torch.zeros(2))


def test_gateable_layers():
    res = create_model("cifar_resnet_8", num_classes=5, in_chans=3, img_size=8)
    names = analyse(res, torch.randn(1, 3, 8, 8)).gateable()
    assert names == ["blocks.0.bn1", "blocks.1.bn1", "blocks.2.bn1"]  # not the residual stream, not fc
    mlp = create_model("mlp_bn_8_4", num_classes=3, in_chans=1, img_size=2)
    assert analyse(mlp, torch.randn(1, 1, 2, 2)).gateable() == ["bns.0", "bns.1"]


def test_unknown_ops_pin_channels():
    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(2, 4, 1), nn.Conv2d(2, 4, 1)
            self.head = nn.Conv2d(8, 3, 1)

        def forward(self, x):
            return self.head(torch.cat([self.a(x), self.b(x)], dim=1))

    model = Cat()
    masks = {"a": torch.tensor([True, False, False, True])}
    narrow, record = _check_equal(model, masks, torch.randn(2, 2, 3, 3))
    assert record.after["a"] == 4  # cat is not understood: its inputs keep every channel


def test_flops_shrink():
    model = create_model("mlp_bn_8", num_classes=3, in_chans=1, img_size=2)
    x = torch.randn(1, 1, 2, 2)
    assert count_flops(model, x) == 2 * (4 * 8 + 8 * 3)
    narrow, _ = prune_channels(model, {"bns.0": torch.arange(8) < 3}, x)
    assert count_flops(narrow, x) == 2 * (4 * 3 + 3 * 3)


def test_bad_masks():
    model = create_model("mlp_bn_6", num_classes=3, in_chans=1, img_size=2)
    x = torch.randn(1, 1, 2, 2)
    with pytest.raises(ChannelPruneError, match="not a module"):
        prune_channels(model, {"nope": torch.ones(6, dtype=torch.bool)}, x)
    with pytest.raises(ChannelPruneError, match=r"needs a \[6\] mask"):
        prune_channels(model, {"bns.0": torch.ones(5, dtype=torch.bool)}, x)
    with pytest.raises(ChannelPruneError, match="channel masks go on"):
        mask_channels_(model, {"bns": torch.ones(6, dtype=torch.bool)})
