"""Ticket edge contracts: the file's documented metadata (torch version, names/shapes hash), strict matching and
what ``apply`` passes on, metadata values that are ``str`` subclasses, and the limits of the one-line errors."""

from __future__ import annotations

import enum
import hashlib
import json
import sys

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lth_kernels.tickets import Ticket, TicketError
from lth_kernels.tickets.ticket import FORMAT
from tests.tickets._models import MLP


def _meta(path):
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata())


def _chain(n):
    """n Linear layers 4 -> 4: more maskable weights than an error message lists (8)."""
    return nn.Sequential(*(nn.Linear(4, 4) for _ in range(n)))


# --------------------------------------------------------------------------------------------- metadata


def test_str_subclass_metadata_keeps_its_value():
    # a (str, Enum) member: str(Strategy.MAG) is "Strategy.MAG", its value "magnitude" (StrEnum's str is its value)
    class Strategy(str, enum.Enum):  # noqa: UP042
        MAG = "magnitude"

    t = Ticket({"w": torch.ones(2, dtype=torch.bool)}, {"strategy": Strategy.MAG, "level": 2})
    assert t.metadata["strategy"] == "magnitude" and t.metadata["level"] == "2"


def test_saved_file_records_the_torch_release_without_the_local_build_suffix(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.5.1+cu124")
    p = Ticket({"w": torch.ones(2, dtype=torch.bool)}).save(tmp_path / "t.safetensors")
    assert _meta(p)["torch_version"] == "2.5.1"
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert _meta(Ticket({"w": torch.ones(2, dtype=torch.bool)}).save(p))["torch_version"] == "2.6.0"


def test_a_package_without_a_version_is_recorded_as_unknown(tmp_path, monkeypatch):
    import lth_kernels

    monkeypatch.delattr(lth_kernels, "__version__")
    p = Ticket({"w": torch.ones(2, dtype=torch.bool)}).save(tmp_path / "t.safetensors")
    assert _meta(p)["lth_kernels_version"] == "unknown"
    assert Ticket.load(p).metadata["lth_kernels_version"] == "unknown"


def _recipe_hash(shapes):
    """The documented shapes_sha256: sha256 over ``name:(shape);`` for the names in sorted order, 16 hex digits."""
    text = "".join(f"{n}:{s};" for n, s in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def test_shapes_sha256_is_the_documented_hash_of_names_and_shapes(tmp_path):
    t = Ticket({"z.weight": torch.ones(3, 2, dtype=torch.bool), "a.weight": torch.zeros(4, dtype=torch.bool)})
    meta = _meta(t.save(tmp_path / "t.safetensors"))
    expected = _recipe_hash({"z.weight": (3, 2), "a.weight": (4,)})
    assert meta["shapes_sha256"] == expected and len(expected) == 16
    # a file another tool wrote with that recipe loads
    other = tmp_path / "other.safetensors"
    save_file({"b": torch.tensor([True, False]), "a": torch.ones(2, 2, dtype=torch.bool)}, str(other),
              metadata={"format": FORMAT, "format_version": "1",
                        "shapes_sha256": _recipe_hash({"a": (2, 2), "b": (2,)})})
    u = Ticket.load(other)
    assert u.num_kept == 5 and u.num_total == 6


def test_save_creates_missing_parent_directories(tmp_path):
    p = Ticket({"w": torch.ones(2, dtype=torch.bool)}).save(tmp_path / "runs" / "level_3" / "main" / "t.safetensors")
    assert p.is_file() and Ticket.load(p).num_kept == 2


def test_sparsity_report_has_one_entry_per_line(tmp_path):
    t = Ticket({"a.weight": torch.tensor([True, False, True, True])})
    text = t.save_report(tmp_path / "sparsity_report.json").read_text()
    assert json.loads(text)["unpruned"] == 3
    lines = text.splitlines()
    assert any(line.strip() == '"total": 4,' for line in lines)  # greppable: a key and its value on a line
    assert any(line.strip() == '"unpruned": 3,' for line in lines) and text.endswith("}\n")


# --------------------------------------------------------------------------------------------- errors


def test_layout_errors_list_at_most_three_names_on_each_side():
    t = Ticket({k: torch.ones(2, dtype=torch.bool) for k in ("a", "b", "c", "d", "e")})
    with pytest.raises(TicketError, match=r"^distance: the tickets mask different parameters \(only here: "
                                          r"\['a', 'b', 'c'\], only in other: \['z'\]\)$"):
        t.distance({"e": torch.ones(2, dtype=torch.bool), "z": torch.ones(2, dtype=torch.bool)})


def test_comparing_with_a_non_binary_mapping_names_the_entry():
    t = Ticket({"a": torch.ones(2, dtype=torch.bool), "b": torch.ones(2, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"^masks\['b'\]: a mask holds only 0 and 1, got values \[0, 2\]$"):
        t.overlap({"a": torch.ones(2, dtype=torch.bool), "b": torch.tensor([0, 2])})


def test_load_lists_at_most_five_bad_byte_values(tmp_path):
    p = tmp_path / "t.safetensors"
    raw = torch.tensor([0, 1, 9, 8, 7, 6, 5, 4, 3, 2], dtype=torch.uint8).view(torch.bool)
    save_file({"w": raw}, str(p), metadata={"format": FORMAT, "format_version": "1"})
    with pytest.raises(TicketError, match=r"mask 'w' holds byte values other than 0/1 \(\[2, 3, 4, 5, 6\]\)$"):
        Ticket.load(p)


def test_load_refuses_a_hash_mismatch_with_a_one_line_error(tmp_path):
    p = tmp_path / "t.safetensors"
    save_file({"w": torch.ones(2, dtype=torch.bool)}, str(p),
              metadata={"format": FORMAT, "format_version": "1", "shapes_sha256": "0" * 16})
    with pytest.raises(TicketError) as e:
        Ticket.load(p)
    assert str(e.value) == (f"ticket file {p}: names/shapes do not match its shapes_sha256 metadata "
                            "(the file was altered or is truncated)")


# --------------------------------------------------------------------------------------------- models


def test_match_is_lenient_by_default_and_strict_names_the_missing_weights():
    model = _chain(10)
    partial = Ticket({"0.weight": torch.ones(4, 4), "5.weight": torch.ones(4, 4)})
    assert partial.match(model) == {"0.weight": "0.weight", "5.weight": "5.weight"}  # strict=False by default
    with pytest.raises(TicketError) as e:
        partial.match(model, strict=True)
    missing = ["1.weight", "2.weight", "3.weight", "4.weight", "6.weight", "7.weight", "8.weight", "9.weight"]
    assert str(e.value) == f"ticket has no mask for {missing} (strict=True)"  # the first 8 of 8
    with pytest.raises(TicketError) as e:
        Ticket({"9.weight": torch.ones(4, 4)}).match(_chain(11), strict=True)
    assert str(e.value) == f"ticket has no mask for {[f'{i}.weight' for i in range(8)]} (strict=True)"
    full = Ticket.ones(model)
    assert full.match(model, strict=True) == {f"{i}.weight": f"{i}.weight" for i in range(10)}


def test_match_error_for_a_non_maskable_parameter_lists_eight_maskable_weights():
    with pytest.raises(TicketError) as e:
        Ticket({"3.bias": torch.ones(4)}).match(_chain(10))
    assert str(e.value) == ("ticket entry '3.bias' is not the weight of a maskable layer (nn.Linear / nn.Conv2d); "
                            f"maskable weights: {[f'{i}.weight' for i in range(8)]}")


def test_apply_passes_strict_on_and_is_lenient_by_default():
    partial = {"0.weight": torch.tensor([[True, False, True, True]] * 4)}
    model = _chain(3)
    Ticket(partial).apply(model)  # a ticket for some layers masks those layers only
    assert hasattr(model[0], "mask") and not hasattr(model[1], "mask")
    assert bool((model[0].weight[:, 1] == 0).all())
    with pytest.raises(TicketError, match=r"no mask for \['1.weight', '2.weight'\] \(strict=True\)"):
        Ticket(partial).apply(_chain(3), strict=True)


def test_apply_passes_the_optimizer_on_and_zeroes_its_state_at_pruned_positions():
    torch.manual_seed(0)
    model = MLP()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(8, 20)).sum().backward()
    opt.step()  # momentum at every position
    w = model.layers[0].weight
    before = opt.state[w]["momentum_buffer"].clone()
    assert bool((before[:, :5] != 0).any())
    keep = torch.ones(30, 20, dtype=torch.bool)
    keep[:, :5] = False
    Ticket({"layers.0.weight": keep}).apply(model, optimizer=opt)
    assert bool((opt.state[w]["momentum_buffer"][:, :5] == 0).all())
    assert torch.equal(opt.state[w]["momentum_buffer"][:, 5:], before[:, 5:])  # kept positions keep theirs


def test_apply_without_the_nn_package_says_what_it_needs(monkeypatch):
    monkeypatch.setitem(sys.modules, "lth_kernels.nn", None)  # `import lth_kernels.nn` now fails
    with pytest.raises(ImportError, match=r"^Ticket.apply needs lth_kernels.nn.sparsify, which is unavailable \("):
        Ticket({"0.weight": torch.ones(4, 4)}).apply(_chain(1))


# --------------------------------------------------------------------------------------------- devices


@pytest.mark.gpu
def test_cuda_masks_are_stored_on_the_cpu_and_compare_with_cpu_masks():
    on_gpu = {"a": torch.tensor([True, False], device="cuda"), "b": torch.tensor([1.0, 0.0], device="cuda")}
    t = Ticket(on_gpu)
    assert all(m.device.type == "cpu" for m in t.values())
    assert t["b"].dtype == torch.bool and t["b"].tolist() == [True, False]
    assert Ticket({"a": torch.tensor([True, False]), "b": torch.tensor([True, False])}).equal(on_gpu)
