"""prune()'s contract beyond the masks: the ticket's metadata (level, model, excluded layers, rule, source run),
the masks of the layers it leaves alone, its one-line errors, and SynFlow's input shape."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lth_kernels.tickets import Ticket, prune
from lth_kernels.tickets.prunable import model_name


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_metadata_level_model_excluded_and_rule():
    net = _net()
    t = prune(net, "magnitude", 0.25, exclude=("5.*",), use_default_exclude=False)
    assert t.metadata["level"] == "1" and t.metadata["model"] == model_name(net) == "Sequential"
    assert t.metadata["excluded"] == "5.weight" and "rule" not in t.metadata
    assert t["5.weight"].dtype == torch.bool and t["5.weight"].shape == (3, 6) and bool(t["5.weight"].all())
    again = prune(net, "magnitude", 0.25, current=Ticket(dict(t.items()), {**t.metadata, "model": "lenet",
                                                                             "source_run": "runs/x"}),
                  exclude=("5.*",), use_default_exclude=False, rule="open_lth")
    assert again.metadata["level"] == "2" and again.metadata["model"] == "lenet"
    assert again.metadata["source_run"] == "runs/x" and again.metadata["rule"] == "open_lth"
    assert prune(net, "magnitude", 0.25, current=Ticket(dict(t.items()), {"level": "x"})).metadata["level"] == "1"


def test_untouched_layers_keep_the_current_mask_or_all_ones():
    net = _net()
    first = prune(net, "magnitude", 0.5, use_default_exclude=False)
    second = prune(net, "magnitude", 0.5, current=first, exclude=("1.*",), use_default_exclude=False)
    assert torch.equal(second["1.weight"], first["1.weight"])  # excluded now: its current mask, not all ones
    assert second.num_kept < first.num_kept


def test_one_line_errors_name_the_argument():
    net = _net()
    with pytest.raises(TypeError) as e:
        prune(net, "magnitude", 0.2, bogus=1)
    assert str(e.value) == "strategy 'magnitude' takes no option 'bogus' (its options: none)"
    with pytest.raises(TypeError) as e:
        prune(net, "synflow", 0.2, bogus=1)
    assert str(e.value) == "strategy 'synflow' takes no option 'bogus' (its options: input_shape, iterations, schedule)"
    with pytest.raises(ValueError) as e:
        prune(net, "snip", 0.2, data=[(torch.ones(2, 12), torch.zeros(2, dtype=torch.long))])
    assert str(e.value).endswith("needs loss_fn=<callable(output, y)>, e.g. torch.nn.functional.cross_entropy")
    with pytest.raises(TypeError) as e:
        prune(net, "random", 0.2, generator=3)
    assert str(e.value) == "generator: expected a torch.Generator, got int"
    with pytest.raises(ValueError) as e:
        prune(net, "magnitude", None, fraction_by={"1.*": 0.5}, use_default_exclude=False)
    assert str(e.value) == "fraction: needed for the layers no fraction_by glob matches (3.weight, 5.weight)"


def test_synflow_input_shape_forms():
    net = _net()
    with pytest.raises(ValueError) as e:
        prune(net, "synflow", 0.5)
    assert str(e.value) == "synflow needs the input shape: pass input_shape=(C, H, W) or data=[(x, y), ...]"
    as_int = prune(net, "synflow", 0.5, input_shape=12, iterations=1, use_default_exclude=False)
    with_one = prune(net, "synflow", 0.5, input_shape=(1, 12), iterations=1, use_default_exclude=False)
    assert as_int.equal(with_one) and 0.45 < as_int.density < 0.55
    with pytest.raises(ValueError, match=r"input_shape: expected a tuple of positive ints"):
        prune(net, "synflow", 0.5, input_shape=(0, 12))


def test_shuffle_exclude_as_a_list_or_a_string():
    from lth_kernels.tickets import shuffle

    t = prune(_net(), "magnitude", 0.5, use_default_exclude=False)
    for exclude in (["3.weight"], ("3.*",), "3.weight"):
        s = shuffle(t, scope="global", generator=torch.Generator().manual_seed(1), exclude=exclude)
        assert torch.equal(s["3.weight"], t["3.weight"]) and not torch.equal(s["1.weight"], t["1.weight"])
