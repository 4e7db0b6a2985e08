"""The hparams of ``lth gfs``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lth_kernels.training.hparams import DatasetHparams, Hparams, HparamsError, ModelHparams, TrainingHparams, hfield
from lth_kernels.training.steps import StepError, split_step_list

log = logging.getLogger(__name__)


WORKFLOW = "gfs"


@dataclass(frozen=True)
class GfsOptions(Hparams):
    """Greedy forward selection and the budget study."""

    candidates: int = hfield(50, "channels scored per selection step")
    tolerance: float = hfield(0.02, "stop a layer when its top-1 is within this fraction of the dense top-1")
    converge_tolerance: float = hfield(0.05, "evaluate the stopping rule once the batch top-1 is this close")
    eval_samples: int = hfield(1024, "training examples used to evaluate the stopping rule")
    allow_repeats: bool = hfield(False, "sample candidates from all channels (multiset, two-layer form)")
    layer_finetune_steps: str = hfield("20it", "fine-tuning after each pruned layer")
    finetune_steps: str = hfield("5ep", "fine-tuning of the pruned network")
    finetune_lr: float = hfield(2.5e-3, "fine-tuning learning rate (constant)")
    finetune_weight_decay: float = hfield(4e-5, "fine-tuning weight decay")
    exclude: tuple[str, ...] = hfield(help="globs of layers not pruned (module names)", default_factory=tuple)
    budget_study: bool = hfield(False, "run the pre-training budget study instead of one pruning run")
    pretrain_steps: tuple[str, ...] = hfield(help="budget study: pre-training budgets (step strings)",
                                             default_factory=lambda: ("0it", "5it", "10it", "20it", "35it", "50it",
                                                                      "75it", "100it", "150it", "200it", "300it",
                                                                      "400it"))
    train_sizes: tuple[str, ...] = hfield(help="budget study: training-set sizes m",
                                          default_factory=lambda: ("200", "400", "800", "1437"))
    threshold_delta: float = hfield(0.02, "budget study: a subnetwork is good within this of its best metric")
    threshold_metric: str = hfield("train_acc", "budget study: metric of the threshold (the theory bounds the "
                                                "training loss)",
                                   choices=("test_acc", "train_acc"))
    budget_finetune: bool = hfield(False, "budget study: fine-tune each subnetwork (else measure it right "
                                          "after selection, as the theory does)")

    def validate(self):
        if self.candidates < 1:
            raise HparamsError("candidates", f"must be >= 1, got {self.candidates}")
        for name in ("tolerance", "converge_tolerance", "threshold_delta"):
            if not 0 <= getattr(self, name) < 1:
                raise HparamsError(name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_finetune_steps", "finetune_steps"):
            try:
                split_step_list(getattr(self, name))
            except StepError as e:
                raise HparamsError(name, str(e).split(": ", 1)[1]) from None
        try:
            split_step_list(",".join(self.pretrain_steps))
        except StepError as e:
            raise HparamsError("pretrain_steps", str(e).split(": ", 1)[1]) from None
        for m in self.train_sizes:
            if not m.isdigit() or int(m) < 1:
                raise HparamsError("train_sizes", f"expected positive integers, got {m!r}")


@dataclass(frozen=True)
class GfsHparams(Hparams):
    """lth gfs: pre-train, prune with greedy forward selection, fine-tune (or the budget study)."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(batch_size=64))
    model: ModelHparams = hfield(default_factory=lambda: ModelHparams(name="mlp_bn_128"))
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        lr=0.05, weight_decay=1e-4, training_steps="20ep", milestone_steps="15ep"))
    gfs: GfsOptions = hfield(default_factory=GfsOptions)
