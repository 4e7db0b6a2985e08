"""The ``lth train`` runner: the IMP runner's θ₀ and level 0, in ``<root>/train-<hash>/``."""

from __future__ import annotations

from pathlib import Path

from lth_kernels.workflows.imp.runner import ImpRunner
from lth_kernels.workflows.train.hparams import WORKFLOW, TrainHparams


def run_train(hp: TrainHparams, root: str | Path = "runs", **kwargs) -> Path:
    """Run (or resume) one training run; returns its directory. ``kwargs`` go to ``ImpRunner`` (``device``,
    ``progress``, ``callbacks``, ``data``, ``threads``)."""
    return ImpRunner(hp.as_imp(), root, workflow=WORKFLOW, **kwargs).run()
