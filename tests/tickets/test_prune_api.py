"""prune() and the strategy base by hand: a partial ``current`` ticket, metadata defaults, ``fraction_by`` matching,
the registry's error, non-finite and signed scores, the rule for blocks, ``shuffle``'s string exclude, the scoring
copy's contract (and a masked layer without a mask yet), and GraSP on a loss whose Hessian is zero."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.tickets import Ticket, get_strategy, prune, shuffle, strategy_names
from lth_kernels.tickets.strategies import PruneContext, Strategy, parse_structure
from lth_kernels.tickets.strategies._prune import fractions_by_layer
from lth_kernels.tickets.strategies._scoring import scoring_copy
from lth_kernels.tickets.strategies.structure import fraction_count
from tests.tickets._models import MLP, classification_batches


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def _top(values: torch.Tensor, alive: torch.Tensor, keep: int) -> torch.Tensor:
    """The ``keep`` largest of ``values`` among ``alive`` (distinct values)."""
    v = torch.where(alive, values, torch.full_like(values, -1.0)).flatten()
    out = torch.zeros(v.numel(), dtype=torch.bool)
    out[torch.argsort(v, descending=True)[:keep]] = True
    return out.reshape(values.shape)


# ------------------------------------------------------------------------------------ prune()'s contract


def test_a_partial_current_ticket_prunes_the_missing_layers_from_all_ones():
    net = _net()
    torch.manual_seed(1)
    m1 = torch.rand(8, 12) > 0.5
    t = prune(net, "magnitude", 0.5, current=Ticket({"1.weight": m1}), exclude=("5.*",), use_default_exclude=False,
              scope="layerwise")
    w1, w3 = net[1].weight.detach().abs(), net[3].weight.detach().abs()
    alive1 = int(m1.sum())
    assert torch.equal(t["1.weight"], _top(w1, m1, alive1 - (alive1 + 1) // 2))  # pruned ones stay pruned
    assert torch.equal(t["3.weight"], _top(w3, torch.ones(6, 8, dtype=torch.bool), 24))  # 48 - ceil(24)
    # excluded and absent from current: all ones, bool, the weight's shape
    assert t["5.weight"].dtype == torch.bool and t["5.weight"].shape == (3, 6) and bool(t["5.weight"].all())
    assert list(t) == ["1.weight", "3.weight", "5.weight"]


def test_metadata_names_every_excluded_layer_and_the_model():
    net = _net()
    t = prune(net, "magnitude", 0.5, exclude=("3.*", "5.*"), use_default_exclude=False)
    assert t.metadata["excluded"] == "3.weight,5.weight"
    # a current ticket without a model name: the model's own
    bare = Ticket({"1.weight": torch.ones(8, 12, dtype=torch.bool)})
    assert prune(net, "magnitude", 0.5, current=bare).metadata["model"] == "Sequential"


def test_fraction_by_matching_rules():
    # an unmatched name does not stop the others being matched
    assert fractions_by_layer(["a.weight", "b.weight", "c.weight"], {"b": 0.3}) == {"b.weight": 0.3}
    # an exact module name beats a glob with more literal characters
    assert fractions_by_layer(["fc.weight"], {"f[c].weigh*": 0.3, "fc": 0.1}) == {"fc.weight": 0.1}
    # every character but * ? [ ] is literal, an X too: "blockXX.*" (8) beats "*.weight" (7)
    assert fractions_by_layer(["blockXX.weight"], {"*.weight": 0.2, "blockXX.*": 0.1}) == {"blockXX.weight": 0.1}
    # a top-level weight's module is the root, which has no name for a glob to match
    assert fractions_by_layer(["weight", "X1.weight"], {"X*": 0.3}) == {"X1.weight": 0.3}
    with pytest.raises(ValueError) as e:
        fractions_by_layer(["x.y"], {"x.*": 0.1, "*.y": 0.2})
    assert str(e.value) == ("fraction_by: 'x.y' matches 'x.*' and '*.y' equally well with different fractions; "
                            "name it exactly")


def test_an_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError) as e:
        get_strategy("nope")
    msg = str(e.value)
    assert msg == f"strategy: unknown pruning strategy 'nope'; valid: {', '.join(strategy_names())}"
    assert "grasp, magnitude, random, snip, synflow" in msg


# -------------------------------------------------------------------------------------- the strategy base


class _Fixed(Strategy):
    """Scores given by the test."""

    name = "fixed_probe"

    def __init__(self, scores):
        self._scores = scores

    def scores(self, ctx):
        return self._scores


class _SignedFixed(_Fixed):
    signed = True


def _ctx(weight: torch.Tensor, alive: torch.Tensor, structure: str = "unstructured") -> PruneContext:
    layer = nn.Linear(weight.shape[1], weight.shape[0], bias=False)
    return PruneContext(model=layer, params={"weight": layer.weight}, current={"weight": alive},
                        structure=parse_structure(structure), scope="global")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_scores_are_refused_at_alive_weights_only(bad):
    alive = torch.tensor([[True, True, False, True]])
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    at_dead = s.clone()
    at_dead[0, 2] = bad
    groups, _ = _Fixed({"weight": at_dead}).reduce(_ctx(s, alive), {"weight": at_dead})
    assert groups["weight"][0, 3] == 4.0  # accepted: a dead weight's score is never used
    at_alive = s.clone()
    at_alive[0, 1] = bad
    with pytest.raises(FloatingPointError) as e:
        _Fixed({"weight": at_alive}).reduce(_ctx(s, alive), {"weight": at_alive})
    assert str(e.value) == "strategy 'fixed_probe' produced non-finite scores for 'weight'"


def test_signed_scores_are_averaged_per_block():
    # block1x2: the first block's mean is -10 (the lowest), the second's 1; an unsigned RMS would rank them 10, 1
    scores = torch.tensor([[-10.0, -10.0, 1.0, 1.0]])
    alive = torch.ones(1, 4, dtype=torch.bool)
    ctx = _ctx(scores, alive, "block1x2")
    groups, _ = _SignedFixed({"weight": scores}).reduce(ctx, {"weight": scores})
    assert groups["weight"].tolist() == [[-10.0, 1.0]]
    new = _SignedFixed({"weight": scores}).prune(ctx, fraction_count(0.5))
    assert new["weight"].tolist() == [[False, False, True, True]]


@pytest.mark.parametrize("rule,kept", [("exact", [False] * 2 + [True] * 6), ("open_lth", [False] * 4 + [True] * 4)])
def test_the_rule_applies_to_blocks(rule, kept):
    # 8 weights, fraction 0.25: n = 2 weights (one block of 2); open_lth removes n + 1 = 3, i.e. two blocks
    model = nn.Sequential(nn.Linear(8, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.arange(1.0, 9.0).reshape(1, 8))
    t = prune(model, "magnitude", 0.25, structure="block1x2", rule=rule)
    assert t["0.weight"].flatten().tolist() == kept


def test_shuffle_takes_a_single_glob_string_whole():
    torch.manual_seed(0)
    t = Ticket({"fc.weight": torch.rand(8, 8) > 0.5, "body.weight": torch.rand(8, 8) > 0.5})
    s = shuffle(t, exclude="fc.weight", generator=torch.Generator().manual_seed(2))
    assert torch.equal(s["fc.weight"], t["fc.weight"])
    assert not torch.equal(s["body.weight"], t["body.weight"])
    assert int(s["body.weight"].sum()) == int(t["body.weight"].sum())


# --------------------------------------------------------------------------------------- the scoring copy


def test_the_scoring_copy_masks_the_prunable_weights_and_freezes_the_rest():
    torch.manual_seed(0)
    model = MLP()
    params = {n: p for n, p in model.named_parameters() if n.startswith("layers.") and n.endswith(".weight")}
    current = {n: torch.rand(p.shape) > 0.3 for n, p in params.items()}
    ctx = PruneContext(model=model, params=params, current=current, structure=parse_structure("unstructured"),
                       scope="global")
    before = copy.deepcopy(model.state_dict())
    copied, weights = scoring_copy(ctx)
    assert list(weights) == list(params)
    for n, w in weights.items():
        assert w.requires_grad and w is copied.get_parameter(n)
        assert torch.equal(w.detach(), params[n].detach() * current[n])
    others = [n for n, p in copied.named_parameters() if n not in params]
    assert others and not any(copied.get_parameter(n).requires_grad for n in others)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # the model is untouched


class _LazyMaskedLinear(nn.Linear):
    """A masked layer that has no mask yet (``mask`` is None until ``set_mask``): it runs dense."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.mask = None

    def set_mask(self, mask):
        self.mask = mask.clone()

    def forward(self, x):
        w = self.weight if self.mask is None else self.weight * self.mask
        return F.linear(x, w, self.bias)


