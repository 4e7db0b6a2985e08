"""``lth gfs``: the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.gfs.hparams import WORKFLOW, GfsHparams


def _run(hp, ns) -> None:
    from lth_kernels.workflows.gfs.runner import run

    run(hp, ns.root)


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(GfsHparams, argv, switches={"--budget-study": "--gfs.budget_study"},
                         workflow=WORKFLOW, prog="lth gfs", default_preset="mlp-digits",
                         description="Greedy forward selection (GFS) and the pre-training budget study.", run=_run)
