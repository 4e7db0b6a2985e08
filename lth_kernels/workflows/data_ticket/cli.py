"""``lth data-ticket``: the job flags, aliases and the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.data_ticket.hparams import DEFAULT_PRESET, WORKFLOW, DataTicketHparams

ALIASES = {"--keep-rate": "--keep_rate", "--student-input": "--student_input"}


def _job_args(parser) -> None:
    parser.add_argument("--export", action="store_true",
                        help="write keep_<r>/tickets.safetensors: the test split's per-image patch indices")


def _run(hp: DataTicketHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process
    from lth_kernels.workflows.data_ticket.runner import run_data_ticket

    path = run_data_ticket(hp, root=ns.root, export=ns.export)
    if is_main_process():
        from lth_kernels.workflows.data_ticket.report import format_table, load_summary

        print(format_table(load_summary(path)))
        print(f"run directory: {path}")


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(DataTicketHparams, argv, workflow=WORKFLOW, prog="lth data-ticket",
                         default_preset=DEFAULT_PRESET, aliases=ALIASES, extra_args=_job_args, run=_run,
                         description="Data-level lottery tickets for ViTs: selector, ticket/random/all students, "
                                     "sparse evaluation. --keep-rate = --keep_rate.")