def test_a_masked_layer_without_a_mask_scores_as_a_dense_layer():
    torch.manual_seed(0)
    model = nn.Sequential(_LazyMaskedLinear(20, 8), nn.ReLU(), nn.Linear(8, 5))
    data = classification_batches(n_batches=1, batch=8)
    t = prune(model, "snip", 0.5, data=data, loss_fn=F.cross_entropy, use_default_exclude=False)
    # SNIP by hand: |w * dL/dw| on the dense network, one global ranking of 160 + 40 weights, 100 kept
    ref = copy.deepcopy(model)
    F.cross_entropy(ref(data[0][0]), data[0][1]).backward()
    scores = {n: (ref.get_parameter(n).grad * ref.get_parameter(n)).abs().detach() for n in ("0.weight", "2.weight")}
    flat = torch.cat([s.flatten() for s in scores.values()])
    threshold = torch.sort(flat).values[99]  # the 100th smallest goes, the rest is kept
    for n, s in scores.items():
        assert torch.equal(t[n], s > threshold), n


def test_grasp_scores_zero_when_the_loss_is_linear_in_the_weights():
    # one linear layer and a loss linear in its logits: H = 0, so Hg = 0 and every GraSP score is 0
    torch.manual_seed(0)
    layer = nn.Linear(5, 3)
    ctx = PruneContext(model=layer, params={"weight": layer.weight}, current={"weight": torch.ones(3, 5,
                                                                                                    dtype=torch.bool)},
                       structure=parse_structure("unstructured"), scope="global",
                       data=classification_batches(n_batches=2, batch=4, shape=(5,), classes=3),
                       loss_fn=lambda out, y: out.sum(), options=dict(get_strategy("grasp").options))
    scores = get_strategy("grasp").scores(ctx)
    assert torch.equal(scores["weight"], torch.zeros(3, 5))
