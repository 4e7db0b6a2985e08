"""Ticket: construction, counts, report, distance/overlap, save/load, model matching and apply."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from lth_kernels.tickets import Ticket, TicketError
from lth_kernels.tickets.ticket import FORMAT
from tests.tickets._models import CNN, MLP, FakeMaskedLinear

A = {"a.weight": torch.tensor([[1, 0, 1], [1, 1, 0]], dtype=torch.bool), "b.weight": torch.tensor([[0, 0], [0, 1]])}
B = {"a.weight": torch.tensor([[1, 1, 1], [0, 1, 0]], dtype=torch.bool), "b.weight": torch.tensor([[0, 0], [1, 1]])}


# --------------------------------------------------------------------------------------------- basics


def test_mapping_and_conversion():
    t = Ticket(A, {"strategy": "magnitude", "level": 3})
    assert list(t) == ["a.weight", "b.weight"] and len(t) == 2
    assert t["b.weight"].dtype == torch.bool and t["b.weight"].tolist() == [[False, False], [False, True]]
    assert t.metadata["level"] == "3" and "created" in t.metadata  # values become strings
    assert isinstance(t.to_dict(), dict) and "density" in repr(t)


def test_counts_and_report_by_hand():
    t = Ticket(A)
    # a: 4 of 6 kept, b: 1 of 4 kept
    assert (t.num_total, t.num_kept) == (10, 5)
    assert t.density == pytest.approx(0.5) and t.sparsity == pytest.approx(0.5)
    r = t.report()
    assert r["total"] == 10 and r["unpruned"] == 5
    assert r["layers"]["a.weight"] == {"shape": [2, 3], "kept": 4, "total": 6, "density": pytest.approx(4 / 6)}
    assert r["layers"]["b.weight"] == {"shape": [2, 2], "kept": 1, "total": 4, "density": 0.25}
    json.dumps(r)  # the report is the content of sparsity_report.json
    # no "excluded" metadata: every entry is prunable
    assert r["prunable"] == {"kept": 5, "total": 10, "density": 0.5, "sparsity": 0.5,
                             "names": ["a.weight", "b.weight"]} and r["excluded"] == []
    e = t.with_metadata(excluded="b.weight")
    assert e.excluded == ("b.weight",) and e.prunable_density == pytest.approx(4 / 6)
    assert e.prunable_sparsity == pytest.approx(2 / 6) and e.sparsity == pytest.approx(0.5)
    assert e.report()["prunable"]["kept"] == 4 and e.report()["excluded"] == ["b.weight"]


def test_prune_names_both_sparsities(tmp_path):
    """After a 20 % prune of a model whose output layer is excluded: prunable_sparsity is the 20 %,
    sparsity (all entries) is lower; both survive save/load."""
    from lth_kernels.tickets import prune
    from tests.tickets._models import MLP

    t = prune(MLP(), "magnitude", 0.2)
    assert t.excluded == ("fc.weight",)
    prunable = 20 * 30 + 30 * 16
    assert t.prunable_sparsity == pytest.approx(math.ceil(0.2 * prunable) / prunable)
    assert t.sparsity == pytest.approx(math.ceil(0.2 * prunable) / (prunable + 16 * 5))
    back = Ticket.load(t.save(tmp_path / "m.safetensors"))
    assert back.excluded == t.excluded and back.report() == t.report()


def test_distance_overlap_equal_by_hand():
    ta, tb = Ticket(A), Ticket(B)
    # a differs at (0,1), (1,0): 2; b differs at (1,0): 1 -> 3 of 10 entries
    assert ta.distance(tb) == pytest.approx(0.3)
    assert ta.distance(ta) == 0.0
    # kept: a: A {00,02,10,11}, B {00,01,02,11} -> inter 3, union 5; b: A {11}, B {10,11} -> inter 1, union 2
    assert ta.overlap(tb) == pytest.approx(4 / 7)
    assert ta.overlap(ta) == 1.0
    assert ta.equal(Ticket(A)) and not ta.equal(tb)
    assert ta.equal({k: v.int() for k, v in A.items()})  # any 0/1 mapping compares
    assert not ta.equal({"a.weight": A["a.weight"]})
    assert not ta.equal(Ticket(A, {"level": "2"}), metadata=True)


def test_distance_layout_mismatch():
    with pytest.raises(TicketError, match="different parameters"):
        Ticket(A).distance({"a.weight": A["a.weight"]})
    with pytest.raises(TicketError, match="shapes differ"):
        Ticket(A).overlap({"a.weight": torch.ones(3, 2, dtype=torch.bool), "b.weight": A["b.weight"]})


def test_bad_masks():
    with pytest.raises(ValueError, match="only 0 and 1"):
        Ticket({"w": torch.tensor([0.0, 0.5])})
    with pytest.raises(TypeError, match="expected a tensor"):
        Ticket({"w": [1, 0]})
    with pytest.raises(TypeError, match="parameter name"):
        Ticket({3: torch.ones(2)})


# --------------------------------------------------------------------------------------------- files


def test_save_load_round_trip(tmp_path):
    masks = {"z.weight": torch.rand(7, 5) > 0.5, "a.weight": torch.rand(3, 2, 3, 3) > 0.3}  # non-sorted order
    t = Ticket(masks, {"strategy": "magnitude", "level": "4", "model": "MLP", "source_run": "runs/imp-1",
                       "structure": "unstructured", "seed": 7})
    path = t.save(tmp_path / "sub" / "mask.safetensors")
    assert path.exists() and not list(path.parent.glob(".*tmp"))  # atomic write leaves no temp file
    u = Ticket.load(path)
    assert list(u) == ["z.weight", "a.weight"]  # the producer's order survives safetensors' sorting
    assert u.equal(t)
    for key in ("strategy", "level", "model", "source_run", "structure", "seed", "created"):
        assert u.metadata[key] == t.metadata[key]
    assert u.metadata["format"] == FORMAT and u.metadata["format_version"] == "1"
    assert u.metadata["lth_kernels_version"] and u.metadata["sparsity"] == f"{t.sparsity:.6f}"
    assert "order" not in u.metadata


def test_load_missing_and_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Ticket.load(tmp_path / "nope.safetensors")
    bad = tmp_path / "garbage.safetensors"
    bad.write_bytes(b"\x00\x01not a safetensors file at all")
    with pytest.raises(TicketError, match="garbage.safetensors is corrupt") as e:
        Ticket.load(bad)
    assert "\n" not in str(e.value)
    good = Ticket(A).save(tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-3])
    with pytest.raises(TicketError, match="truncated.safetensors"):
        Ticket.load(truncated)


def test_load_foreign_or_inconsistent_files(tmp_path):
    p = tmp_path / "weights.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(p))
    with pytest.raises(TicketError, match="not an lth_kernels ticket"):
        Ticket.load(p)
    meta = {"format": FORMAT, "format_version": "1"}
    save_file({"w": torch.ones(2, 2)}, str(p), metadata=meta)
    with pytest.raises(TicketError, match="dtype torch.float32"):
        Ticket.load(p)
    save_file({"w": torch.ones(2, 2, dtype=torch.bool)}, str(p), metadata={**meta, "format_version": "99"})
    with pytest.raises(TicketError, match="format_version '99'"):
        Ticket.load(p)
    save_file({"w": torch.ones(2, 2, dtype=torch.bool)}, str(p), metadata={**meta, "shapes_sha256": "0" * 16})
    with pytest.raises(TicketError, match="shapes_sha256"):
        Ticket.load(p)
    save_file({"w": torch.ones(2, 2, dtype=torch.bool)}, str(p), metadata={**meta, "sparsity": "0.5"})
    with pytest.raises(TicketError, match="metadata sparsity"):
        Ticket.load(p)


# --------------------------------------------------------------------------------------------- models


def test_from_model_and_ones():
    model = MLP()
    model.layers[1] = FakeMaskedLinear(30, 16)
    mask = torch.rand(16, 30) > 0.5
    model.layers[1].set_mask(mask)
    t = Ticket.from_model(model)
    # every maskable weight, the default-excluded output layer included (open_lth keeps it, all ones)
    assert list(t) == ["layers.0.weight", "layers.1.weight", "fc.weight"]
    assert torch.equal(t["layers.1.weight"], mask) and bool(t["layers.0.weight"].all()) and bool(t["fc.weight"].all())
    assert t.metadata["model"] == "MLP"
    ones = Ticket.ones(CNN(), exclude=("fc",))
    assert list(ones) == ["conv1.weight", "conv2.weight"] and ones.density == 1.0
    assert ones["conv2.weight"].shape == (10, 6, 3, 3) and ones.metadata["level"] == "0"


def test_match_names_shapes_and_prefixes():
    model = MLP()
    t = Ticket.ones(model)
    assert t.match(model) == {n: n for n in t}
    # DataParallel (`module.`) and torch.compile (`_orig_mod.`) wrappers
    wrapped = nn.DataParallel(model)
    assert t.match(wrapped)["fc.weight"] == "module.fc.weight"
    compiled = torch.compile(model)
    assert t.match(compiled)["layers.0.weight"] == "_orig_mod.layers.0.weight"
    assert Ticket.from_model(wrapped).equal(t)
    prefixed = Ticket({"module." + k: v for k, v in t.items()})
    assert prefixed.match(model)["module.fc.weight"] == "fc.weight"


def test_match_errors():
    model = MLP()
    with pytest.raises(TicketError, match=r"mask shape \(3, 3\) != weight shape \(5, 16\)"):
        Ticket({"fc.weight": torch.ones(3, 3)}).match(model)
    with pytest.raises(TicketError, match="'nope.weight' is not a parameter"):
        Ticket({"nope.weight": torch.ones(3, 3)}).match(model)
    with pytest.raises(TicketError, match="'fc.bias' is not the weight of a maskable layer"):
        Ticket({"fc.bias": torch.ones(5)}).match(model)
    with pytest.raises(TicketError, match="no mask for"):
        Ticket({"fc.weight": torch.ones(5, 16)}).match(model, strict=True)


def test_apply_checks_before_sparsify():
    # The shape check runs before lth_kernels.nn is touched, so it holds with or without sparsify.
    with pytest.raises(TicketError, match="mask shape"):
        Ticket({"fc.weight": torch.ones(3, 3)}).apply(MLP())


def test_apply_masks_the_model():
    torch.manual_seed(0)
    model = MLP()
    t = Ticket({n: torch.rand(p.shape) > 0.4 for n, p in model.named_parameters() if n.endswith("weight")},
               {"strategy": "test"})
    x = torch.randn(4, 20)
    ref = MLP()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in t:
                p.mul_(t[n])
    out = t.apply(model)
    model = out if isinstance(out, nn.Module) else model
    for name, module in model.named_modules():
        if f"{name}.weight" in t:
            assert hasattr(module, "mask") and hasattr(module, "set_mask"), f"{name} was not swapped"
            assert torch.equal(module.mask.cpu(), t[f"{name}.weight"])
            assert bool((module.weight[~module.mask] == 0).all())
    torch.testing.assert_close(model(x), ref(x))
    assert Ticket.from_model(model).equal(t)
    # state_dict stays the dense model's: it loads into a plain MLP
    MLP().load_state_dict(model.state_dict())


def test_apply_wrapped_model():
    model = MLP()
    t = Ticket({n: torch.rand(p.shape) > 0.5 for n, p in model.named_parameters() if n.endswith("weight")})
    wrapped = nn.DataParallel(model)
    t.apply(wrapped)
    assert Ticket.from_model(model).equal(t)


def test_save_report(tmp_path):
    t = Ticket(A)
    path = t.save_report(tmp_path / "level_1" / "sparsity_report.json")
    assert json.loads(path.read_text()) == json.loads(json.dumps(t.report()))


def test_ticket_does_not_alias_layer_masks():
    model = nn.Sequential(FakeMaskedLinear(4, 3))
    t = Ticket.from_model(model)
    model[0].set_mask(torch.zeros(3, 4, dtype=torch.bool))
    assert bool(t["0.weight"].all())


def _write_raw(path, masks, meta):
    from safetensors.torch import save_file

    save_file(masks, str(path), metadata=meta)


def test_load_refuses_nan_inf_and_non_binary_masks(tmp_path):
    good = Ticket({"w": torch.tensor([[True, False], [False, True]])})
    path = tmp_path / "t.safetensors"
    good.save(path)
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    meta.pop("shapes_sha256", None)
    meta.pop("sparsity", None)
    for value, why in ((float("nan"), "NaN"), (float("inf"), "inf"), (0.5, "float32")):
        bad = tmp_path / f"bad_{why}.safetensors"
        _write_raw(bad, {"w": torch.tensor([[1.0, 0.0], [value, 1.0]])}, meta)
        with pytest.raises(TicketError, match=f"'w'.*{why}"):
            Ticket.load(bad)
    # a bool tensor whose bytes were altered to 2: refused, not read as True
    raw = tmp_path / "raw.safetensors"
    good.save(raw)
    data = bytearray(raw.read_bytes())
    assert data[-4:] == bytes([1, 0, 0, 1])  # the mask's bytes end the file
    data[-3] = 2
    raw.write_bytes(bytes(data))
    with pytest.raises(TicketError, match="byte values other than 0/1.*2"):
        Ticket.load(raw)


# ------------------------------------------------------------------------------------------ contracts


def _t(meta=None):
    return Ticket({"a": torch.tensor([[True, False], [True, True]]), "b": torch.tensor([False, False])}, meta)


def test_repr_names_counts_and_the_known_metadata():
    assert repr(_t({"strategy": "magnitude", "structure": "2:4", "level": 3, "other": "x"})) == \
        "Ticket(2 tensors, density 0.5000, 3/6 kept, strategy=magnitude, structure=2:4, level=3)"
    assert repr(_t()) == "Ticket(2 tensors, density 0.5000, 3/6 kept)"


def test_report_top_level_counts():
    t = Ticket({"a": torch.tensor([True, False, False, False]), "fc": torch.tensor([True, True])},
               {"excluded": "fc"})
    r = t.report()
    assert (r["total"], r["unpruned"], r["density"], r["sparsity"]) == (6, 3, 0.5, 0.5)
    assert r["prunable"] == {"kept": 1, "total": 4, "density": 0.25, "sparsity": 0.75, "names": ["a"]}
    assert r["excluded"] == ["fc"]
    assert r["layers"]["a"] == {"shape": [4], "kept": 1, "total": 4, "density": 0.25}
    empty = Ticket({"e": torch.zeros(0, dtype=torch.bool)}).report()
    assert (empty["density"], empty["sparsity"], empty["layers"]["e"]["density"]) == (1.0, 0.0, 1.0)


def test_metadata_is_strings_with_a_utc_creation_time():
    t = _t({"level": 3, "name": "x"})
    assert t.metadata["level"] == "3" and t.metadata["name"] == "x"
    assert t.metadata["created"].endswith("+00:00")
    with pytest.raises(TypeError, match=r"^metadata: keys must be strings, got 3$"):
        Ticket({"a": torch.ones(2, dtype=torch.bool)}, {3: "x"})


def test_bad_masks_name_the_entry_and_the_type():
    with pytest.raises(TypeError, match=r"^masks: expected a mapping name -> tensor, got list$"):
        Ticket([torch.ones(2)])
    with pytest.raises(TypeError, match=r"^masks\['w'\]: expected a tensor, got list$"):
        Ticket({"w": [1, 0]})
    with pytest.raises(ValueError, match=r"^masks\['w'\]: a mask holds only 0 and 1, got values "
                                         r"\[0\.0, 1\.0, 2\.0, 3\.0, 4\.0\]$"):
        Ticket({"w": torch.arange(8.0)})


def test_comparisons_check_the_layout_with_one_line_errors():
    t = _t()
    with pytest.raises(TypeError, match=r"^other: expected a Ticket or mapping name -> mask, got int$"):
        t.distance(3)
    other = {k: torch.ones(2, dtype=torch.bool) for k in ("b", "c", "d", "e", "f")}
    for what in ("distance", "overlap"):
        with pytest.raises(TicketError, match=rf"^{what}: the tickets mask different parameters \(only here: "
                                              r"\['a'\], only in other: \['c', 'd', 'e'\]\)$"):
            getattr(t, what)(other)
    empty = Ticket({"e": torch.zeros(0, dtype=torch.bool)})
    assert empty.distance(empty) == 0.0 and empty.overlap(empty) == 1.0
    nothing = Ticket({"z": torch.zeros(3, dtype=torch.bool)})
    assert nothing.overlap(nothing) == 1.0  # both keep nothing


def test_equal_compares_shapes_values_and_metadata_but_not_creation_time():
    a = _t({"strategy": "x"})
    b = Ticket(a.to_dict(), {"strategy": "x", "created": "2000-01-01T00:00:00+00:00"})
    assert a.equal(b, metadata=True)
    assert not a.equal(Ticket(a.to_dict(), {"strategy": "y"}), metadata=True)
    assert not a.equal({"a": a["a"], "b": torch.zeros(3, dtype=torch.bool)})  # a shape differs
    assert not a.equal({"a": a["a"], "b": [False, False]})  # not a tensor
    assert a.equal({"a": a["a"].int(), "b": a["b"]})  # 0/1 of another dtype
    assert not a.equal(a.to_dict(), metadata=True)  # a plain mapping has no metadata


def test_from_model_and_ones_metadata_and_dtypes():
    model = MLP()
    f, o = Ticket.from_model(model), Ticket.ones(model)
    assert (f.metadata["strategy"], f.metadata["structure"]) == ("from_model", "unstructured")
    assert (o.metadata["strategy"], o.metadata["structure"], o.metadata["level"]) == ("dense", "unstructured", "0")
    assert f.metadata["model"] == o.metadata["model"] == "MLP"
    assert all(m.dtype == torch.bool and bool(m.all()) for m in list(f.values()) + list(o.values()))
    names = list(o)
    ex = Ticket.from_model(model, exclude=(names[0],))
    assert list(ex) == names[1:]  # later layers are still covered


def test_saved_tickets_record_the_package_version(tmp_path):
    import lth_kernels

    p = _t().save(tmp_path / "t.safetensors")
    assert Ticket.load(p).metadata["lth_kernels_version"] == lth_kernels.__version__


def test_load_errors_are_one_line_and_name_what_is_wrong(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"not a safetensors file\n at all")
    with pytest.raises(TicketError) as e:
        Ticket.load(p)
    cause = " ".join(str(e.value.__cause__).split())
    assert str(e.value) == f"ticket file {p} is corrupt or not a safetensors file: {cause}" and cause

    save_file({"w": torch.ones(2, dtype=torch.bool)}, str(p), metadata={"format": "other"})
    with pytest.raises(TicketError, match=r"is not an lth_kernels ticket \(metadata 'format' is 'other', expected "
                                          r"'lth_kernels\.ticket'\)$"):
        Ticket.load(p)
    save_file({"w": torch.ones(2, dtype=torch.bool)}, str(p), metadata={"format": FORMAT})
    with pytest.raises(TicketError, match=r"has format_version None; this lth_kernels \(.*\) reads versions 1\.\.1$"):
        Ticket.load(p)
    for dtype_values, why in ((torch.tensor([1, 0]), "torch.int64"), (torch.tensor([1.0, 0.0]), "torch.float32"),
                              (torch.tensor([1.0, float("nan")]), "torch.float32 holding NaN"),
                              (torch.tensor([1.0, float("inf")]), "torch.float32 holding inf")):
        save_file({"w": dtype_values}, str(p), metadata={"format": FORMAT, "format_version": "1"})
        with pytest.raises(TicketError, match=rf"tensor 'w' has dtype {why}, expected torch.bool$"):
            Ticket.load(p)
    save_file({"w": torch.tensor([0, 1, 2, 7], dtype=torch.uint8).view(torch.bool)}, str(p),
              metadata={"format": FORMAT, "format_version": "1"})
    with pytest.raises(TicketError, match=r"mask 'w' holds byte values other than 0/1 \(\[2, 7\]\)$"):
        Ticket.load(p)
