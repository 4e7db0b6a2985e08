"""The benchmark plumbing: result files and the scripts' CPU smoke modes (no timing is asserted)."""

import json
from pathlib import Path

import pytest

from bench import block_sparse, masked_matmul
from bench.common import rows_json, write_results


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
def test_gpu_scripts_smoke_on_cpu(script, capsys):
    assert script.main(["--smoke", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "'ours_ms'" in out and "smoke" in out


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
