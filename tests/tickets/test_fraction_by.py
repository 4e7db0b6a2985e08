"""prune(fraction_by=...): per layer-group fractions (the LTH paper's Conv rates), checked against counts."""

from __future__ import annotations

import math

import pytest
import torch

from lth_kernels.tickets import Ticket, prunable_parameters, prune
from lth_kernels.tickets.strategies._prune import fractions_by_layer
from tests.tickets._models import MLP


def _mlp():
    torch.manual_seed(0)
    return MLP(d_in=20, hidden=(30, 16), d_out=5)


def _kept(t, name):
    return int(t[name].sum())


def test_each_group_loses_its_own_fraction_of_each_layer():
    model = _mlp()
    rates = {"layers.*": 0.2, "fc.weight": 0.1, "layers.1.weight": 0.5}
    t = prune(model, "magnitude", None, fraction_by=rates)
    # fc.weight is excluded by the model's defaults, but a fraction naming it prunes it
    assert _kept(t, "fc.weight") == 80 - math.ceil(0.1 * 80)
    assert _kept(t, "layers.0.weight") == 600 - 120  # layers.* : 20 %
    assert _kept(t, "layers.1.weight") == 480 - 240  # the exact name beats the glob
    # within each layer the smallest magnitudes go (layerwise), compared with an independent per-layer sort
    for name, f in (("layers.0.weight", 0.2), ("fc.weight", 0.1)):
        w = dict(model.named_parameters())[name].detach().abs().flatten()
        n = math.ceil(round(f * w.numel(), 9))
        expect = w > w.sort().values[n - 1]
        assert torch.equal(t[name].flatten(), expect)
    # a second level takes the fraction of what remains
    t2 = prune(model, "magnitude", None, current=t, fraction_by=rates)
    assert _kept(t2, "fc.weight") == 72 - math.ceil(0.1 * 72) and _kept(t2, "layers.0.weight") == 480 - 96
    assert t2.metadata["fraction_by"] == '{"fc.weight": 0.1, "layers.*": 0.2, "layers.1.weight": 0.5}'


def test_unmatched_layers_use_fraction_and_scope():
    model = _mlp()
    t = prune(model, "magnitude", 0.5, fraction_by={"layers.0.weight": 0.1})
    assert _kept(t, "layers.0.weight") == 540
    assert _kept(t, "layers.1.weight") == 240  # 50 % of the only other prunable layer (global over one layer)
    assert _kept(t, "fc.weight") == 80  # not named: the model's default exclusion holds
    with pytest.raises(ValueError, match=r"^fraction: needed for the layers no fraction_by glob matches "
                                         r"\(layers.1.weight\)"):
        prune(model, "magnitude", None, fraction_by={"layers.0.weight": 0.1})


def test_user_exclusion_beats_a_fraction_and_include_only_lifts_defaults():
    model = _mlp()
    t = prune(model, "magnitude", 0.2, exclude=("fc.weight",), fraction_by={"fc.weight": 0.1})
    assert _kept(t, "fc.weight") == 80
    assert list(prunable_parameters(model, include=("fc*",))) == ["layers.0.weight", "layers.1.weight", "fc.weight"]
    assert "fc.weight" not in prunable_parameters(model, ("fc.weight",), include=("fc*",))


def test_ambiguous_and_bad_fractions_are_one_line_errors():
    names = ["a.weight", "b.weight"]
    assert fractions_by_layer(names, {"a*": 0.1, "a.*": 0.3}) == {"a.weight": 0.3}  # more literal characters win
    assert fractions_by_layer(names, {"*.weight": 0.2, "a.weight*": 0.1}) == {"a.weight": 0.1, "b.weight": 0.2}
    assert fractions_by_layer(names, {"?.weight": 0.2, "*.weight": 0.2}) == {"a.weight": 0.2, "b.weight": 0.2}
    with pytest.raises(ValueError, match=r"matches '\*a\.\*' and 'a\.\*\?' equally well"):
        fractions_by_layer(names, {"*a.*": 0.1, "a.*?": 0.3})
    with pytest.raises(ValueError, match=r"^fraction_by\['a\*'\]: expected a number in \(0, 1\)"):
        fractions_by_layer(names, {"a*": 1.5})
    model = _mlp()
    with pytest.raises(ValueError, match="^fraction_by: per-layer fractions need a one-shot strategy"):
        prune(model, "magnitude", None, structure="2:4", fraction_by={"layers.*": 0.2})
    with pytest.raises(ValueError, match="^fraction_by: per-layer fractions need a one-shot strategy"):
        prune(model, "synflow", 0.2, fraction_by={"layers.*": 0.2}, data=[(torch.ones(1, 20), None)])


def test_random_strategy_honours_the_group_counts():
    model = _mlp()
    g = torch.Generator().manual_seed(1)
    t = prune(model, "random", None, generator=g, fraction_by={"*": 0.25})
    assert isinstance(t, Ticket)
    assert [_kept(t, n) for n in ("layers.0.weight", "layers.1.weight", "fc.weight")] == [450, 360, 60]


def test_fractions_by_layer_matching_precedence_and_errors():
    # a glob matches the parameter's name or its module's (the name without its last part); an exact name or
    # module wins, else the glob with the most literal characters; equal ones with different fractions are refused
    names = ["blocks.0.attn.qkv.weight", "blocks.0.mlp.fc1.weight", "blocks.1.mlp.fc1.weight", "head.weight", "bias"]
    got = fractions_by_layer(names, {"blocks.0.attn.qkv": 0.5, "blocks.*": 0.1, "blocks.1.*": 0.3, "head": 0.2})
    assert got == {"blocks.0.attn.qkv.weight": 0.5, "blocks.0.mlp.fc1.weight": 0.1, "blocks.1.mlp.fc1.weight": 0.3,
                   "head.weight": 0.2}
    assert fractions_by_layer(["bias", "x.bias"], {"bias": 0.4}) == {"bias": 0.4}  # a glob is a whole name
    assert fractions_by_layer(names, {"blocks.0.attn": 0.5}) == {}  # not a module of any name: no match
    with pytest.raises(ValueError, match=r"^fraction_by: 'blocks.0.mlp.fc1.weight' matches 'blocks.0.\*' and "
                                         r"'\*0.mlp.fc1' equally well"):
        fractions_by_layer(names, {"blocks.0.*": 0.1, "*0.mlp.fc1": 0.2})
    assert fractions_by_layer(names, {"blocks.0.*": 0.1, "*0.mlp.fc1": 0.1})["blocks.0.mlp.fc1.weight"] == 0.1
    for bad in ("", 3):
        with pytest.raises(ValueError, match=rf"^fraction_by: every key must be a non-empty glob, got {bad!r}$"):
            fractions_by_layer(names, {bad: 0.1})
    with pytest.raises(ValueError, match=r"^fraction_by\['head'\]: expected a number in \(0, 1\)"):
        fractions_by_layer(names, {"head": None})
