"""`lth report RUN_DIR` dispatches on the run's workflow; a non-IMP run never gets an empty IMP table."""

import pytest

from lth_kernels.cli import main as lth


def _run_dir(tmp_path, name, table=None):
    d = tmp_path / name
    d.mkdir()
    (d / "hparams.json").write_text("{}\n")
    if table is not None:
        (d / "table.md").write_text(table)
    return d


@pytest.mark.parametrize("workflow", ["elastic", "jackpot", "early-bird", "gfs"])
def test_other_workflows_print_their_own_table(tmp_path, capsys, workflow):
    d = _run_dir(tmp_path, f"{workflow}-0123456789", table=f"| {workflow} table |\n")
    (d / "plots").mkdir()
    (d / "plots" / "x.png").write_bytes(b"")
    assert lth(["report", str(d)]) == 0
    out = capsys.readouterr().out
    assert f"| {workflow} table |" in out and "x.png" in out and "level" not in out


def test_unfinished_or_foreign_directories_are_one_line_errors(tmp_path, capsys):
    assert lth(["report", str(_run_dir(tmp_path, "jackpot-0123456789"))]) == 2
    assert "has no table.md yet: the jackpot run has not finished" in capsys.readouterr().err
    assert lth(["report", str(_run_dir(tmp_path, "mystery-0123456789"))]) == 2
    assert "is not named <workflow>-<hash>" in capsys.readouterr().err
    empty = tmp_path / "plain"
    empty.mkdir()
    assert lth(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lth report: error: RUN_DIR: ") and err.count("\n") == 1


def test_help_is_plain_text(capsys):
    with pytest.raises(SystemExit):
        lth(["report", "--help"])
    out = capsys.readouterr().out
    assert "RUN_DIR" in out and "``" not in out and "data-ticket" in out
