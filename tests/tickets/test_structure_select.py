"""The structure layer by hand: parsing and naming structures, block scores (RMS / mean |s| / signed mean per alive
weight), the selection rules' defaults, the float64 global ranking, and the documented tie order (lower index first)
for N:M groups and blocks, also where torch's unstable sort would reorder ties (more than 16 tied values)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lth_kernels.tickets import prune
from lth_kernels.tickets.strategies.structure import Structure, nm_select, parse_structure, threshold_select

# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize("text,expected", [
    ("unstructured", Structure("unstructured")),
    (" Unstructured ", Structure("unstructured")),
    ("block1", Structure("block", rows=1, cols=1)),
    ("block1x4", Structure("block", rows=1, cols=4)),
    ("block4x1", Structure("block", rows=4, cols=1)),
    ("BLOCK3", Structure("block", rows=3, cols=3)),
    ("1:2", Structure("nm", n=1, m=2)),
    ("3:4", Structure("nm", n=3, m=4)),
])
def test_parse_structure_accepts_the_smallest_valid_sizes(text, expected):
    st = parse_structure(text)
    assert st == expected
    assert st.kind == expected.kind


@pytest.mark.parametrize("text", ["block0", "block0x4", "block4x0", "0:4", "4:4", "5:4", "block", "2:"])
def test_parse_structure_refuses_empty_blocks_and_n_outside_0_m(text):
    with pytest.raises(ValueError, match=r"^structure: "):
        parse_structure(text)


def test_a_structure_prints_its_canonical_form():
    assert str(parse_structure("block4")) == "block4x4"
    assert str(parse_structure("block2x8")) == "block2x8"
    assert str(parse_structure("2:4")) == "2:4"
    assert str(parse_structure("unstructured")) == "unstructured"
    # the ticket records the canonical form
    layer = nn.Sequential(nn.Linear(8, 4))
    assert prune(layer, "magnitude", 0.5, structure="block2").metadata["structure"] == "block2x2"


# ---------------------------------------------------------------------------------------- block scores

# element scores of a (3, 3) weight cut into block1x2 tiles: columns {0, 1} and the edge column {2}
_SCORES = torch.tensor([[3.0, -4.0, 2.0],
                        [1.0, 5.0, -6.0],
                        [7.0, 8.0, 9.0]], dtype=torch.float64)
_ALIVE = torch.tensor([[True, True, True],
                       [True, False, True],   # the 5.0 is dead: its block has one alive weight
                       [False, False, False]])  # a dead row: dead blocks score 0


def test_block_scores_are_per_alive_weight_norms():
    st = parse_structure("block1x2")
    g, a = st.reduce(_SCORES, _ALIVE)  # default: root mean square, unsigned
    rms = [[math.sqrt((9 + 16) / 2), 2.0], [1.0, 6.0], [0.0, 0.0]]
    assert torch.allclose(g, torch.tensor(rms, dtype=torch.float64), rtol=0, atol=1e-12)
    assert a.tolist() == [[True, True], [True, True], [False, False]]

    g1, _ = st.reduce(_SCORES, _ALIVE, norm="l1")
    assert torch.allclose(g1, torch.tensor([[3.5, 2.0], [1.0, 6.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-12)

    gs, _ = st.reduce(_SCORES, _ALIVE, signed=True)  # GraSP's signed scores are averaged, not normed
    assert torch.allclose(gs, torch.tensor([[-0.5, 2.0], [1.0, -6.0], [0.0, 0.0]], dtype=torch.float64), atol=1e-12)


def test_unstructured_and_nm_reduce_nothing():
    for text in ("unstructured", "2:4"):
        g, a = parse_structure(text).reduce(_SCORES, _ALIVE)
        assert torch.equal(g, _SCORES) and torch.equal(a, _ALIVE)


# ------------------------------------------------------------------------------------- threshold rules


def test_threshold_select_defaults_to_the_exact_rule():
    scores = {"a": torch.tensor([[4.0, 1.0, 3.0, 2.0]])}
    alive = {"a": torch.ones(1, 4, dtype=torch.bool)}
    one = lambda unit, remaining: 1
    # exact: the 1st smallest (1.0) is the threshold, only it goes
    for scope in ("global", "layerwise"):
        assert threshold_select(scores, alive, scope, one)["a"].tolist() == [[True, False, True, True]]
    # open_lth: threshold sorted[1] = 2.0, so 1.0 and 2.0 go
    assert threshold_select(scores, alive, "global", one, "open_lth")["a"].tolist() == [[True, False, True, False]]


def test_global_ranking_compares_float32_and_float64_scores_in_float64():
    # The one weight to remove is b's 1 - 1e-12, below a's 1.0 (float32): a keeps both of its weights. Compared
    # in float32, the threshold 1 - 1e-12 would round to 1.0 and a's 1.0 would fall with it.
    scores = {"a": torch.tensor([1.0, 3.0], dtype=torch.float32),
              "b": torch.tensor([1.0 - 1e-12, 2.0], dtype=torch.float64)}
    alive = {n: torch.ones(2, dtype=torch.bool) for n in scores}
    keep = threshold_select(scores, alive, "global", lambda unit, remaining: 1)
    assert keep["a"].tolist() == [True, True] and keep["b"].tolist() == [False, True]


# -------------------------------------------------------------------------------------------- tie order


def test_nm_ties_go_to_the_lower_index_in_long_groups():
    # 2:20 on all-equal scores: each group of 20 keeps its first two (documented: stable, lower index first);
    # more than 16 tied values is where torch's unstable sort stops preserving the order
    scores = torch.zeros(3, 40)
    alive = torch.ones(3, 40, dtype=torch.bool)
    keep = nm_select(scores, alive, 2, 20)
    expected = torch.zeros(3, 40, dtype=torch.bool)
    expected[:, [0, 1, 20, 21]] = True
    assert torch.equal(keep, expected)
    # the dead ones never count: with the first two dead, the next two alive ones are kept
    alive[:, [0, 1]] = False
    expected[:, [0, 1]] = False
    expected[:, [2, 3]] = True
    assert torch.equal(nm_select(scores, alive, 2, 20), expected)


def test_tied_blocks_go_in_model_order():
    # 40 one-weight blocks of equal magnitude: half of them go, the earliest first
    model = nn.Sequential(nn.Linear(40, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(0.5)
    t = prune(model, "magnitude", 0.5, structure="block1")
    assert t["0.weight"].flatten().tolist() == [False] * 20 + [True] * 20


def test_float64_block_scores_stay_apart():
    # float64 weights 1 + 1e-12 (first block) and 1 (second): the second is the lower block and goes; in float32
    # both would be 1.0, a tie, and the first block would go
    model = nn.Sequential(nn.Linear(4, 1, bias=False)).double()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1 + 1e-12, 1 + 1e-12, 1.0, 1.0]], dtype=torch.float64))
    t = prune(model, "magnitude", 0.5, structure="block1x2")
    assert t["0.weight"].tolist() == [[True, True, False, False]]


def test_half_precision_weights_get_float32_block_norms():
    # fp16 weights 1.5e-4 (first block) and 1e-4 (second): their squares (2.25e-8, 1e-8) underflow to 0 in fp16,
    # which would tie the blocks; magnitude scores in float32 keep the larger block
    model = nn.Sequential(nn.Linear(4, 1, bias=False)).half()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.5e-4, 1.5e-4, 1e-4, 1e-4]], dtype=torch.float16))
    t = prune(model, "magnitude", 0.5, structure="block1x2")
    assert t["0.weight"].tolist() == [[True, True, False, False]]
