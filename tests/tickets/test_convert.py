"""Import/export: torch.nn.utils.prune and open_lth mask.pth."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils import prune as torch_prune

from lth_kernels.tickets import Ticket, TicketError, from_open_lth, from_torch_prune, prune, to_open_lth, to_torch_prune
from tests.tickets._models import CNN, MLP


def test_from_torch_prune():
    model = CNN()
    torch_prune.l1_unstructured(model.conv2, "weight", amount=0.3)
    torch_prune.random_unstructured(model.fc, "weight", amount=0.5)
    t = from_torch_prune(model)
    assert list(t) == ["conv1.weight", "conv2.weight", "fc.weight"]
    assert torch.equal(t["conv2.weight"], model.conv2.weight_mask.bool())
    assert torch.equal(t["fc.weight"], model.fc.weight_mask.bool())
    assert bool(t["conv1.weight"].all())
    assert list(from_torch_prune(model, include_unpruned=False)) == ["conv2.weight", "fc.weight"]
    with pytest.raises(ValueError, match="no torch.nn.utils.prune masks"):
        from_torch_prune(CNN())


def test_torch_prune_round_trip():
    src = MLP()
    t = prune(src, "magnitude", 0.5)
    model = MLP()
    to_torch_prune(t, model)
    assert torch_prune.is_pruned(model)
    assert torch.equal(model.layers[0].weight_mask.bool(), t["layers.0.weight"])
    assert bool((model.layers[0].weight[~t["layers.0.weight"]] == 0).all())  # the hook zeroes pruned weights
    assert from_torch_prune(model).equal(t)
    with pytest.raises(TicketError, match="mask shape"):
        to_torch_prune(Ticket({"fc.weight": torch.ones(2, 2)}), MLP())
    with pytest.raises(TicketError, match="not a parameter"):
        to_torch_prune(Ticket({"fc.nothing": torch.ones(2, 2)}), MLP())


def test_open_lth_round_trip(tmp_path):
    t = prune(MLP(), "magnitude", 0.2, metadata={"source_run": "x"})
    path = to_open_lth(t, tmp_path / "level_1" / "main" / "mask.pth")
    raw = torch.load(path, weights_only=True)
    assert set(raw) == set(t) and raw["layers.0.weight"].dtype == torch.int32  # open_lth's Mask.save format
    assert set(raw["layers.0.weight"].unique().tolist()) == {0, 1}
    u = from_open_lth(path)
    assert u.equal(t) and list(u) == list(t)
    assert u.metadata["strategy"] == "open_lth"


def test_open_lth_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        from_open_lth(tmp_path / "mask.pth")
    p = tmp_path / "bad.pth"
    torch.save({"w": torch.tensor([0, 2])}, p)
    with pytest.raises(TicketError, match="only 0 and 1"):
        from_open_lth(p)
    torch.save([torch.ones(2)], p)
    with pytest.raises(TicketError, match="not a dict"):
        from_open_lth(p)
    torch.save({"w": Ticket}, p)  # a pickled class: weights_only refuses to load it
    with pytest.raises(TicketError, match="cannot be read"):
        from_open_lth(p)
    p.write_bytes(b"garbage")
    with pytest.raises(TicketError, match="cannot be read"):
        from_open_lth(p)
