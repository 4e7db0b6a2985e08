"""`lth report RUN_DIR`: the table (and plots) of any workflow's run directory, dispatched on its workflow.

A run directory is named `<workflow>-<hash>` and holds `hparams.json`. IMP and data-ticket runs are
rebuilt from their stage outputs (so a run still in progress or killed half-way reports what is done);
the other workflows print the `table.md` their run writes when it finishes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from lth_kernels.workflows import WORKFLOWS


def workflow_of(run_dir: str | Path) -> str:
    """The workflow a run directory belongs to, from its name; a one-line error for anything else."""
    path = Path(run_dir)
    if not (path / "hparams.json").is_file():
        raise FileNotFoundError(f"RUN_DIR: {path} is not a run directory (no hparams.json)")
    matches = [w for w in WORKFLOWS if path.name.startswith(f"{w}-")]
    if not matches:
        raise ValueError(f"RUN_DIR: {path.name!r} is not named <workflow>-<hash> for a workflow of "
                         f"{', '.join(WORKFLOWS)}")
    return max(matches, key=len)


def report(run_dir: str | Path, plots: bool = True) -> str:
    path = Path(run_dir)
    workflow = workflow_of(path)
    if workflow == "imp":
        from lth_kernels.workflows.imp.report import report as imp_report

        return imp_report(path, plots=plots)
    if workflow == "data-ticket":
        from lth_kernels.workflows.data_ticket.report import format_table, write_summary

        return format_table(write_summary(path))
    table = path / "table.md"
    if not table.is_file():
        raise FileNotFoundError(f"RUN_DIR: {path} has no table.md yet: the {workflow} run has not finished "
                                f"(rerunning its `lth {workflow}` command resumes it)")
    text = table.read_text().rstrip("\n")
    pngs = sorted((path / "plots").glob("*.png")) if (path / "plots").is_dir() else []
    return text + ("\nplots: " + ", ".join(str(p) for p in pngs) if pngs else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="lth report", description="Print the table of a run directory of any workflow (imp, elastic, "
        "jackpot, early-bird, gfs, data-ticket) and, for IMP, rebuild summary.json and the plots.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory, e.g. runs/imp-<hash>")
    parser.add_argument("--no-plots", "--no_plots", dest="no_plots", action="store_true", help="only the table")
    ns = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        print(report(ns.run_dir, plots=not ns.no_plots))
    except (FileNotFoundError, ValueError) as e:
        print(f"lth report: error: {e}", file=sys.stderr)
        return 2
    return 0
