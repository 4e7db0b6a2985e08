"""prunable_parameters: which weights pruning may touch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lth_kernels.tickets import canonical_name, prunable_parameters
from tests.tickets._models import CNN, MLP, FakeMaskedLinear


def test_linear_and_conv_weights_only():
    names = list(prunable_parameters(CNN()))
    assert names == ["conv1.weight", "conv2.weight", "fc.weight"]  # no bias, no BN
    params = prunable_parameters(CNN())
    assert all(isinstance(p, nn.Parameter) for p in params.values())


def test_default_exclude_from_model():
    model = MLP()
    assert list(prunable_parameters(model)) == ["layers.0.weight", "layers.1.weight"]
    assert list(prunable_parameters(model, use_default_exclude=False)) == ["layers.0.weight", "layers.1.weight",
                                                                           "fc.weight"]


def test_user_globs_param_and_module_names():
    model = MLP()
    assert list(prunable_parameters(model, exclude=("layers.0.*",))) == ["layers.1.weight"]
    assert list(prunable_parameters(model, exclude="layers.1")) == ["layers.0.weight"]  # a bare string is one glob
    assert list(prunable_parameters(model, exclude=("no_such_layer*",))) == ["layers.0.weight", "layers.1.weight"]


def test_masked_subclass_counts():
    model = nn.Sequential(FakeMaskedLinear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    assert list(prunable_parameters(model)) == ["0.weight", "2.weight"]


def test_wrappers_give_canonical_names():
    model = MLP()
    assert list(prunable_parameters(nn.DataParallel(model))) == ["layers.0.weight", "layers.1.weight"]
    assert list(prunable_parameters(torch.compile(model))) == ["layers.0.weight", "layers.1.weight"]
    assert canonical_name("module._orig_mod.a.b.weight") == "a.b.weight"
    assert canonical_name("enc._orig_mod.fc.weight") == "enc.fc.weight"


def test_errors():
    with pytest.raises(ValueError, match="excludes every prunable parameter"):
        prunable_parameters(MLP(), exclude=("layers.*",))
    with pytest.raises(ValueError, match="no prunable parameter"):
        prunable_parameters(nn.Sequential(nn.ReLU(), nn.BatchNorm1d(3)))
    with pytest.raises(TypeError, match="torch.nn.Module"):
        prunable_parameters({"w": torch.ones(2)})
    with pytest.raises(ValueError, match="non-empty glob"):
        prunable_parameters(MLP(), exclude=("",))
