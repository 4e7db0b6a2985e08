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


def test_train_throughput_smoke(capsys):
    from bench import train_throughput

    assert train_throughput.main(["--smoke", "--no-write"]) == 0
    out = capsys.readouterr().out
    for part in ("'batches'", "'short run'", "'train'"):
        assert part in out
    assert "'pipeline': 'device'" in out and "'workers': 0" in out and "smoke run: nothing written" in out
