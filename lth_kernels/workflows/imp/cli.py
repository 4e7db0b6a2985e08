"""``lth imp``: the job flags, short aliases and the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.imp.hparams import DEFAULT_PRESET, WORKFLOW, ImpHparams

# Short flags for the options people change most (argparse would not abbreviate across the group prefix).
ALIASES = {"--structure": "--pruning.structure", "--fraction": "--pruning.fraction", "--scope": "--pruning.scope",
           "--exclude": "--pruning.exclude"}


def _job_args(parser) -> None:
    parser.add_argument("--no-report", "--no_report", dest="no_report", action="store_true",
                        help="do not print the report table and write the plots at the end")
    parser.add_argument("--threads", default="auto", help="torch CPU threads; auto: 1 for models under 1M "
                        "parameters on the CPU (small GEMMs gain nothing from more), else torch's default [auto]")


def _run(hp: ImpHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process
    from lth_kernels.workflows.imp.runner import run_imp

    if ns.threads != "auto" and not (ns.threads.isdigit() and int(ns.threads) > 0):
        raise ValueError(f"--threads: expected 'auto' or a positive int, got {ns.threads!r}")
    path = run_imp(hp, root=ns.root, threads=ns.threads)
    if not ns.no_report and is_main_process():
        from lth_kernels.workflows.imp.report import report

        print(report(path))


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(ImpHparams, argv, workflow=WORKFLOW, prog="lth imp", default_preset=DEFAULT_PRESET,
                         description="Iterative magnitude pruning with rewinding (open_lth parity) and control "
                                     "branches.",
                         aliases=ALIASES, extra_args=_job_args, run=_run)
