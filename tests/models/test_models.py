"""Model registry: every model builds and runs on small inputs, open_lth parameter counts, pruning defaults,
initialisation, error messages and local weight loading."""

from __future__ import annotations

import fnmatch
import math

import pytest
import torch
from torch import nn

from lth_kernels.models import create_model, model_names, prunable_parameter_names, register_model

# One concrete name (and the input it runs on) for every registered name or pattern, kept tiny.
# (name, kwargs, in_chans, img_size)
CASES = {
    "lenet_<n>[_<n>...]": [("lenet_300_100", {}, 1, 8), ("mnist_lenet_20", {}, 3, 5)],
    "mlp_<n>[_<n>...]": [("mlp_128_64", {}, 1, 8)],
    "mlp_bn_<n>[_<n>...]": [("mlp_bn_32_16", {}, 1, 8)],
    "lenet5": [("lenet5", {}, 1, 12)],
    "conv2": [("conv2", {}, 1, 8)],
    "conv4": [("conv4", {}, 1, 8)],
    "conv6": [("conv6", {}, 1, 8)],
    "cifar_resnet_<6n+2>[_<width>]": [("cifar_resnet_20", {}, 1, 8), ("cifar_resnet_8_4", {}, 3, (8, 12))],
    "cifar_vgg_<11|13|16|19>": [("cifar_vgg_11", {}, 3, 16)],
    "jackpot_resnet_<6n+2>": [("jackpot_resnet_8", {}, 1, 8)],
    "jackpot_vgg_<11|13|16|19>": [("jackpot_vgg_11", {}, 3, 16)],
    "vit_tiny": [("vit_tiny", {"depth": 1}, 1, 8)],
    "vit_small": [("vit_small", {"depth": 1}, 3, 16)],
    "timm:<name>": [("timm:resnet18", {}, 1, 8), ("timm:vit_tiny_patch16_224", {"depth": 1}, 3, 32)],
}
ALL_CASES = [case for cases in CASES.values() for case in cases]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_cases_cover_every_registered_model():
    assert sorted(CASES) == sorted(model_names())


@pytest.mark.parametrize("name,kwargs,in_chans,img_size", ALL_CASES, ids=[c[0] for c in ALL_CASES])
def test_builds_and_runs(name, kwargs, in_chans, img_size):
    model = create_model(name, num_classes=7, in_chans=in_chans, img_size=img_size, **kwargs)
    hw = (img_size, img_size) if isinstance(img_size, int) else img_size
    x = torch.randn(3, in_chans, *hw)
    out = model(x)
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert model.model_name == name
    params = dict(model.named_parameters())
    # Every default exclusion names at least one existing parameter, and pruning sees conv/linear weights only.
    for glob in model.default_prune_exclude:
        assert any(fnmatch.fnmatchcase(p, glob) for p in params), (name, glob)
    prunable = prunable_parameter_names(model)
    assert prunable and all(p.endswith("weight") and params[p].dim() >= 2 for p in prunable)
    assert not any(fnmatch.fnmatchcase(p, g) for p in prunable for g in model.default_prune_exclude)
    every = prunable_parameter_names(model, exclude=())
    assert prunable == [p for p in every if not any(fnmatch.fnmatchcase(p, g) for g in model.default_prune_exclude)]


@pytest.mark.parametrize("name,in_chans,img_size,expected", [
    ("lenet_300_100", 1, 28, 266_610),
    ("mnist_lenet_300_100", 1, 28, 266_610),
    ("lenet5", 1, 28, 61_706),
    ("conv2", 3, 32, 4_301_642),
    ("conv4", 3, 32, 2_425_930),
    ("conv6", 3, 32, 2_262_602),
    ("cifar_resnet_20", 3, 32, 272_474),
    ("cifar_resnet_56", 3, 32, 855_770),
    ("cifar_vgg_16", 3, 32, 14_728_266),
    ("jackpot_resnet_32", 3, 32, 1_849_898),
    ("jackpot_vgg_19", 3, 32, 20_035_018),
])
def test_parameter_counts(name, in_chans, img_size, expected):
    assert n_params(create_model(name, num_classes=10, in_chans=in_chans, img_size=img_size)) == expected


def test_cifar_resnet_structure_and_width():
    model = create_model("cifar_resnet_20", num_classes=10, in_chans=3, img_size=32)
    names = dict(model.named_parameters())
    # open_lth's names: three segments of three blocks; shortcuts only where the segment starts.
    expected = {"conv.weight", "bn.weight", "blocks.8.conv2.weight", "blocks.3.shortcut.0.weight", "fc.weight"}
    assert expected <= set(names)
    assert "blocks.1.shortcut.0.weight" not in names and "blocks.6.shortcut.0.weight" in names
    assert names["blocks.0.conv1.weight"].shape == (16, 16, 3, 3)
    assert names["blocks.8.conv2.weight"].shape == (64, 64, 3, 3)
    assert model.default_prune_exclude == ()
    wide = create_model("cifar_resnet_20_64", num_classes=10, in_chans=3, img_size=32)
    assert dict(wide.named_parameters())["blocks.8.conv2.weight"].shape == (256, 256, 3, 3)
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))


