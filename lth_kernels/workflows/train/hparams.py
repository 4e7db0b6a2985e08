"""The hparams of ``lth train``: the data set, model, training and start point of one run (no torch here)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lth_kernels.training.hparams import DatasetHparams, Hparams, ModelHparams, TrainingHparams, hfield
from lth_kernels.workflows.imp.hparams import ImpHparams, InitHparams

WORKFLOW = "train"


DEFAULT_PRESET = "lenet_300_100-digits"


_IMP = ImpHparams()


@dataclass(frozen=True)
class TrainHparams(Hparams):
    """One training run (dense, or masked by --init.ticket). The defaults are the lenet_300_100-digits preset."""

    dataset: DatasetHparams = hfield(default_factory=lambda: _IMP.dataset)
    model: ModelHparams = hfield(default_factory=lambda: _IMP.model)
    training: TrainingHparams = hfield(default_factory=lambda: _IMP.training)
    init: InitHparams = hfield(default_factory=InitHparams)
    replicates: int = hfield(1, "independent replicates (seeds shifted by the replicate index)")

    def as_imp(self) -> ImpHparams:
        """The IMP run this is: the same data, model, training and start, no pruning level."""
        return ImpHparams(dataset=self.dataset, model=self.model, training=self.training, init=self.init, levels=0,
                          replicates=self.replicates)

    def non_default(self) -> dict[str, Any]:
        """The IMP run's non-default values: ``lth train`` and the runner name the same directory."""
        return self.as_imp().non_default()

    def identity(self) -> dict[str, Any]:
        return self.as_imp().identity()
