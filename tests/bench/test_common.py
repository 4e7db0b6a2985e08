"""The benchmark plumbing: result files and the scripts' CPU smoke modes (no timing is asserted)."""

import json
from pathlib import Path

import pytest

from bench import block_sparse, cpu_sparse, masked_matmul
from bench.common import rows_json, write_results

from ..conftest import require_live


def test_write_results_one_row_per_line(tmp_path):
    env = {"device": "cpu", "date": "2026-01-02", "torch": "x"}
    rows = [{"shape": "a", "us": 1.5, "x": None}, {"shape": "b", "us": 2.0, "x": 3}]
    path = write_results("stem", rows, env, out_dir=str(tmp_path))
    assert path.endswith("2026-01-02-cpu-stem.json")
    text = Path(path).read_text()
    assert json.loads(text) == {"env": env, "rows": rows}
    assert text.count("\n") == len(rows) + 3 and rows_json(env, rows) == text
    md = (tmp_path / "2026-01-02-cpu-stem.md").read_text().splitlines()
    assert md[-2:] == ["| a | 1.5 |  |", "| b | 2 | 3 |"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-01-02-cpu-stem.json", "2026-01-02-cpu-stem.md"]


@pytest.mark.parametrize("script", [block_sparse, masked_matmul])
def test_gpu_scripts_smoke_on_cpu(script, capsys, tmp_path):
    table = tmp_path / "table.json"
    extra = ["--table", str(table)] if script is masked_matmul else []
    assert script.main(["--smoke", "--no-write", *extra]) == 0
    out = capsys.readouterr().out
    assert "'ours_ms'" in out and "smoke" in out
    if extra:  # the regeneration path of the dispatch table runs end to end (interpreter timings: meaningless)
        entries = json.loads(table.read_text())["entries"]
        assert [(e["shape"], e["batch"], e["in_features"], e["out_features"]) for e in entries] == [
            ("smoke.tiny", 64, 96, 64)]


def test_masked_matmul_table_from_rows(tmp_path):
    import torch

    from lth_kernels.ops import _masked_matmul_dispatch as D

    path = tmp_path / "table.json"
    path.write_text(json.dumps({"entries": [{"dtype": "float16", "batch": 1, "in_features": 2, "out_features": 3,
                                             "crossover": 0.1}]}))
    base = {"model": "vit", "layer": "fc1", "M": 4096, "K": 768, "N": 3072, "mode": "fwd+bwd"}
    rows = [{**base, "occupied": occ, "library_ms": 1.0, "ours_ms": 1.0 / ratio}
            for occ, ratio in ((1.0, 0.8), (0.5, 1.2), (0.1, 3.0))]
    rows.append({**base, "mode": "fwd", "occupied": 1.0, "library_ms": 1.0, "ours_ms": 0.1})  # fwd rows: ignored
    table = masked_matmul.write_table(str(path), rows, {"device": "GPU X", "date": "d"}, "bfloat16", 0.5)
    assert json.loads(path.read_text()) == table and table["machine"]["device"] == "GPU X"
    fp16, bf16 = table["entries"]  # the other dtype's entry is kept
    assert fp16["crossover"] == 0.1 and bf16["shape"] == "vit.fc1" and bf16["batch"] == 4096
    # wins from 50 % skipped on, loses at 0 %: the crossover lies between, in log(speed-up)
    assert 0.0 < bf16["crossover"] < 0.5
    assert D.crossover(4096, 768, 3072, torch.bfloat16, table) == bf16["crossover"]


@pytest.mark.parametrize("mode", [[], ["--model"]])
def test_cpu_sparse_smoke(mode, capsys):
    require_live("cpu_sparse_linear", "cpu", "cpu")
    # Layers (every installed library baseline checked against F.linear) and whole models (outputs checked).
    assert cpu_sparse.main(["--smoke", "--no-write", "--threads", "1", *mode]) == 0
    out = capsys.readouterr().out
    assert ("lenet_300_100 B=1" if mode else "deits.fc2 B=8") in out



def test_time_interleaved_spans_back_to_back_calls_and_keeps_the_cold_call_apart():
    import time

    from bench.common import time_interleaved
    from lth_kernels._util import inner_calls

    calls = []

    def fn():
        calls.append(time.perf_counter())
        time.sleep(0.0002 if len(calls) > 1 else 0.05)  # a slow first call, as a compile would be

    cold = {}
    t = time_interleaved({"f": fn, "broken": lambda: 1 / 0}, "cpu", reps=3, warmup=2, cold=cold)
    assert t["broken"] is None and set(cold) == {"f"} and cold["f"] >= 50
    assert t["f"] < 5  # the cold call is not in the steady-state median
    assert len(calls) > 2 + 1 + 3  # first + warm-up + calibration, then several calls per repetition
    assert inner_calls(0.0002) == 100 and inner_calls(0.3) == 4 and inner_calls(50.0) == 1




def test_train_throughput_smoke(capsys):
    from bench import train_throughput

    assert train_throughput.main(["--smoke", "--no-write"]) == 0
    out = capsys.readouterr().out
    for part in ("'batches'", "'short run'", "'train'"):
        assert part in out
    assert "'pipeline': 'device'" in out and "'workers': 0" in out and "smoke run: nothing written" in out
