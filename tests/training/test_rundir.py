import json
from dataclasses import dataclass

import pytest
import torch
from safetensors.torch import load_file

from lth_kernels.training.checkpoint import load_weights, save_weights, strip_prefixes
from lth_kernels.training.hparams import DatasetHparams, Hparams, TrainingHparams, hfield
from lth_kernels.training.rundir import atomic_save, atomic_write_json, prepare_run_dir, run_dir, stage_done
from tests.training.tiny import tiny_mlp


@dataclass(frozen=True)
class WfHparams(Hparams):
    """Workflow hparams."""

    training: TrainingHparams = hfield(default_factory=TrainingHparams)
    levels: int = hfield(2, "levels")


@dataclass(frozen=True)
class DataWfHparams(Hparams):
    """Workflow hparams with a data set."""

    dataset: DatasetHparams = hfield(default_factory=DatasetHparams)
    training: TrainingHparams = hfield(default_factory=TrainingHparams)


def test_run_dir_named_by_hash_and_hparams_written_once(tmp_path):
    hp = WfHparams.from_dict({"training": {"lr": 0.3}})
    path = prepare_run_dir("imp", hp, tmp_path)
    assert path == run_dir("imp", hp, tmp_path) == tmp_path / f"imp-{hp.hashname()}"
    assert WfHparams.from_json((path / "hparams.json").read_text()) == hp
    assert prepare_run_dir("imp", hp, tmp_path) == path  # same hparams: fine
    assert sorted(p.name for p in path.iterdir() if p.name != ".lock") == ["hparams.json"]  # no temp files
    other = WfHparams.from_dict({"training": {"lr": 0.4}})
    (tmp_path / f"imp-{other.hashname()}").mkdir()
    atomic_write_json(tmp_path / f"imp-{other.hashname()}" / "hparams.json", hp.to_dict())
    with pytest.raises(FileExistsError, match="holds other hparams"):
        prepare_run_dir("imp", other, tmp_path)


def test_run_name_ignores_where_the_data_lives_and_how_often_it_is_evaluated(tmp_path):
    base = DataWfHparams.from_dict({"dataset": {"name": "cifar10"}, "training": {"lr": 0.3}})
    moved = base.with_overrides({"dataset.data_dir": "/elsewhere", "dataset.download": True,
                                 "training.eval_every": "3ep"})
    assert moved.hashname() == base.hashname() and moved.identity() == base.identity()
    assert moved.legacy_hashname() != base.legacy_hashname() == base.hashname()
    assert base.with_overrides({"dataset.batch_size": 64}).hashname() != base.hashname()  # a real change renames
    # The same run, found and resumed after the data moved: hparams.json of the old place does not conflict.
    assert prepare_run_dir("wf", base, tmp_path) == prepare_run_dir("wf", moved, tmp_path)


def test_runs_named_by_the_old_hash_are_still_found(tmp_path):
    hp = DataWfHparams.from_dict({"dataset": {"data_dir": "/data"}, "training": {"eval_every": "2ep"}})
    old = tmp_path / f"wf-{hp.legacy_hashname()}"  # a run made when data_dir and eval_every named the run
    old.mkdir()
    atomic_write_json(old / "hparams.json", hp.to_dict())
    assert run_dir("wf", hp, tmp_path) == prepare_run_dir("wf", hp, tmp_path) == old
    new = tmp_path / f"wf-{hp.hashname()}"
    assert not new.exists()
    new.mkdir()  # once a directory under the new name exists it wins
    assert run_dir("wf", hp, tmp_path) == new


def test_atomic_writes_and_stage_done(tmp_path):
    target = tmp_path / "sub" / "out.json"
    assert not stage_done(target)
    atomic_write_json(target, {"a": 1})
    assert stage_done(target) and json.loads(target.read_text()) == {"a": 1}
    atomic_save({"w": torch.arange(6.0).view(2, 3)}, tmp_path / "w.safetensors", metadata={"step": "3"})
    assert torch.equal(load_file(tmp_path / "w.safetensors")["w"], torch.arange(6.0).view(2, 3))
    atomic_save({"x": 1}, tmp_path / "x.pt")
    assert torch.load(tmp_path / "x.pt") == {"x": 1}
    with pytest.raises(Exception):  # noqa: B017  (a failed save leaves neither the target nor a temp file)
        atomic_save({"w": "not a tensor"}, tmp_path / "bad.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "w.safetensors", "x.pt"]


def test_weights_round_trip_strips_wrapper_prefixes(tmp_path):
    a, b = tiny_mlp(), tiny_mlp()
    save_weights(a, tmp_path / "a.safetensors", {"step": 5})
    load_weights(b, tmp_path / "a.safetensors")
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert "0.mask" not in load_file(tmp_path / "a.safetensors")  # masks live in the ticket file
    assert strip_prefixes({"module._orig_mod.0.weight": 1}) == {"0.weight": 1}
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(b, tmp_path / "missing.safetensors")


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_writes_respect_the_umask(tmp_path, umask):
    """Files written through a temp file get the mode a plain open() gives (mkstemp alone makes them 0600)."""
    import os
    import stat

    from lth_kernels.tickets import Ticket
    from lth_kernels.training.metrics import MetricsLogger

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"x": 1})
        atomic_save({"w": torch.zeros(2)}, tmp_path / "w.safetensors")
        atomic_save({"w": torch.zeros(2)}, tmp_path / "w.pt")
        with open(tmp_path / "plain.txt", "w") as f:
            f.write("x")
        MetricsLogger(tmp_path / "metrics.jsonl").log({"step": 1})
        Ticket.ones(tiny_mlp()).save(tmp_path / "mask.safetensors")
    finally:
        os.umask(old)
    want = 0o666 & ~umask
    for name in ("a.json", "w.safetensors", "w.pt", "plain.txt", "metrics.jsonl", "mask.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
