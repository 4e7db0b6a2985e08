"""2-rank gloo DDP run on CPU under torchrun: masks decided on rank 0 reach every rank, the ranks end with
identical masks and weights, pruned weights stay zero, only rank 0 writes files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lth_kernels.training.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).parent / "scripts" / "ddp_tiny.py"


@pytest.mark.torchrun
def test_two_rank_gloo_masked_training(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPT), str(tmp_path)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=240)
    assert res.returncode == 0, res.stderr[-4000:]
    out = json.loads((tmp_path / "result.json").read_text())
    assert out["n_masks"] == 1
    assert out["masks_equal_after_broadcast"] and out["masks_equal"] and out["params_equal"]
    assert 0.2 < out["density"] < 0.8
    assert out["pruned_nonzero"] == [0, 0]
    assert out["ddp_ignored"] == ["0.mask"]  # masks stay out of DDP's buffer sync, nothing else does
    assert "broadcast_buffers" not in res.stderr  # no deprecated DDP argument
    assert out["step"] == 18 and out["test_n"] == 40  # 96 // 16 steps per epoch; the whole test set, sharded
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 6, 12, 18]  # one writer: no duplicated lines
