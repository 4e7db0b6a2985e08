"""Block tickets: per-weight block scores, fractions in weights, level-by-level densities, layer safeguard.

The selection is checked against an independent loop-based reference of the documented rule (structure.py):
score = RMS (l2) / mean |s| (l1) over a block's alive weights; remove whole blocks, lowest score first (ties:
model order, then row-major), until >= ceil(fraction * alive weights) are gone; each layer's best block stays.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lth_kernels.tickets import Ticket, prunable_parameters, prune
from tests.tickets._models import MLP


def _blocks(shape2d, r, c):
    out, k = shape2d
    return [(i, j) for i in range(-(-out // r)) for j in range(-(-k // c))]


def _reference(weights: dict[str, torch.Tensor], current: dict[str, torch.Tensor], r: int, c: int, fraction: float,
               scope: str, norm: str = "l2") -> dict[str, torch.Tensor]:
    units = [[n] for n in weights] if scope == "layerwise" else [list(weights)]
    out = {n: current[n].clone() for n in weights}
    for names in units:
        cand, alive_w = [], 0
        for n in names:
            w2, a2 = weights[n].reshape(weights[n].shape[0], -1).double(), current[n].reshape(weights[n].shape[0], -1)
            best, items = None, []
            for i, j in _blocks(w2.shape, r, c):
                a = a2[i * r:(i + 1) * r, j * c:(j + 1) * c]
                cnt = int(a.sum())
                if cnt == 0:
                    continue
                v = w2[i * r:(i + 1) * r, j * c:(j + 1) * c].abs()[a]
                score = float(v.square().mean().sqrt()) if norm == "l2" else float(v.mean())
                items.append((score, n, i, j, cnt))
                alive_w += cnt
                if best is None or score >= best[0]:  # the best block, the later one on ties
                    best = items[-1]
            cand += [it for it in items if it is not best]  # the layer's best block is protected
        order = {n: k for k, n in enumerate(weights)}
        cand.sort(key=lambda it: (it[0], order[it[1]], it[2], it[3]))
        need, removed = math.ceil(round(fraction * alive_w, 9)), 0
        for _score, n, i, j, cnt in cand:
            if removed >= need:
                break
            m2 = out[n].view(out[n].shape[0], -1)
            m2[i * r:(i + 1) * r, j * c:(j + 1) * c] = False
            removed += cnt
    return out


def _density(t: Ticket, names) -> float:
    return sum(int(t[n].sum()) for n in names) / sum(t[n].numel() for n in names)


def test_readme_example_keeps_every_layer_and_half_the_weights():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    t = prune(net, "magnitude", 0.5, structure="block16")
    names = ["0.weight", "2.weight"]
    assert all(int(t[n].sum()) > 0 for n in names), "a layer was emptied"
    total = sum(t[n].numel() for n in names)
    kept = sum(int(t[n].sum()) for n in names)
    # at least half removed, overshooting by less than one 16x16 block
    assert total - math.ceil(0.5 * total) - 256 < kept <= total - math.ceil(0.5 * total)


@pytest.mark.parametrize("scope", ["global", "layerwise"])
@pytest.mark.parametrize("structure,r,c", [("block16", 16, 16), ("block4x8", 4, 8)])
def test_imp_levels_follow_the_fraction_in_weights(scope, structure, r, c):
    """Five 20 % levels on a LeNet-like MLP with partial edge blocks: the density after level L is 0.8^L of the
    prunable weights (within one block per unit), every prunable layer is pruned, and each level equals the
    reference rule."""
    torch.manual_seed(1)
    model = MLP(d_in=64, hidden=(300, 100), d_out=10)  # 300 and 100 are not multiples of 16: edge blocks
    params = prunable_parameters(model)
    names = list(params)
    weights = {n: p.detach() for n, p in params.items()}
    t = Ticket.ones(model)
    alive = sum(params[n].numel() for n in names)
    for level in range(1, 6):
        prev = {n: t[n] for n in names}
        t = prune(model, "magnitude", 0.2, current=t, structure=structure, scope=scope)
        ref = _reference(weights, prev, r, c, 0.2, scope)
        assert all(torch.equal(t[n], ref[n]) for n in names), f"level {level} differs from the reference rule"
        assert not any(bool((t[n] & ~prev[n]).any()) for n in names)  # pruned stays pruned
        if scope == "global":
            need = math.ceil(0.2 * alive)
            kept = sum(int(t[n].sum()) for n in names)
            assert alive - need - r * c < kept <= alive - need, level
            alive = kept
        else:
            for n in names:
                a = int(prev[n].sum())
                assert a - math.ceil(0.2 * a) - r * c < int(t[n].sum()) <= a - math.ceil(0.2 * a), (level, n)
        assert abs(_density(t, names) - 0.8 ** level) < 0.02, (level, _density(t, names))
    # every prunable layer lost weights, none was emptied; the excluded output layer is untouched
    assert all(0 < int(t[n].sum()) < t[n].numel() for n in names)
    assert bool(t["fc.weight"].all())


def test_partial_edge_blocks_compete_per_weight():
    """A 1-column edge block of the largest weights is kept; an L2 sum (1.0, 0.8, 0.6) would drop it first."""
    w = torch.full((4, 9), 0.25)
    w[:, 4:8] = 0.2  # block4: full blocks at 0.25 and 0.2 per weight
    w[:, 8] = 0.3  # edge block: one column at 0.3
    lin = nn.Linear(9, 4, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    t = prune(nn.Sequential(lin), "magnitude", 0.3, structure="block4")
    m = t["0.weight"]
    assert bool(m[:, 8].all()) and bool(m[:, :4].all()) and not bool(m[:, 4:8].any())


def test_block_l1_and_ties_deterministic():
    w = torch.tensor([[3.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # 2x2 blocks: RMS 1.5 vs 1, mean 0.75 vs 1
    lin = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    model = nn.Sequential(lin)
    assert prune(model, "magnitude", 0.5, structure="block2")["0.weight"][0].tolist() == [True, True, False, False]
    l1 = prune(model, "magnitude", 0.5, structure="block2", block_norm="l1")
    assert l1["0.weight"][0].tolist() == [False, False, True, True]
    # equal scores: the earlier block goes first, the same way every time
    ones = nn.Sequential(nn.Linear(8, 2, bias=False))
    nn.init.ones_(ones[0].weight)
    for _ in range(2):
        t = prune(ones, "magnitude", 0.5, structure="block2")
        assert t["0.weight"][0].tolist() == [False, False, False, False, True, True, True, True]


def test_layer_safeguard_and_allow_empty():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        net[2].weight.mul_(1e-3)  # the small layer would go first and entirely
    t = prune(net, "magnitude", 0.3, structure="block16")
    assert int(t["2.weight"].sum()) == 4 * 16  # its best block is kept
    e = prune(net, "magnitude", 0.3, structure="block16", allow_empty=True)
    assert int(e["2.weight"].sum()) == 0
    # layerwise: one block per layer is never removed, even when the fraction asks for more
    one = nn.Sequential(nn.Linear(16, 16))
    assert bool(prune(one, "magnitude", 0.9, structure="block16", scope="layerwise")["0.weight"].all())


@pytest.mark.parametrize("strategy", ["random", "synflow"])
def test_other_strategies_count_weights(strategy):
    torch.manual_seed(0)
    model = MLP(d_in=64, hidden=(300, 100), d_out=10)
    names = list(prunable_parameters(model))
    opts = {"generator": torch.Generator().manual_seed(0)} if strategy == "random" else \
        {"input_shape": (64,), "iterations": 3}
    t = prune(model, strategy, 0.5, structure="block16", **opts)
    total = sum(t[n].numel() for n in names)
    kept = sum(int(t[n].sum()) for n in names)
    assert total - math.ceil(0.5 * total) - 256 < kept <= total - math.ceil(0.5 * total)
    assert all(int(t[n].sum()) > 0 for n in names)


def test_block_select_units_counts_rules_and_the_layer_safeguard():
    # block_select on hand-made block scores: layerwise asks the count per layer (by name), global once for all;
    # "open_lth" removes one weight more than asked (so a block more where the count lands on a boundary), a count of
    # 0 removes nothing under either rule, and by default each layer's best block survives a count that asks more
    from lth_kernels.tickets.strategies.structure import block_select

    scores = {"a": torch.tensor([0.4, 0.1, 0.3, 0.2]), "b": torch.tensor([0.05, 0.06, 0.6, 0.7])}
    alive = {n: torch.ones(4, dtype=torch.bool) for n in scores}
    weights = {n: torch.full((4,), 4) for n in scores}
    asked = []

    def quarter(unit, remaining):
        asked.append((unit, remaining))
        return math.ceil(0.25 * remaining)

    def kept(keep):
        return {n: keep[n].tolist() for n in keep}

    lw = block_select(scores, alive, weights, "layerwise", quarter)
    assert asked == [("a", 16), ("b", 16)]
    assert kept(lw) == {"a": [True, False, True, True], "b": [False, True, True, True]}
    asked.clear()
    gl = block_select(scores, alive, weights, "global", quarter)
    assert asked == [(None, 32)]
    assert kept(gl) == {"a": [True, True, True, True], "b": [False, False, True, True]}
    ones = {n: torch.ones(4, dtype=torch.long) for n in scores}
    one = block_select(scores, alive, ones, "layerwise", lambda unit, rem: 1)
    assert [int((~one[n]).sum()) for n in scores] == [1, 1]
    two = block_select(scores, alive, ones, "layerwise", lambda unit, rem: 1, rule="open_lth")
    assert [int((~two[n]).sum()) for n in scores] == [2, 2]
    assert kept(two) == {"a": [True, False, True, False], "b": [False, False, True, True]}
    for rule in ("exact", "open_lth"):
        none = block_select(scores, alive, weights, "layerwise", lambda unit, rem: 0, rule=rule)
        assert all(bool(none[n].all()) for n in scores)
    single = {"a": torch.tensor([True, False, False, False]), "b": alive["b"]}
    guarded = block_select(scores, single, weights, "layerwise", lambda unit, rem: rem)
    assert kept(guarded)["a"] == [True, False, False, False]  # the layer's last block stays
    assert int(guarded["b"].sum()) == 1 and bool(guarded["b"][3])  # ... and b keeps its best one
    emptied = block_select(scores, single, weights, "layerwise", lambda unit, rem: rem, allow_empty=True)
    assert not bool(emptied["a"].any()) and not bool(emptied["b"].any())


def test_block_select_global_offsets_and_float64_scores():
    # three layers in one global ranking (each gets its own slice back), and float64 scores compared in float64
    # (two scores 1e-10 apart stay apart; in float32 they would tie and the earlier block would go)
    from lth_kernels.tickets.strategies.structure import block_select

    scores = {"a": torch.tensor([0.3 + 1e-10, 0.3, 0.9], dtype=torch.float64), "b": torch.tensor([0.8, 0.7, 0.6]),
              "c": torch.tensor([0.5, 0.95, 0.4])}
    alive = {n: torch.ones(3, dtype=torch.bool) for n in scores}
    weights = {n: torch.ones(3, dtype=torch.long) for n in scores}
    keep = block_select(scores, alive, weights, "global", lambda unit, rem: 3)
    assert {n: keep[n].tolist() for n in keep} == {"a": [False, False, True], "b": [True, True, True],
                                                  "c": [True, True, False]}
    keep = block_select(scores, alive, weights, "global", lambda unit, rem: 1)
    assert keep["a"].tolist() == [True, False, True]
