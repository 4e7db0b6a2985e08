"""``lth elastic --levels``: every chosen level of the source IMP run transformed in one run, baselines matched
per level, a table row and plot points per level, the default (last level) keeping run names and directories."""

import json

import pytest
import torch

from lth_kernels.tickets import Ticket
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.elastic.hparams import parse_levels
from lth_kernels.workflows.elastic.runner import ElasticRunner, run_elastic
from tests.workflows.elastic.test_runner import _tiny


def _two_levels(**changes):
    hp = _tiny(baselines=("imp", "random"), lmc=False)
    return hp.replace(imp=hp.imp.replace(levels=2), **changes)


def test_level_lists():
    assert parse_levels("", 6) == [6] and parse_levels("all", 6) == [1, 2, 3, 4, 5, 6]
    assert parse_levels("3-5", 6) == [3, 4, 5] and parse_levels("2,4,6", 6) == [2, 4, 6]
    assert parse_levels("1-2, 5,2", 6) == [1, 2, 5]
    for bad in ("0", "7", "1-7", "x", "5-3", "2,,3"):
        with pytest.raises(HparamsError, match="^--levels: "):
            parse_levels(bad, 6)
    with pytest.raises(HparamsError, match=r"--levels: the source IMP run has pruned levels 1\.\.2"):
        _two_levels(levels="3")
    # which levels is how much to do: the run's name stays, more levels extend the same run
    assert _two_levels(levels="all").hashname() == _two_levels().hashname() == _two_levels(levels="1").hashname()
    assert _two_levels().level_list == [2] and _two_levels(levels="all").level_list == [1, 2]


def test_all_levels_extend_the_last_level_run(tmp_path):
    hp = _two_levels()
    path = run_elastic(hp, root=tmp_path, progress=False)
    target = path / "replicate_0" / "target_5"
    assert {p.name for p in target.iterdir() if p.is_dir()} == {"ett_from_4", "random"}  # the last level, as before
    stamps = {p: p.stat().st_mtime_ns for p in target.rglob("done.json")}

    again = run_elastic(hp.replace(levels="all"), root=tmp_path, progress=False)
    assert again == path and {p: p.stat().st_mtime_ns for p in stamps} == stamps  # level 2 not retrained
    level1 = target / "level_1"
    assert {p.name for p in level1.iterdir() if p.is_dir()} == {"ett_from_4", "random"}
    # each level's transformed ticket is the source's ticket of that level, mapped; its baseline keeps its count
    er = ElasticRunner(hp.replace(levels="all"), root=tmp_path, progress=False)
    kept = {}
    for level, stage in ((1, level1), (2, target)):
        ett = Ticket.load(stage / "ett_from_4" / "mask.safetensors")
        res, _ = er.transformed(0, 4, 5, level=level)
        assert res.ticket.equal(ett)
        assert torch.equal(ett["fc_layers.0.weight"], er.imp(4).main_ticket(0, level)["fc_layers.0.weight"])
        rep = json.loads((stage / "ett_from_4" / "sparsity_report.json").read_text())["prunable"]
        rnd = json.loads((stage / "random" / "sparsity_report.json").read_text())["prunable"]
        assert rnd["kept"] == rep["kept"] and rnd["total"] == rep["total"]
        kept[level] = rep["kept"]
    assert kept[1] > kept[2]

    summary = json.loads((path / "summary.json").read_text())
    assert summary["levels"] == [1, 2] and summary["level"] == 2
    assert [(r["level"], r["method"]) for r in summary["rows"]] == [
        (0, "Dense target"), (1, "IMP on target (rewind)"), (1, "Random prune (global)"), (1, "ETT <- 4"),
        (2, "IMP on target (rewind)"), (2, "Random prune (global)"), (2, "ETT <- 4")]
    for level in ("1", "2"):
        ett_density = next(r for r in summary["rows"] if r["level"] == int(level)
                           and r["method"] == "ETT <- 4")["cells"]["5"]["density"]
        assert summary["baseline_density"][level]["5"] == pytest.approx(ett_density)
    assert summary["nominal_density"] == {"1": pytest.approx(0.49), "2": pytest.approx(0.49 ** 2)}
    table = (path / "table.md").read_text()
    assert "| 1 (51.00%) | ETT <- 4 |" in table and "| 2 (75.99%) | Random prune (global) |" in table
    assert "| 0 (dense) | Dense target |" in table
    assert summary["cost"]["level"] == 2 and (path / "plots" / "elastic.png").stat().st_size > 1000
