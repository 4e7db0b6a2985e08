"""``lth report``: summary aggregation over replicates, the table, the plots, a run in progress, errors."""

import json
import math
import shutil

import pytest

from lth_kernels.cli import main as lth
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.report import build_summary, format_table, report
from lth_kernels.workflows.imp.runner import run_imp


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    hp = ImpHparams.from_preset(**{"training.training_steps": "4it", "training.eval_every": "2it", "levels": 2,
                                   "replicates": 2, "branches": ("random_reinit",)})
    return run_imp(hp, root=tmp_path_factory.mktemp("report"), progress=False)


def test_summary_aggregates_replicates(run_dir):
    s = json.loads((run_dir / "summary.json").read_text())  # written by the runner
    assert s["replicates"] == 2 and s["branches"] == ["main", "random_reinit"] and s["run"] == run_dir.name
    assert set(s["levels"]["0"]) == {"main"} and set(s["levels"]["2"]) == {"main", "random_reinit"}
    for lvl, row in s["levels"].items():
        for branch, agg in row.items():
            vals = [s["per_replicate"][r][lvl][branch]["test_acc_end"] for r in ("0", "1")]
            mean = sum(vals) / 2
            assert agg["n"] == 2 and agg["test_acc_end"]["values"] == vals
            assert math.isclose(agg["test_acc_end"]["mean"], mean)
            assert math.isclose(agg["test_acc_end"]["std"], math.sqrt(sum((v - mean) ** 2 for v in vals)))
            assert agg["density"]["std"] == 0.0  # the same exact counts in every replicate
            assert agg["test_acc_best"]["mean"] >= agg["test_acc_end"]["mean"]
            assert set(agg["layers"]) == {"fc_layers.0.weight", "fc_layers.1.weight", "fc.weight"}
    assert math.isclose(s["levels"]["2"]["main"]["density"]["mean"], 0.64, abs_tol=1e-4)
    assert s["levels"]["2"]["main"]["layers"]["fc.weight"] == 1.0
    # the two replicates are independent: other inits, so other masks
    masks = [(run_dir / f"replicate_{r}/level_1/main/mask.safetensors").read_bytes() for r in (0, 1)]
    assert masks[0] != masks[1]


def test_table_and_plots(run_dir):
    text = report(run_dir)
    lines = text.splitlines()
    assert lines[0].startswith(f"{run_dir.name}: 2 replicates")
    assert "selected on the test set" in lines[1]  # no validation set: the table says so
    assert "random_reinit acc % (test-max)" in lines[2]
    rows = [line.split() for line in lines[4:7]]
    assert [r[0] for r in rows] == ["0", "1", "2"] and [r[1] for r in rows] == ["100.00", "80.00", "64.00"]
    assert "±" in lines[5]
    for name in ("accuracy_vs_density.png", "layer_density.png"):
        png = run_dir / "plots" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
        assert str(png) in lines[-1]


def test_cli_and_partial_runs(run_dir, tmp_path, capsys):
    partial = tmp_path / run_dir.name
    shutil.copytree(run_dir, partial)
    (partial / "replicate_1/level_2/random_reinit/done.json").unlink()  # killed in that stage
    shutil.rmtree(partial / "plots")
    assert lth(["report", str(partial)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(partial.name) and (partial / "plots" / "accuracy_vs_density.png").exists()
    s = build_summary(partial)
    assert s["levels"]["2"]["random_reinit"]["n"] == 1 and s["levels"]["2"]["main"]["n"] == 2
    assert len(format_table(s).splitlines()) == 7

    assert lth(["report", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lth report: error: RUN_DIR:")


def test_validation_split_selects_the_reported_step(tmp_path):
    """With --dataset.validation the stages evaluate a class-balanced hold-out of the training images; the
    table reports the test accuracy at the step of best validation accuracy, not the test maximum."""
    hp = ImpHparams.from_preset(**{"training.training_steps": "6it", "training.eval_every": "2it", "levels": 1,
                                   "dataset.validation": 200})
    path = run_imp(hp, root=tmp_path, progress=False)
    from lth_kernels.training.metrics import read_metrics
    from lth_kernels.workflows.imp.report import select_by_validation

    for stage in ("level_0/main", "level_1/main"):
        recs = read_metrics(path / "replicate_0" / stage / "metrics.jsonl")
        assert all(r["val_n"] == 200 for r in recs) and len(recs) == 4  # steps 0, 2, 4, 6
        best = max(recs, key=lambda r: r["val_acc"])
        assert select_by_validation(recs) == (best["val_acc"], best["test_acc"], best["step"])
    s = build_summary(path)
    rec = s["per_replicate"]["0"]["1"]["main"]
    recs = read_metrics(path / "replicate_0/level_1/main/metrics.jsonl")
    assert rec["test_acc_at_val_best"] == next(r["test_acc"] for r in recs if r["step"] == rec["val_best_step"])
    lines = format_table(s).splitlines()
    assert "200 held-out training images" in lines[1] and "main acc % (val-best)" in lines[2]
    at_val = f"({100 * s['levels']['1']['main']['test_acc_at_val_best']['mean']:.2f})"
    assert at_val in lines[-1]
    assert select_by_validation([{"step": 0, "test_acc": 0.5}]) == (None, None, None)
