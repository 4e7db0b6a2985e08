"""sparsify / densify / masked_modules / current_masks on timm ViT and ResNet, plain and wrapped models."""

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn import (
    MaskedConv2d,
    MaskedLinear,
    canonical_name,
    current_masks,
    densify,
    masked_modules,
    sparsify,
)


def _vit():
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, depth=2,
                             num_classes=10)


def _resnet():
    return timm.create_model("resnet18", pretrained=False, num_classes=10)


@pytest.fixture(scope="module")
def resnet():
    return _resnet()


def _layers(model, types=(nn.Linear, nn.Conv2d)):
    return {n: m for n, m in model.named_modules() if isinstance(m, types)}


def _random_ticket(model):
    return {f"{n}.weight": torch.rand(m.weight.shape) > 0.6 for n, m in _layers(model).items()}


@pytest.mark.parametrize("make,x_shape", [(_vit, (2, 3, 32, 32)), (_resnet, (2, 3, 32, 32))], ids=["vit", "resnet18"])
def test_timm_round_trip(make, x_shape):
    model = make().eval()
    x = torch.randn(x_shape)
    y_dense = model(x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    n_layers = len(_layers(model))

    assert sparsify(model) is model
    assert len(masked_modules(model)) == n_layers
    assert all(isinstance(m, MaskedLinear | MaskedConv2d) for m in _layers(model).values())
    torch.testing.assert_close(model(x), y_dense, rtol=0, atol=0)  # all-ones masks: the same function
    assert list(model.state_dict()) == list(state)

    ticket = _random_ticket(model)
    sparsify(model, ticket)
    masks = current_masks(model)
    assert masks.keys() == ticket.keys() and all(torch.equal(masks[k], ticket[k]) for k in ticket)
    sd = model.state_dict()
    for name, mask in ticket.items():
        assert torch.all(sd[name][~mask] == 0) and torch.equal(sd[name][mask], state[name][mask])
    y_masked = model(x)

    fresh = make().eval()  # the masked model's checkpoint loads into the unmodified timm model
    fresh.load_state_dict(sd)
    torch.testing.assert_close(fresh(x), y_masked)

    F.cross_entropy(model(x), torch.tensor([1, 2])).backward()  # eval mode: BN statistics stay as they are
    for name, layer in masked_modules(model).items():
        assert torch.all(layer.weight.grad[~layer.mask] == 0), name

    assert densify(model) is model
    assert not masked_modules(model) and len(_layers(model)) == n_layers
    assert all(type(m) in (nn.Linear, nn.Conv2d) for m in _layers(model).values())
    torch.testing.assert_close(model(x), y_masked)  # weights kept their zeros
    assert list(model.state_dict()) == list(state)


def test_ticket_alone_selects_its_layers_and_include_exclude():
    model = _resnet()
    ticket = {"layer1.0.conv1.weight": torch.rand(64, 64, 3, 3) > 0.5, "fc.weight": torch.rand(10, 512) > 0.5}
    sparsify(model, ticket)
    assert set(masked_modules(model)) == {"layer1.0.conv1", "fc"}

    model = _resnet()
    sparsify(model, exclude=["conv1", "fc.weight", "*.downsample.*"])
    names = set(masked_modules(model))
    assert "conv1" not in names and "fc" not in names and not any("downsample" in n for n in names)
    assert "layer1.0.conv1" in names and "layer4.1.conv2" in names

    model = _resnet()
    sparsify(model, include="layer2.*", exclude="*conv2")
    assert set(masked_modules(model)) == {"layer2.0.conv1", "layer2.0.downsample.0", "layer2.1.conv1"}

    model = _vit()
    sparsify(model, include=["blocks.*.mlp.*"], ticket={"blocks.1.mlp.fc2.weight": torch.zeros(192, 768).bool()})
    assert set(masked_modules(model)) == {f"blocks.{i}.mlp.fc{j}" for i in (0, 1) for j in (1, 2)}
    assert torch.all(model.blocks[1].mlp.fc2.weight == 0) and model.blocks[0].mlp.fc2.mask.all()


def test_wrapper_prefixes_and_already_masked_layers():
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    assert canonical_name("module._orig_mod.0.weight") == "0.weight"
    assert canonical_name("_orig_mod.module.blocks._orig_mod.fc.weight") == "blocks.fc.weight"
    m0, m2 = torch.rand(6, 4) > 0.5, torch.rand(2, 6) > 0.5
    sparsify(model, {"module.0.weight": m0, "_orig_mod.2.weight": m2})
    assert torch.equal(model[0].mask, m0) and torch.equal(model[2].mask, m2)
    layer0 = model[0]
    version = layer0.mask_version
    sparsify(model, {"0.weight": ~m0})  # already masked: kept, takes the new mask
    assert model[0] is layer0 and layer0.mask_version == version + 1 and torch.equal(layer0.mask, ~m0)

    compiled = torch.compile(nn.Sequential(nn.Linear(3, 3)))  # lazy: nothing is compiled here
    sparsify(compiled, {"_orig_mod.0.weight": torch.eye(3, dtype=torch.bool)})
    assert set(masked_modules(compiled)) == {"0"} and set(current_masks(compiled)) == {"0.weight"}


def test_what_is_not_swapped():
    class StdConv(nn.Conv2d):  # its own forward: masking it as a plain conv would change the function
        def forward(self, x):
            w = (self.weight - self.weight.mean((1, 2, 3), keepdim=True)) / (self.weight.std((1, 2, 3), keepdim=True))
            return self._conv_forward(x, w, self.bias)

    class PlainSub(nn.Linear):  # keeps nn.Linear.forward: the same function, so it is swapped
        pass

    model = nn.Module()
    model.std, model.sub = StdConv(2, 2, 1), PlainSub(3, 3)
    model.attn = nn.MultiheadAttention(8, 2)  # reads out_proj.weight directly, never calls its forward
    model.shared = nn.Linear(5, 5)
    model.alias = model.shared
    sparsify(model)
    assert type(model.std) is StdConv and type(model.attn.out_proj) is not MaskedLinear
    assert isinstance(model.sub, MaskedLinear)
    assert isinstance(model.shared, MaskedLinear) and model.alias is model.shared  # one layer, one masked layer
    with pytest.raises(ValueError, match=r"^ticket: 'std.weight' is not the weight of a selected"):
        sparsify(model, {"std.weight": torch.ones(2, 2, 1, 1, dtype=torch.bool)})

    root = sparsify(nn.Linear(3, 2), {"weight": torch.zeros(2, 3, dtype=torch.bool)})  # the model is the layer
    assert isinstance(root, MaskedLinear) and torch.all(root.weight == 0)
    assert set(current_masks(root)) == {"weight"}
    assert type(densify(root)) is nn.Linear


@pytest.mark.parametrize(
    "ticket,kwargs,err,match",
    [
        ({"fc.weight": torch.ones(512, 10, dtype=torch.bool)}, {}, ValueError,
         r"^ticket\['fc.weight'\]: expected shape \(10, 512\), got \(512, 10\)$"),
        ({"fc.weight": torch.ones(10, 512)}, {}, TypeError,
         r"^ticket\['fc.weight'\]: expected a torch.bool tensor, got torch.float32$"),
        ({"fc.weight": [[True]]}, {}, TypeError, r"^ticket\['fc.weight'\]: expected a torch.bool tensor, got list$"),
        ({"nope.weight": torch.ones(1, dtype=torch.bool)}, {}, ValueError,
         r"^ticket: 'nope.weight' names no parameter of the model \(ResNet\)$"),
        ({"fc.bias": torch.ones(10, dtype=torch.bool)}, {}, ValueError, r"^ticket: 'fc.bias' is not the weight"),
        ({"bn1.weight": torch.ones(64, dtype=torch.bool)}, {}, ValueError, r"^ticket: 'bn1.weight' is not the weight"),
        ({"fc.weight": torch.ones(10, 512, dtype=torch.bool)}, {"exclude": "fc"}, ValueError,
         r"^ticket: 'fc.weight' is not the weight of a selected"),
        ({"fc.weight": torch.ones(10, 512, dtype=torch.bool), "module.fc.weight": torch.ones(10, 512).bool()}, {},
         ValueError, r"^ticket: 'module.fc.weight' names the parameter 'fc.weight' twice"),
        ([("fc.weight", torch.ones(10, 512, dtype=torch.bool))], {}, TypeError, r"^ticket: expected a mapping"),
        (None, {"include": 3}, TypeError, r"^include: expected a glob pattern or a list of them, got 3$"),
        (None, {"exclude": ["fc", 1]}, TypeError, r"^exclude: expected a glob pattern"),
    ],
)
def test_bad_input_leaves_model_untouched(ticket, kwargs, err, match, resnet):
    model = resnet
    with pytest.raises(err, match=match):
        sparsify(model, ticket, **kwargs)
    assert not masked_modules(model)
