"""``lth train``: the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.train.hparams import DEFAULT_PRESET, WORKFLOW, TrainHparams


def _run(hp: TrainHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process
    from lth_kernels.workflows.train.runner import run_train

    path = run_train(hp, root=ns.root)
    if is_main_process():
        from lth_kernels.workflows.imp.report import report

        print(report(path, plots=False))


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(TrainHparams, argv, workflow=WORKFLOW, prog="lth train", default_preset=DEFAULT_PRESET,
                         description="One dense or masked (--init.ticket) training run with the run rules of lth imp "
                                     "(hash-named directory, skipped when done, resumed when killed).", run=_run)
