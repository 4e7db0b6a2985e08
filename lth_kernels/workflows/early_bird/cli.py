"""``lth early-bird``: the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.early_bird.hparams import WORKFLOW, EarlyBirdHparams


def _run(hp, ns) -> None:
    from lth_kernels.workflows.early_bird.runner import run

    run(hp, ns.root)


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(EarlyBirdHparams, argv, workflow=WORKFLOW, prog="lth early-bird", default_preset="mlp-digits",
                         description="Early-bird tickets (You et al., ICLR 2020), channel and unstructured.", run=_run)
