"""Contracts of the pruning strategies beyond the main paths of test_strategies.py: exact counts over several
layers, the shuffle control's defaults and exclusions, the registry's checks and a strategy's name."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.tickets import Ticket, prunable_parameters, prune, register_strategy, shuffle
from lth_kernels.tickets.strategies import Strategy, get_strategy
from lth_kernels.tickets.strategies.base import _REGISTRY


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


# ------------------------------------------------------------------------------------ data-driven strategies


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


def _data(n_batches=3, batch=10, d=6, classes=4):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, d, generator=g) * (1 + i), torch.randint(0, classes, (batch,), generator=g))
            for i in range(n_batches)]


def _prune(strategy, model, data, **kw):
    return prune(model, strategy, 0.5, data=data, loss_fn=F.cross_entropy, use_default_exclude=False, **kw)


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
def test_num_batches_uses_the_first_batches_only(strategy):
    model, data = _bn_net(), _data()
    one = _prune(strategy, model, data, num_batches=1)
    assert one.equal(_prune(strategy, model, data[:1]))
    two = _prune(strategy, model, data, num_batches=2)
    assert two.equal(_prune(strategy, model, data[:2]))
    assert _prune(strategy, model, data).equal(_prune(strategy, model, data, num_batches=None))
    assert not one.equal(_prune(strategy, model, data))


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
def test_train_mode_decides_the_batch_norm_statistics(strategy):
    model, data = _bn_net(), _data()
    model.eval()
    train = _prune(strategy, model, data)  # default: batch statistics, as in the papers
    assert train.equal(_prune(strategy, model, data, train_mode=True))
    evaluated = _prune(strategy, model, data, train_mode=False)
    assert not train.equal(evaluated)
    assert not model.training and int(model[1].num_batches_tracked) == 0  # the caller's model is untouched


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
def test_a_weight_outside_the_graph_scores_zero(strategy):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(6, 4), nn.Linear(6, 4)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    t = _prune(strategy, Unused(), _data(n_batches=1))
    spare = t["spare.weight"]
    if strategy == "snip":  # |w g| >= 0: the spare layer's zeros go first
        assert t.num_kept == 24 and not spare.any() and t["used.weight"].all()
    else:  # signed scores: the spare layer's equal zeros go or stay together
        assert spare.all() or not spare.any()


def test_labels_need_not_be_tensors():
    model, data = _bn_net(), _data(n_batches=1)
    listed = [(x, y.tolist()) for x, y in data]
    loss = lambda out, y: F.cross_entropy(out, torch.as_tensor(y))
    a = prune(model, "snip", 0.5, data=listed, loss_fn=loss, use_default_exclude=False)
    assert a.equal(_prune("snip", model, data))


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.5])
def test_num_batches_must_be_a_positive_int_or_none(strategy, bad):
    with pytest.raises(ValueError, match=rf"^num_batches: expected a positive integer or None, got {bad!r}$"):
        _prune(strategy, _bn_net(), _data(), num_batches=bad)


@pytest.mark.parametrize("bad", [0, None, True, "3", 2.0])
def test_synflow_iterations_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=rf"^iterations: expected a positive integer, got {bad!r}$"):
        prune(_bn_net(), "synflow", 0.5, input_shape=(6,), iterations=bad)


@pytest.mark.parametrize("bad", [0, -2.0, True, "hot"])
def test_grasp_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match=rf"^temperature: expected a positive number, got {bad!r}$"):
        _prune("grasp", _bn_net(), _data(), temperature=bad)


def test_grasp_takes_a_temperature_below_one():
    model, data = _bn_net(), _data()
    assert not _prune("grasp", model, data, temperature=0.5).equal(_prune("grasp", model, data))


@pytest.mark.parametrize("bad,why", [([(torch.ones(2, 6),)], "got tuple at batch 0"),
                                     ([(torch.ones(2, 6), torch.zeros(2, dtype=torch.long)), 7], "got int at batch 1")])
def test_batches_must_be_pairs(bad, why):
    with pytest.raises(ValueError, match=rf"^data: every batch must be an \(x, y\) pair, {why}$"):
        _prune("snip", _bn_net(), bad)


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match=r"^data: no batches \(an iterable of \(x, y\) batches is required\)$"):
        _prune("snip", _bn_net(), [])


# ------------------------------------------------------------------------------------ selection edge cases


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
