"""Iterative SynFlow against an independent float64 reimplementation of the paper's algorithm (score with the
current mask, keep the scheduled count ``ceil(R0 * d_e)``, re-score, ...), for both schedules and scopes; the
number of scoring rounds; the rule (applied to one-shot selection only); the schedule option."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lth_kernels.tickets import Ticket, prune

NAMES = ["0.weight", "2.weight", "4.weight"]


def _mlp() -> nn.Sequential:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(8, 12, bias=False), nn.ReLU(), nn.Linear(12, 10, bias=False), nn.ReLU(),
                         nn.Linear(10, 4, bias=False))


def _flow_scores(weights: list[torch.Tensor], masks: list[torch.Tensor]) -> list[torch.Tensor]:
    """|w * dR/dw| for R = 1^T |W_L m_L| ... |W_1 m_1| 1 (bias-free ReLU chain: ReLU is the identity on >= 0)."""
    ws = [(w.detach().double().abs() * m).requires_grad_(True) for w, m in zip(weights, masks)]
    v = torch.ones(ws[0].shape[1], dtype=torch.float64)
    for w in ws:
        v = w @ v
    v.sum().backward()
    return [(w.grad * w).abs().detach() for w in ws]


def _keep_top(scores: list[torch.Tensor], alive: list[torch.Tensor], keep: int) -> list[torch.Tensor]:
    """The documented rule: remove n = alive - keep; threshold = the n-th smallest alive score; keep > threshold."""
    n = sum(int(a.sum()) for a in alive) - keep
    if n <= 0:
        return [a.clone() for a in alive]
    flat = sorted(float(v) for s, a in zip(scores, alive) for v in s[a])
    threshold = flat[n - 1]
    return [a & (s > threshold) for s, a in zip(scores, alive)]


def _density(d: float, progress: float, schedule: str) -> float:
    return d ** progress if schedule == "exponential" else 1.0 - (1.0 - d) * progress


def _reference(weights, fraction: float, iterations: int, schedule: str, scope: str) -> list[torch.Tensor]:
    masks = [torch.ones(w.shape, dtype=torch.bool) for w in weights]
    units = [list(range(len(weights)))] if scope == "global" else [[i] for i in range(len(weights))]
    r0 = {tuple(u): sum(masks[i].numel() for i in u) for u in units}
    final = {u: r - math.ceil(fraction * r) for u, r in r0.items()}
    for e in range(1, iterations + 1):
        scores = _flow_scores(weights, masks)
        for u in r0:
            if e == iterations:
                keep = final[u]
            else:
                keep = max(final[u], math.ceil(r0[u] * _density(final[u] / r0[u], e / iterations, schedule) - 1e-9))
            new = _keep_top([scores[i] for i in u], [masks[i] for i in u], keep)
            for i, m in zip(u, new):
                masks[i] = m
    return masks


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("schedule", ["exponential", "linear"])
def test_iterative_synflow_follows_the_schedule(schedule, scope):
    model = _mlp()
    weights = [model[0].weight, model[2].weight, model[4].weight]
    expected = _reference(weights, 0.9, 6, schedule, scope)
    other = _reference(weights, 0.9, 6, "linear" if schedule == "exponential" else "exponential", scope)
    assert any(not torch.equal(a, b) for a, b in zip(expected, other))  # the schedules lead to different tickets
    t = prune(model, "synflow", 0.9, input_shape=(8,), iterations=6, schedule=schedule, scope=scope)
    for name, m in zip(NAMES, expected):
        assert torch.equal(t[name], m), name


def test_iterative_synflow_differs_from_one_shot():
    # the re-scoring matters: 6 rounds do not give the one-shot ticket (which is 1 round, the same as the reference)
    model = _mlp()
    weights = [model[0].weight, model[2].weight, model[4].weight]
    one = _reference(weights, 0.9, 1, "exponential", "global")
    six = _reference(weights, 0.9, 6, "exponential", "global")
    assert any(not torch.equal(a, b) for a, b in zip(one, six))
    t = prune(model, "synflow", 0.9, input_shape=(8,), iterations=1)
    for name, m in zip(NAMES, one):
        assert torch.equal(t[name], m), name


class _TwoBranches(nn.Module):
    """y = a(x) + b(x): with b fully pruned, a still carries all of the flow (dR/da_ij = 1, score = |a_ij|)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(6, 3, bias=False)
        self.b = nn.Linear(6, 3, bias=False)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_layerwise_schedule_with_a_layer_pruned_away():
    torch.manual_seed(0)
    model = _TwoBranches()
    current = Ticket({"a.weight": torch.ones(3, 6, dtype=torch.bool), "b.weight": torch.zeros(3, 6, dtype=torch.bool)})
    t = prune(model, "synflow", 0.5, current=current, input_shape=(6,), iterations=4, scope="layerwise")
    assert not bool(t["b.weight"].any())
    # a keeps its 9 largest |w| (18 - ceil(0.5 * 18))
    w = model.a.weight.detach().abs().flatten()
    expected = torch.zeros(18, dtype=torch.bool)
    expected[torch.argsort(w, descending=True)[:9]] = True
    assert torch.equal(t["a.weight"].flatten(), expected)