def test_vgg_and_lenet_exclude_output_layer():
    for name, size in (("cifar_vgg_16", 32), ("lenet_300_100", 28), ("conv4", 32), ("lenet5", 28)):
        model = create_model(name, num_classes=10, in_chans=3, img_size=size)
        assert model.default_prune_exclude == ("fc.weight",)
        assert "fc.weight" not in prunable_parameter_names(model)
    vgg = create_model("cifar_vgg_16", num_classes=10, in_chans=3, img_size=32)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 4
    assert len(prunable_parameter_names(vgg)) == 13  # 13 convs; the output layer is excluded


def test_vit_defaults():
    vit = create_model("vit_tiny", num_classes=10, in_chans=3, img_size=32)
    assert vit.patch_embed.patch_size == (4, 4) and vit.embed_dim == 192 and len(vit.blocks) == 12
    assert set(vit.default_prune_exclude) == {"patch_embed.*weight", "head.weight"}
    prunable = prunable_parameter_names(vit)
    assert "head.weight" not in prunable and "patch_embed.proj.weight" not in prunable
    assert "blocks.0.attn.qkv.weight" in prunable
    small = create_model("vit_small", num_classes=10, in_chans=3, img_size=224, depth=1)
    assert small.patch_embed.patch_size == (16, 16) and small.embed_dim == 384
    custom = create_model("vit_tiny", num_classes=10, in_chans=1, img_size=28, patch_size=7, depth=2)
    assert custom.patch_embed.num_patches == 16 and len(custom.blocks) == 2


def test_timm_models():
    resnet = create_model("timm:resnet18", num_classes=10, in_chans=3, img_size=32)
    assert resnet.fc.out_features == 10 and resnet.default_prune_exclude == ()
    vit = create_model("timm:vit_tiny_patch16_224", num_classes=10, in_chans=3, img_size=32)
    assert vit.patch_embed.img_size == (32, 32)
    assert set(vit.default_prune_exclude) == {"patch_embed.*weight", "head.weight"}
    with pytest.raises(ValueError, match="never downloaded"):
        create_model("timm:resnet18", num_classes=10, in_chans=3, img_size=32, pretrained=True)
    with pytest.raises(ValueError, match="timm has no model 'no_such_net'"):
        create_model("timm:no_such_net", num_classes=10, in_chans=3, img_size=32)


@torch.no_grad()
def test_timm_resnet_with_open_lth_init():
    """timm zero-initialises the last BN scale of every residual block; open_lth's init draws every BN scale from
    U[0, 1) and every conv from Kaiming-normal (std sqrt(2 / fan_in))."""
    torch.manual_seed(0)
    timm_init = create_model("timm:resnet18", num_classes=10, in_chans=3, img_size=32)
    assert float(timm_init.layer1[0].bn2.weight.abs().max()) == 0.0
    model = create_model("timm:resnet18", num_classes=10, in_chans=3, img_size=32, init="kaiming_normal")
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gammas = torch.cat([m.weight.flatten() for m in bns])
    assert float(gammas.min()) >= 0.0 and float(gammas.max()) < 1.0 and 0.4 < float(gammas.mean()) < 0.6
    assert all(float(m.bias.abs().max()) == 0.0 for m in bns)
    conv = model.layer3[0].conv1.weight
    assert abs(float(conv.std()) / math.sqrt(2 / conv[0].numel()) - 1) < 0.05
    with pytest.raises(ValueError, match=r"^init: unknown initialiser 'xavier'; valid: timm, kaiming_normal"):
        create_model("timm:resnet18", num_classes=10, in_chans=3, img_size=32, init="xavier")


@torch.no_grad()
def test_open_lth_initialisation():
    torch.manual_seed(1)
    model = create_model("cifar_resnet_56", num_classes=10, in_chans=3, img_size=32)
    w = model.blocks[20].conv2.weight
    assert abs(w.std().item() - math.sqrt(2.0 / (64 * 9))) < 0.05 * math.sqrt(2.0 / (64 * 9))  # kaiming normal
    bn = model.blocks[20].bn1
    assert bn.weight.min() >= 0 and bn.weight.max() < 1 and bn.weight.std() > 0.1 and (bn.bias == 0).all()
    fixed = create_model("cifar_resnet_8", num_classes=10, in_chans=3, img_size=32, batchnorm_init="fixed")
    assert (fixed.bn.weight == 1).all()
    binary = create_model("lenet_300_100", num_classes=10, in_chans=1, img_size=28, init="binary")
    assert binary.fc_layers[0].weight.abs().unique().numel() == 1


