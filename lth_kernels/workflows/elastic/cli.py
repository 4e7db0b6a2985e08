"""``lth elastic``: the job flags and the entry point (the run itself is ``runner``)."""

from __future__ import annotations

from lth_kernels.workflows.elastic.hparams import DEFAULT_PRESET, WORKFLOW, ElasticHparams


def _imp_runs(text: str) -> dict[int, str]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        depth, sep, path = item.partition("=")
        if not sep or not depth.strip().isdigit() or not path.strip():
            raise ValueError(f"--imp_runs: expected DEPTH=DIR[,DEPTH=DIR], got {text!r}")
        out[int(depth)] = path.strip()
    return out


def _job_args(parser) -> None:
    parser.add_argument("--imp_root", "--imp-root", dest="imp_root", default=None,
                        help="where the IMP runs are made or found by their hash [--root]")
    parser.add_argument("--imp_runs", "--imp-runs", dest="imp_runs", default="",
                        help="existing IMP run directories by depth, e.g. 20=runs/imp-1a2b,32=runs/imp-3c4d")


def _run(hp: ElasticHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process
    from lth_kernels.workflows.elastic.runner import run_elastic

    path = run_elastic(hp, root=ns.root, imp_root=ns.imp_root, imp_runs=_imp_runs(ns.imp_runs))
    if is_main_process():
        print((path / "table.md").read_text())


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows.common.cli import workflow_main

    return workflow_main(ElasticHparams, argv, workflow=WORKFLOW, prog="lth elastic", default_preset=DEFAULT_PRESET,
                         description="Elastic lottery tickets: transform an IMP ticket to other depths and compare "
                                     "with IMP on the target and pruning-at-initialisation baselines.",
                         extra_args=_job_args, run=_run)
