"""Kill -9 a training run mid-way, rerun the same command: the result is bit-identical to an
uninterrupted run; rerunning a finished run does nothing."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from lth_kernels.training.checkpoint import load_checkpoint
from lth_kernels.training.metrics import read_metrics

SCRIPT = Path(__file__).parent / "scripts" / "train_tiny.py"


def _run(out_dir):
    """The same command in this process (only the run that gets killed needs its own process)."""
    from tests.training.scripts.train_tiny import run

    return run(out_dir)


def _strip_timing(recs):
    return [{k: v for k, v in r.items() if k not in ("samples_per_s", "elapsed_s")} for r in recs]


def test_kill9_resume_is_bit_exact(tmp_path):
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "run"
    ref = _run(ref_dir)
    assert ref["step"] == 60 and not ref["skipped"]

    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(run_dir), "0.04"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.01)
    time.sleep(random.uniform(0.0, 0.6))  # somewhere in a later epoch (each is ~0.2 s)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (run_dir / "done.json").exists()
    # read as a resume reads it: a kill between the two renames of save_checkpoint leaves only checkpoint.pt.prev
    killed_at = load_checkpoint(run_dir / "checkpoint.pt")["step"]
    assert 0 < killed_at < 60

    resumed = _run(run_dir)
    assert resumed["resumed_from"] is not None and resumed["resumed_from"] >= killed_at
    final_ref, final = load_file(ref_dir / "step_60.safetensors"), load_file(run_dir / "step_60.safetensors")
    assert final_ref.keys() == final.keys()
    for k in final_ref:
        assert torch.equal(final_ref[k], final[k]), k
    assert torch.equal(load_file(ref_dir / "step_3.safetensors")["0.weight"],
                       load_file(run_dir / "step_3.safetensors")["0.weight"])
    assert _strip_timing(read_metrics(run_dir / "metrics.jsonl")) == _strip_timing(read_metrics(
        ref_dir / "metrics.jsonl"))
    assert resumed["metrics"]["test_acc"] == ref["metrics"]["test_acc"]

    # a finished run is not re-run: nothing is trained or rewritten
    mtimes = {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()}
    again = _run(run_dir)
    assert again["skipped"] and again["step"] == 60
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.iterdir()} == mtimes
