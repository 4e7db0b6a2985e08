"""Faults injected on purpose into the run-directory machinery: a full disk or a permission error while a
file is written, SIGTERM during training, two processes on one run directory, a truncated checkpoint."""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lth_kernels import _io
from lth_kernels.training import checkpoint as ckpt
from lth_kernels.training import rundir
from lth_kernels.training.rundir import atomic_save, atomic_write_json, lock_run_dir, release_run_dirs
from tests.training.test_resume import SCRIPT, _run

ROOT = Path(__file__).resolve().parents[2]


def _no_temp_files(d: Path) -> bool:
    return not [p for p in d.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES])
@pytest.mark.parametrize("writer", ["json", "torch", "safetensors"])
def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch, err, writer):
    path = tmp_path / {"json": "summary.json", "torch": "checkpoint.pt", "safetensors": "mask.safetensors"}[writer]

    def write(value):
        if writer == "json":
            atomic_write_json(path, {"v": value})
        else:
            atomic_save({"v": torch.full((3,), float(value))}, path)

    write(1)
    before = path.read_bytes()

    def broken_fsync(fd):
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(_io.os, "fsync", broken_fsync)  # the disk fills up (or permission goes) mid-write
    with pytest.raises(OSError) as info:
        write(2)
    assert info.value.errno == err
    assert path.read_bytes() == before
    assert _no_temp_files(tmp_path)


def test_a_failed_checkpoint_write_keeps_the_run_resumable(tmp_path, monkeypatch):
    ref = _run(tmp_path / "ref")
    run_dir = tmp_path / "run"
    real, calls = ckpt.atomic_save, {"n": 0}

    def full_disk_at_the_third(obj, path, metadata=None):
        if Path(path).name == ckpt.CHECKPOINT:
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, path, metadata)

    monkeypatch.setattr(ckpt, "atomic_save", full_disk_at_the_third)
    with pytest.raises(OSError, match="No space left"):
        _run(run_dir)
    monkeypatch.setattr(ckpt, "atomic_save", real)
    assert torch.load(run_dir / "checkpoint.pt.prev", weights_only=False)["step"] == 10  # epoch 2 of 5-step epochs
    resumed = _run(run_dir)
    assert resumed["resumed_from"] == 10
    a, b = load_file(tmp_path / "ref" / "step_60.safetensors"), load_file(run_dir / "step_60.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["test_acc"] == ref["metrics"]["test_acc"]
    assert not list(run_dir.glob("checkpoint.pt*"))  # a finished stage keeps no checkpoint
    assert _no_temp_files(run_dir)


def test_sigterm_stops_at_a_step_boundary_and_the_rerun_is_bit_exact(tmp_path):
    ref = _run(tmp_path / "ref")
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "0.04"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while not (run_dir / "metrics.jsonl").exists() or len((run_dir / "metrics.jsonl").read_text().splitlines()) < 2:
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGTERM)
    err = proc.communicate(timeout=120)[1]
    found = re.search(r"TrainingInterrupted: stopped by SIGTERM at step (\d+) of 60", err)
    assert proc.returncode != 0 and found, err[-2000:]
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    stopped = int(found.group(1))
    assert state["step"] == stopped and 0 < stopped < 60  # the checkpoint is the step it stopped at
    assert not (run_dir / "done.json").exists()
    resumed = _run(run_dir)
    assert resumed["resumed_from"] == stopped
    a, b = load_file(tmp_path / "ref" / "step_60.safetensors"), load_file(run_dir / "step_60.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["test_acc"] == ref["metrics"]["test_acc"]


def test_a_truncated_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 5})
    ckpt.save_checkpoint(path, {"step": 10})
    assert ckpt.load_checkpoint(path)["step"] == 10
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a truncated file
    with caplog.at_level("WARNING"):
        assert ckpt.load_checkpoint(path)["step"] == 5
    assert "corrupt" in caplog.text and "sha256" in caplog.text
    (tmp_path / "checkpoint.pt.prev").write_bytes(b"garbage")
    assert ckpt.load_checkpoint(path) is None  # neither is sound: the stage starts over


def test_a_corrupt_checkpoint_resumes_from_the_previous_epoch_bit_exactly(tmp_path):
    ref = _run(tmp_path / "ref")
    run_dir = tmp_path / "run"
    real = ckpt.save_checkpoint
    try:
        def stop_after_two(path, state):
            real(path, state)
            if state["step"] == 10:
                raise KeyboardInterrupt  # the process dies right after the epoch-2 checkpoint

        ckpt.save_checkpoint = stop_after_two
        import lth_kernels.training.trainer as trainer_mod

        trainer_mod.save_checkpoint = stop_after_two
        with pytest.raises(KeyboardInterrupt):
            _run(run_dir)
    finally:
        ckpt.save_checkpoint = real
        trainer_mod.save_checkpoint = real
    data = (run_dir / "checkpoint.pt").read_bytes()
    (run_dir / "checkpoint.pt").write_bytes(data[:100])
    resumed = _run(run_dir)
    assert resumed["resumed_from"] == 5  # the previous checkpoint, at the end of epoch 1
    a, b = load_file(tmp_path / "ref" / "step_60.safetensors"), load_file(run_dir / "step_60.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["metrics"]["test_acc"] == ref["metrics"]["test_acc"]


_HOLDER = """
import sys, time
sys.path.insert(0, {root!r})
from lth_kernels.training.rundir import lock_run_dir
lock_run_dir({path!r})
print("locked", flush=True)
time.sleep(float(sys.argv[1]))
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    code = _HOLDER.format(root=str(ROOT), path=str(path))
    proc = subprocess.Popen([sys.executable, "-c", code, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_process_on_a_run_directory_is_refused_then_waits(tmp_path):
    path = tmp_path / "imp-abc"
    path.mkdir()
    proc = _hold(path, 60)
    try:
        with pytest.raises(FileExistsError, match=rf"in use by pid {proc.pid} .*--wait"):
            lock_run_dir(path)
        lock_run_dir(tmp_path)  # another directory is free
        release_run_dirs()
    finally:
        proc.kill()
        proc.wait()
    # the holder died without releasing (kill -9): its stale lock is taken over
    lock_run_dir(path)
    assert json.loads((path / rundir.LOCK).read_text())["pid"] == os.getpid()
    lock_run_dir(path)  # the same process may take it again
    release_run_dirs()
    assert not (path / rundir.LOCK).exists()
    # --wait: the second one waits for the first to finish
    proc = _hold(path, 1.5)
    rundir.set_lock_wait(True, poll_s=0.05)
    try:
        t0 = time.perf_counter()
        lock_run_dir(path)
        assert time.perf_counter() - t0 > 0.5 and proc.wait(timeout=30) == 0
    finally:
        rundir.set_lock_wait(False)
        release_run_dirs()
        proc.kill()


def test_the_cli_refuses_a_busy_run_directory(tmp_path, capsys):
    from lth_kernels.training.rundir import run_dir
    from lth_kernels.workflows.imp import ImpHparams, main

    hp = ImpHparams.from_preset(levels=1, **{"training.training_steps": "1ep"})
    path = run_dir("imp", hp, tmp_path)
    path.mkdir(parents=True)
    proc = _hold(path, 60)
    try:
        rc = main(["--levels", "1", "--training.training_steps", "1ep", "--root", str(tmp_path), "--verbose"])
    finally:
        proc.kill()
        proc.wait()
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and f"in use by pid {proc.pid}" in err
    assert sorted(p.name for p in path.iterdir()) == [rundir.LOCK]  # nothing else was written
