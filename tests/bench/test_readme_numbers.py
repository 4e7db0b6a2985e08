"""bench.readme_numbers: the entries are real commands, the result file carries command, exit code and table."""

import pytest

from bench import readme_numbers as rn
from lth_kernels.workflows import WORKFLOWS


def test_every_entry_is_a_known_workflow_command_that_parses(capsys):
    from lth_kernels.cli import main as lth

    for e in rn.ENTRIES:
        assert e.argv[0] in WORKFLOWS, e.name
        assert lth([*e.argv, "--dry-run"]) == 0, e.name  # flags and preset parse; nothing runs
    capsys.readouterr()
    assert rn.main(["--list"]) == 0
    listed = capsys.readouterr().out
    assert all(e.name in listed and " ".join(e.argv) in listed for e in rn.ENTRIES)


def test_unknown_entry_is_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exc:
        rn.main(["--only", "imp,nope"])
    assert exc.value.code == 2 and "--only: unknown entries ['nope']" in capsys.readouterr().err


def test_render_shows_command_table_and_failures():
    ok = {"entry": rn.ENTRIES[0], "rc": 0, "wall_s": 12.3, "run": None, "table": "| a |\n|---|\n| 1 |",
          "from_table_md": True, "stdout": "", "stderr_tail": ""}
    bad = {**ok, "entry": rn.ENTRIES[2], "rc": 2, "from_table_md": False, "stdout": "", "stderr_tail": "boom"}
    text = rn.render([ok, bad], "test machine")
    assert "lth " + " ".join(rn.ENTRIES[0].argv) in text and "| 1 |" in text and "exit 0, 12 s" in text
    assert "The command failed" in text and "boom" in text and "Machine: test machine." in text
