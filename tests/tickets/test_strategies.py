"""prune(): magnitude and random strategies, structures, the open_lth counting rule, bad inputs, registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lth_kernels.tickets import (
    Ticket,
    get_strategy,
    prunable_parameters,
    prune,
    register_strategy,
    shuffle,
    strategy_names,
)
from lth_kernels.tickets.strategies import Strategy
from lth_kernels.tickets.strategies.base import _REGISTRY
from tests.tickets._models import CNN, MLP, FakeMaskedLinear


def _linear(values) -> nn.Linear:
    values = torch.as_tensor(values, dtype=torch.float32)
    layer = nn.Linear(values.shape[1], values.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(values)
    return layer


def _kept(t: Ticket, names) -> int:
    return sum(int(t[n].sum()) for n in names)


# --------------------------------------------------------------------------------------------- magnitude


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_magnitude_five_levels(scope):
    torch.manual_seed(0)
    model = MLP(d_in=40, hidden=(50, 30), d_out=7)
    prunable = list(prunable_parameters(model))
    sizes = {n: p.numel() for n, p in prunable_parameters(model).items()}
    expected = dict(sizes)  # per layer for layerwise, summed for global
    total0 = sum(sizes.values())
    remaining_global = total0
    ticket = None
    for level in range(1, 6):
        ticket = prune(model, "magnitude", 0.2, current=ticket, scope=scope)
        assert ticket.metadata["level"] == str(level)
        if scope == "layerwise":
            for n in prunable:
                expected[n] -= math.ceil(0.2 * expected[n])
                assert int(ticket[n].sum()) == expected[n]
        remaining_global -= math.ceil(0.2 * remaining_global)
        kept = _kept(ticket, prunable)
        if scope == "global":
            assert kept == remaining_global
        assert abs(kept / total0 - 0.8**level) < 0.01
        assert bool(ticket["fc.weight"].all())  # default-excluded output layer untouched
        # "training": new weights; the masked ones stay zero as in a masked run
        with torch.no_grad():
            for n, p in prunable_parameters(model, use_default_exclude=False).items():
                p.copy_(torch.randn_like(p) * ticket[n])


def test_magnitude_keeps_largest_global_vs_layerwise():
    model = nn.Sequential(_linear([[1.0, 2.0, 3.0, 4.0]]), _linear([[10.0], [20.0], [30.0], [40.0]]))
    g = prune(model, "magnitude", 0.5)
    assert g["0.weight"].tolist() == [[False] * 4] and g["1.weight"].flatten().tolist() == [True] * 4
    lw = prune(model, "magnitude", 0.5, scope="layerwise")
    assert lw["0.weight"].tolist() == [[False, False, True, True]]
    assert lw["1.weight"].flatten().tolist() == [False, False, True, True]
    # the sign does not matter
    neg = prune(nn.Sequential(_linear([[-4.0, 1.0, -3.0, 2.0]])), "magnitude", 0.5)
    assert neg["0.weight"].tolist() == [[True, False, True, False]]


def test_ties_and_rule():
    # open_lth: n = ceil(0.2 * 6) = 2, threshold = 2nd smallest = 1, keep iff > 1: all ties go
    model = nn.Sequential(_linear([[0.5, 1.0, 1.0, 1.0, 2.0, 3.0]]))
    t = prune(model, "magnitude", 0.2)
    assert t["0.weight"].tolist() == [[False, False, False, False, True, True]]
    # distinct scores: "exact" removes n, "open_lth" (threshold = sorted[n]) removes n + 1
    model = nn.Sequential(_linear([[float(i) for i in range(1, 11)]]))
    assert int(prune(model, "magnitude", 0.2)["0.weight"].sum()) == 8
    assert int(prune(model, "magnitude", 0.2, rule="open_lth")["0.weight"].sum()) == 7
    # fraction * remaining with float noise: 0.1 * 30 = 3.0000000000000004 removes 3, not 4
    model = nn.Sequential(_linear([[float(i) for i in range(1, 31)]]))
    assert int(prune(model, "magnitude", 0.1)["0.weight"].sum()) == 27


def test_previously_pruned_stay_pruned():
    model = nn.Sequential(_linear([[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]]))
    current = Ticket({"0.weight": torch.tensor([[1, 1, 1, 1, 1, 1, 0, 0]])})
    # weights 7 and 8 are large but pruned: they stay pruned and are not counted
    t = prune(model, "magnitude", 0.5, current=current)
    assert t["0.weight"].tolist() == [[False, False, False, True, True, True, False, False]]


def test_current_from_masked_layers_and_exclusions():
    model = MLP()
    model.layers[0] = FakeMaskedLinear(20, 30)
    pre = torch.rand(30, 20) > 0.5
    model.layers[0].set_mask(pre)
    t = prune(model, "magnitude", 0.3, exclude=("layers.1",))
    assert not bool((t["layers.0.weight"] & ~pre).any())  # from the layer's mask: pruned stays pruned
    assert int(t["layers.0.weight"].sum()) == int(pre.sum()) - math.ceil(0.3 * int(pre.sum()))
    assert bool(t["layers.1.weight"].all()) and bool(t["fc.weight"].all())  # excluded: untouched
    full = prune(MLP(), "magnitude", 0.3, use_default_exclude=False)
    assert not bool(full["fc.weight"].all())


def test_conv_model_and_metadata():
    t = prune(CNN(), "magnitude", 0.4, metadata={"source_run": "runs/x"})
    assert list(t) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert t.metadata["strategy"] == "magnitude" and t.metadata["scope"] == "global"
    assert t.metadata["structure"] == "unstructured" and t.metadata["fraction"] == "0.4"
    assert t.metadata["model"] == "CNN" and t.metadata["source_run"] == "runs/x"
    assert t.num_kept == t.num_total - math.ceil(0.4 * t.num_total)


# --------------------------------------------------------------------------------------------- random


def test_random_counts_and_seed():
    model = MLP(d_in=30, hidden=(40, 20))
    names = list(prunable_parameters(model))
    sizes = {n: p.numel() for n, p in prunable_parameters(model).items()}
    g1 = prune(model, "random", 0.3, generator=torch.Generator().manual_seed(1))
    g1b = prune(model, "random", 0.3, generator=torch.Generator().manual_seed(1))
    g2 = prune(model, "random", 0.3, generator=torch.Generator().manual_seed(2))
    total = sum(sizes.values())
    assert _kept(g1, names) == total - math.ceil(0.3 * total)
    assert g1.equal(g1b) and not g1.equal(g2)
    lw = prune(model, "random", 0.3, scope="layerwise", generator=torch.Generator().manual_seed(1))
    for n in names:
        assert int(lw[n].sum()) == sizes[n] - math.ceil(0.3 * sizes[n])
    # pruned stay pruned, and the next level removes 30 % of what is left
    nxt = prune(model, "random", 0.3, current=lw, scope="layerwise", generator=torch.Generator().manual_seed(3))
    for n in names:
        r = int(lw[n].sum())
        assert int(nxt[n].sum()) == r - math.ceil(0.3 * r) and not bool((nxt[n] & ~lw[n]).any())
    # the global shuffle does not follow layer sizes exactly, but keeps every layer populated here
    assert all(0 < int(g1[n].sum()) < sizes[n] for n in names)


# --------------------------------------------------------------------------------------------- N:M


def test_two_four_keeps_two_largest_per_group():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Conv2d(4, 6, 1))  # conv 2-D view (6, 4)
    t = prune(model, "magnitude", structure="2:4")
    assert t.metadata["structure"] == "2:4" and "fraction" not in t.metadata
    for name, p in prunable_parameters(model).items():
        w = p.detach().reshape(p.shape[0], -1, 4).abs()
        m = t[name].reshape(w.shape)
        assert bool((m.sum(-1) == 2).all())
        top2 = w.topk(2, dim=-1).indices
        assert bool(m.gather(-1, top2).all())
    assert t.density == 0.5


@pytest.mark.parametrize("k,expected", [(6, 4), (5, 3), (7, 4), (1, 1)])
def test_two_four_partial_group(k, expected):
    model = nn.Sequential(nn.Linear(k, 3))
    t = prune(model, "magnitude", 0.2, structure="2:4")  # fraction ignored
    assert t["0.weight"].sum(dim=1).tolist() == [expected] * 3


def test_n_m_general_and_current():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 4))
    t = prune(model, "magnitude", structure="1:4")
    assert bool((t["0.weight"].reshape(4, 4, 4).sum(-1) == 1).all())
    t = prune(model, "random", structure="2:8", generator=torch.Generator().manual_seed(0))
    assert bool((t["0.weight"].reshape(4, 2, 8).sum(-1) == 2).all())
    # pruned weights are not revived: a group with one alive weight keeps just that one
    cur = torch.ones(4, 16, dtype=torch.bool)
    cur[:, 0:3] = False
    t = prune(model, "magnitude", structure="2:4", current={"0.weight": cur})
    assert t["0.weight"][:, 0:4].tolist() == [[False, False, False, True]] * 4


# --------------------------------------------------------------------------------------------- errors, registry


@pytest.mark.parametrize("fraction", [0, 1, 1.0, -0.1, 1.5, float("nan"), True, "0.2", None])
def test_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction: expected a number in"):
        prune(MLP(), "magnitude", fraction)


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown pruning strategy 'magnitud'; valid: .*magnitude.*random"):
        prune(MLP(), "magnitud", 0.2)
    for bad in ("block0", "blocks", "4:2", "2:2", "structured", 16):
        with pytest.raises(ValueError, match="structure: "):
            prune(MLP(), "magnitude", 0.2, structure=bad)
    with pytest.raises(ValueError, match="scope: expected one of"):
        prune(MLP(), "magnitude", 0.2, scope="local")
    with pytest.raises(ValueError, match="rule: "):
        prune(MLP(), "magnitude", 0.2, rule="ceil")
    with pytest.raises(ValueError, match="block_norm: "):
        prune(MLP(), "magnitude", 0.2, structure="block4", block_norm="linf")
    with pytest.raises(TypeError, match="takes no option 'iterations'"):
        prune(MLP(), "magnitude", 0.2, iterations=3)
    with pytest.raises(TypeError, match="generator: expected a torch.Generator"):
        prune(MLP(), "random", 0.2, generator=3)
    with pytest.raises(ValueError, match="mask shape"):
        prune(MLP(), "magnitude", 0.2, current={"fc.weight": torch.ones(2, 2)})


def test_registry():
    assert {"magnitude", "random", "snip", "grasp", "synflow"} <= set(strategy_names())
    assert get_strategy("magnitude").name == "magnitude"

    @register_strategy("test_first_column")
    class FirstColumn(Strategy):  # keeps by column index: a strategy is one class
        def scores(self, ctx):
            return {n: -torch.arange(p.shape[1], dtype=torch.float32).expand(p.shape[0], -1).contiguous()
                    for n, p in ctx.params.items()}

    try:
        t = prune(nn.Sequential(nn.Linear(4, 2)), "test_first_column", 0.5)
        assert t["0.weight"].tolist() == [[True, True, False, False]] * 2
    finally:
        _REGISTRY.pop("test_first_column")
    with pytest.raises(ValueError, match="exists already"):
        register_strategy("magnitude")(FirstColumn)
    with pytest.raises(TypeError, match="Strategy subclass"):
        register_strategy("x")(object)


def test_shuffle_keeps_counts():
    model = MLP(d_in=30, hidden=(40, 20))
    t = prune(model, "magnitude", 0.6)
    lw = shuffle(t, scope="layerwise", generator=torch.Generator().manual_seed(0))
    assert all(int(lw[n].sum()) == int(t[n].sum()) for n in t) and not lw.equal(t)
    assert lw.metadata["strategy"] == "shuffle_layerwise" and lw.metadata["shuffled_from"] == "magnitude"
    g = shuffle(t, scope="global", generator=torch.Generator().manual_seed(0), exclude=("fc",))
    assert g.num_kept == t.num_kept and torch.equal(g["fc.weight"], t["fc.weight"])
    assert shuffle(t, scope="global", generator=torch.Generator().manual_seed(0), exclude=("fc",)).equal(g)
    with pytest.raises(ValueError, match="scope: "):
        shuffle(t, scope="even")


def test_registry_models_default_exclusions():
    from lth_kernels.models import create_model

    lenet = create_model("lenet_300_100", num_classes=10, in_chans=1, img_size=28)
    t = prune(lenet, "magnitude", 0.2)
    assert t.metadata["model"] == "lenet_300_100"
    assert bool(t["fc.weight"].all())  # open_lth: LeNet ignores its output layer
    names = list(prunable_parameters(lenet))
    assert "fc.weight" not in names and _kept(t, names) == sum(t[n].numel() for n in names) * 4 // 5
    resnet = create_model("cifar_resnet_8", num_classes=10, in_chans=3, img_size=32)
    assert set(prunable_parameters(resnet)) == set(Ticket.ones(resnet))  # ResNets exclude nothing


def test_two_four_agrees_with_the_semi_structured_op():
    # The kernel side (ops.semi_structured.mask_2to4) and the ticket side must pick the same 2 of 4 for linear
    # weights, ties included (both give ties to the lower index).
    from lth_kernels.ops.semi_structured import mask_2to4

    torch.manual_seed(0)
    layer = nn.Linear(22, 9)
    with torch.no_grad():
        layer.weight[0] = 1.0  # all ties
        layer.weight[1, :8] = torch.tensor([3.0, -3.0, 1.0, 1.0, 0.0, 2.0, 2.0, -2.0])
    t = prune(nn.Sequential(layer), "magnitude", structure="2:4")
    assert torch.equal(t["0.weight"], mask_2to4(layer.weight))


# --------------------------------------------------------------------------------------------- contracts


def _three_layers():
    # three prunable layers of different sizes (a layer's offset into the shared ranking is then never its size)
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(7, 6), nn.ReLU(), nn.Linear(6, 9), nn.ReLU(), nn.Linear(9, 5), nn.ReLU(),
                         nn.Linear(5, 3))


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.fixture
def registered():
    """Register test strategies; drop them from the registry afterwards."""
    names = []

    def reg(name, cls):
        names.append(name)
        return register_strategy(name)(cls)

    yield reg
    for n in names:
        _REGISTRY.pop(n, None)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.8])
def test_random_global_ranks_all_layers_together(fraction):
    model = _three_layers()
    names = list(prunable_parameters(model, use_default_exclude=False))
    assert len(names) >= 3
    total = sum(p.numel() for p in prunable_parameters(model, use_default_exclude=False).values())
    for seed in range(4):
        t = prune(model, "random", fraction, generator=_gen(seed), use_default_exclude=False)
        # distinct ranks across all layers: the count is exact, whatever the seed
        assert sum(int(t[n].sum()) for n in names) == total - math.ceil(fraction * total)


def test_shuffle_defaults_to_layerwise_and_keeps_each_layer_count():
    model = _three_layers()
    t = prune(model, "magnitude", 0.5, use_default_exclude=False)
    s = shuffle(t, generator=_gen(0))
    assert s.metadata["strategy"] == "shuffle_layerwise"
    assert all(int(s[n].sum()) == int(t[n].sum()) for n in t) and not s.equal(t)


def test_shuffle_follows_its_generator():
    t = prune(_three_layers(), "magnitude", 0.5, use_default_exclude=False)
    for scope in ("layerwise", "global"):
        a = shuffle(t, scope=scope, generator=_gen(5))
        assert a.equal(shuffle(t, scope=scope, generator=_gen(5)))
        assert not a.equal(shuffle(t, scope=scope, generator=_gen(6)))


def test_global_shuffle_keeps_the_total_over_several_layers():
    model = _three_layers()
    names = list(prunable_parameters(model, use_default_exclude=False))
    # everything kept in the first layer, nothing in the others: any overlap of the slices shows in the total
    masks = {n: torch.full(p.shape, i == 0) for i, (n, p) in
             enumerate(prunable_parameters(model, use_default_exclude=False).items())}
    t = Ticket(masks, {"strategy": "by_hand"})
    for seed in range(4):
        g = shuffle(t, scope="global", generator=_gen(seed))
        assert g.num_kept == t.num_kept
        assert [tuple(g[n].shape) for n in names] == [tuple(t[n].shape) for n in names]


def test_shuffle_exclude_takes_one_glob_as_a_string():
    t = prune(_three_layers(), "magnitude", 0.5, use_default_exclude=False)
    names = list(t)
    for scope in ("layerwise", "global"):
        s = shuffle(t, scope=scope, generator=_gen(1), exclude=names[1])
        assert torch.equal(s[names[1]], t[names[1]])
        assert not torch.equal(s[names[0]], t[names[0]])


def test_shuffle_of_a_ticket_without_a_strategy():
    t = Ticket({"w": torch.tensor([True, False, True, False])})
    s = shuffle(t, generator=_gen(0))
    assert s.metadata["shuffled_from"] == "" and s.num_kept == 2


def test_register_strategy_needs_a_non_empty_name():
    for bad in ("", 3, None):
        with pytest.raises(ValueError, match=rf"^name: expected a non-empty string, got {bad!r}$"):
            register_strategy(bad)


def test_a_registered_strategy_carries_its_name(registered):
    class Cols(Strategy):
        def scores(self, ctx):
            return {n: torch.arange(p.numel(), dtype=torch.float32).reshape(p.shape) for n, p in ctx.params.items()}

    registered("test_cols", Cols)
    assert Cols.name == "test_cols" and get_strategy("test_cols").name == "test_cols"
    t = prune(nn.Sequential(nn.Linear(4, 2)), "test_cols", 0.5, use_default_exclude=False)
    assert t.metadata["strategy"] == "test_cols"
    assert t["0.weight"].tolist() == [[False, False, False, False], [True, True, True, True]]


def test_a_strategy_without_scores_says_so(registered):
    class Nothing(Strategy):
        pass

    registered("test_nothing", Nothing)
    with pytest.raises(NotImplementedError, match=r"^strategy 'test_nothing' implements no scores\(\)$"):
        prune(nn.Sequential(nn.Linear(4, 2)), "test_nothing", 0.5, use_default_exclude=False)


@pytest.mark.parametrize("rule", ["exact", "open_lth"])
def test_a_layer_with_one_weight_left_loses_it(rule):
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    one = torch.zeros(2, 3, dtype=torch.bool)
    one[1, 2] = True
    current = Ticket({"0.weight": one, "1.weight": torch.ones(2, 2, dtype=torch.bool)})
    t = prune(model, "magnitude", 0.5, current=current, scope="layerwise", rule=rule, use_default_exclude=False)
    assert not t["0.weight"].any()
    assert int(t["1.weight"].sum()) == (2 if rule == "exact" else 1)


def test_two_four_ties_go_to_the_lower_index_and_partial_groups_keep_what_fits():
    layer = nn.Linear(6, 3, bias=False)
    with torch.no_grad():
        layer.weight.fill_(1.0)
    t = prune(nn.Sequential(layer), "magnitude", structure="2:4", use_default_exclude=False)
    # groups of 4 along the input dim: [0..3] keeps 0 and 1 (ties), the partial group [4, 5] keeps both
    assert t["0.weight"].tolist() == [[True, True, False, False, True, True]] * 3


def test_global_ranking_keeps_float64_scores_apart():
    # 1 and 1 + 1e-12 are one float32 value: ranked in float32 they would tie and both go
    layer = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 1.0 + 1e-12]], dtype=torch.float64))
    t = prune(nn.Sequential(layer), "magnitude", 0.5, use_default_exclude=False)
    assert t["0.weight"].tolist() == [[False, True]]
