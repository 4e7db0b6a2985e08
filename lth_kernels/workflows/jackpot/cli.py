"""``lth jackpot``: the job flags and the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.jackpot.hparams import WORKFLOW, JackpotHparams


def _job_args(parser) -> None:
    parser.add_argument("--device", default=None, help="device (default: cuda when available, else cpu)")


def _run(hp: JackpotHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process
    from lth_kernels.workflows.jackpot.report import table
    from lth_kernels.workflows.jackpot.runner import run

    summary = run(hp, ns.root, ns.device, progress=not ns.quiet)
    if is_main_process():
        print(table(summary))


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(JackpotHparams, argv, switches={"--random-weights": "--source.random_weights"},
                         workflow=WORKFLOW, prog="lth jackpot", default_preset="mlp-digits",
                         extra_args=_job_args, run=_run,
                         description="Lottery jackpots (Zhang et al., TPAMI 2023): mask search on frozen pre-trained "
                                     "weights.")