def test_errors_are_one_line_and_name_the_problem():
    with pytest.raises(ValueError, match=r"unknown model 'resnet20'; valid: .*cifar_resnet_<6n\+2>") as e:
        create_model("resnet20", num_classes=10, in_chans=3, img_size=32)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in model_names())
    with pytest.raises(ValueError, match="6n\\+2.*got 21"):
        create_model("cifar_resnet_21", num_classes=10, in_chans=3, img_size=32)
    with pytest.raises(ValueError, match=r"depth in \[11, 13, 16, 19\], got 12"):
        create_model("cifar_vgg_12", num_classes=10, in_chans=3, img_size=32)
    with pytest.raises(ValueError, match="img_size: cifar_vgg_16 needs inputs of at least 16x16.*got 8x8"):
        create_model("cifar_vgg_16", num_classes=10, in_chans=1, img_size=8)
    with pytest.raises(ValueError, match="img_size: lenet5 needs inputs of at least 12x12.*got 8x8"):
        create_model("lenet5", num_classes=10, in_chans=1, img_size=8)
    with pytest.raises(ValueError, match="img_size: conv6 needs .* 8x8.*got 4x4"):
        create_model("conv6", num_classes=10, in_chans=1, img_size=4)
    with pytest.raises(ValueError, match="patch_size: 3 does not divide img_size 8x8"):
        create_model("vit_tiny", num_classes=10, in_chans=1, img_size=8, patch_size=3)
    with pytest.raises(ValueError, match="widht: model 'conv2' takes no such argument; it takes: init"):
        create_model("conv2", num_classes=10, in_chans=1, img_size=8, widht=3)
    with pytest.raises(ValueError, match="init: unknown initialiser 'xavier'"):
        create_model("conv2", num_classes=10, in_chans=1, img_size=8, init="xavier")
    with pytest.raises(ValueError, match="num_classes: expected a positive int, got 0"):
        create_model("conv2", num_classes=0, in_chans=1, img_size=8)
    with pytest.raises(ValueError, match=r"img_size: expected a positive int or \(h, w\)"):
        create_model("conv2", num_classes=10, in_chans=1, img_size=(8, 8, 8))
    with pytest.raises(ValueError, match="already registered"):
        register_model("conv2")(lambda *a, **k: None)


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_checkpoint_path_loading(tmp_path):
    from safetensors.torch import save_file

    kw = dict(num_classes=10, in_chans=1, img_size=8)
    source = create_model("cifar_resnet_8", **kw)
    with torch.no_grad():
        source.bn.running_mean.normal_()  # buffers travel too
    state = source.state_dict()
    # A DDP + torch.compile state dict nested in a training checkpoint.
    wrapped = {"epoch": 3, "state_dict": {f"module._orig_mod.{k}": v for k, v in state.items()}}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    torch.save({f"_orig_mod.{k}": v for k, v in state.items()}, tmp_path / "plain.pt")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    for fname in ("ckpt.pth", "plain.pt", "w.safetensors"):
        loaded = create_model("cifar_resnet_8", checkpoint_path=tmp_path / fname, **kw)
        assert _same_weights(source, loaded), fname
    assert not _same_weights(source, create_model("cifar_resnet_8", **kw))
    with pytest.raises(ValueError, match=r"does not fit model cifar_resnet_14: missing blocks\.3\..*\(\+\d+ more\); "
                       r"unexpected blocks\.1\.shortcut.*; shape \(file vs model\) "
                       r"blocks\.1\.conv1\.weight \(32, 16, 3, 3\) vs \(16, 16, 3, 3\)"):
        create_model("cifar_resnet_14", checkpoint_path=tmp_path / "plain.pt", **kw)
    with pytest.raises(FileNotFoundError, match="checkpoint_path: no file at .*missing.pt"):
        create_model("cifar_resnet_8", checkpoint_path=tmp_path / "missing.pt", **kw)
    # A pickled non-tensor object is refused by weights_only loading.
    torch.save({"model": source}, tmp_path / "module.pt")
    with pytest.raises(Exception, match="(?i)weights_only|unsupported global"):
        create_model("cifar_resnet_8", checkpoint_path=tmp_path / "module.pt", **kw)


def test_timm_checkpoint_roundtrip(tmp_path):
    kw = dict(num_classes=5, in_chans=3, img_size=16, depth=1)
    source = create_model("vit_tiny", **kw)
    torch.save(source.state_dict(), tmp_path / "vit.pt")
    assert _same_weights(source, create_model("vit_tiny", checkpoint_path=tmp_path / "vit.pt", **kw))