class _WithSpare(nn.Module):
    """A prunable layer the forward never uses: no gradient reaches it, so its SynFlow score is 0."""

    def __init__(self):
        super().__init__()
        self.used = nn.Linear(4, 4, bias=False)
        self.spare = nn.Linear(2, 2, bias=False)

    def forward(self, x):
        return self.used(x)


@pytest.mark.parametrize("iterations", [1, 3])
def test_a_layer_outside_the_graph_scores_zero(iterations):
    torch.manual_seed(0)
    model = _WithSpare()
    with torch.no_grad():
        model.used.weight.copy_(torch.rand(4, 4) + 0.5)  # nonzero: every used weight scores |w| > 0
    # 20 weights, ceil(0.2 * 20) = 4 go: exactly the 4 zero-score spare ones
    t = prune(model, "synflow", 0.2, input_shape=(4,), iterations=iterations)
    assert bool(t["used.weight"].all()) and not bool(t["spare.weight"].any())


# ------------------------------------------------------------------------------------------ scoring rounds


class _Counting(nn.Sequential):
    calls: list[int] = []  # a class attribute: shared with the scoring copy (a deep copy of the instance)

    def forward(self, x):
        type(self).calls.append(1)
        return super().forward(x)


def _counting() -> _Counting:
    torch.manual_seed(0)
    _Counting.calls.clear()
    return _Counting(nn.Linear(8, 8, bias=False), nn.ReLU(), nn.Linear(8, 4, bias=False))


@pytest.mark.parametrize("iterations", [1, 2, 5])
def test_iterations_is_the_number_of_scoring_rounds(iterations):
    prune(_counting(), "synflow", 0.5, input_shape=(8,), iterations=iterations)
    assert len(_Counting.calls) == iterations


def test_nm_selection_scores_once():
    t = prune(_counting(), "synflow", structure="2:4", input_shape=(8,), iterations=5)
    assert len(_Counting.calls) == 1
    assert bool((t["0.weight"].reshape(8, 2, 4).sum(-1) == 2).all())


# ----------------------------------------------------------------------------------------------- the rule


def test_the_rule_applies_to_one_shot_selection_only():
    model = _mlp()
    total = sum(model[i].weight.numel() for i in (0, 2, 4))  # 96 + 120 + 40 = 256
    target = total - math.ceil(0.5 * total)
    # iterative: every step counts exactly, open_lth or not
    for rule in ("exact", "open_lth"):
        t = prune(model, "synflow", 0.5, input_shape=(8,), iterations=3, rule=rule)
        assert t.num_kept == target, rule
    # one-shot: open_lth's index removes one weight more (distinct scores)
    assert prune(model, "synflow", 0.5, input_shape=(8,), iterations=1).num_kept == target
    assert prune(model, "synflow", 0.5, input_shape=(8,), iterations=1, rule="open_lth").num_kept == target - 1


def test_schedule_must_be_exponential_or_linear():
    with pytest.raises(ValueError) as e:
        prune(_mlp(), "synflow", 0.5, input_shape=(8,), schedule="cubic")
    assert str(e.value) == "schedule: expected 'exponential' or 'linear', got 'cubic'"
