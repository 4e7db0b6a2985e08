"""The hparams of ``lth gfs``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from lth_kernels.training.hparams import DatasetHparams, Hparams, HparamsError, ModelHparams, TrainingHparams, hfield
from lth_kernels.training.steps import StepError, split_step_list

log = logging.getLogger(__name__)


WORKFLOW = "gfs"


@dataclass(frozen=True)
class GfsOptions(Hparams):
    """Greedy forward selection and the budget study."""

    candidates: int = hfield(50, "channels scored per selection step")
    tolerance: float = hfield(0.02, "stop a layer when its top-1 is within this fraction of the target top-1")
    target: str = hfield("current", "the top-1 a layer must come close to: current = the network as it is when "
                                    "the layer starts (the reference re-evaluates it per layer), dense = the "
                                    "dense network's, once (caps the total drop at the tolerance)",
                         choices=("current", "dense"))
    converge_tolerance: float = hfield(0.05, "evaluate the stopping rule once the batch top-1 is this close")
    eval_samples: int = hfield(1024, "training examples of the stopping rule: a fixed class-balanced, "
                                     "un-augmented subset (seeded)")
    allow_repeats: bool = hfield(False, "sample candidates from all channels (multiset, two-layer form)")
    residual_streams: bool = hfield(True, "also select the channels of residual streams (one gate shared by every "
                                          "branch that writes the stream, the reference's mask2), where the "
                                          "stream is made of adds and ReLUs only; false: layers with a channel "
                                          "space of their own only")
    restore_full: bool = hfield(True, "a layer whose channels all got selected becomes the exact dense layer and "
                                      "is not fine-tuned (the reference); false folds the re-weighted gates")
    layer_finetune_steps: str = hfield("0.1ep", "fine-tuning after each pruned layer (a fraction of an epoch "
                                                "such as 0.1ep, or a step string)")
    finetune_lr: float = hfield(2.5e-3, "learning rate of the fine-tune after each layer (constant)")
    finetune_weight_decay: float = hfield(4e-5, "weight decay of the fine-tune after each layer")
    finetune_no_decay_bn_bias: bool = hfield(False, "final fine-tune: no weight decay on BN parameters and biases")
    finetune_tail_steps: str = hfield("0it", "final fine-tune: a constant low-lr phase after the schedule")
    finetune_tail_lr: float = hfield(5e-4, "final fine-tune: the learning rate of that phase")
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
    budget_finetune: bool = hfield(False, "budget study: fine-tune each subnetwork like the final fine-tune "
                                          "(else measure it right after selection, as the theory does)")

    def validate(self):
        if self.candidates < 1:
            raise HparamsError("candidates", f"must be >= 1, got {self.candidates}")
        for name in ("tolerance", "converge_tolerance", "threshold_delta"):
            if not 0 <= getattr(self, name) < 1:
                raise HparamsError(name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_finetune_steps", "finetune_tail_steps"):
            if name == "layer_finetune_steps" and epoch_fraction(self.layer_finetune_steps) is not None:
                continue
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
class BudgetOptions(Hparams):
    """The budget study's subnetwork size and replicates (Wolfe et al.)."""

    fixed_size: int = hfield(0, "grow every layer to exactly this many channels (the theorem's fixed subnetwork "
                                "size; capped at the layer width); 0: the tolerance rule")
    replicates: int = hfield(1, "pre-training + GFS runs per size m (seeds training.seed + r)")
    bootstrap: int = hfield(1000, "bootstrap resamples of the replicates for each threshold's interval")

    def validate(self):
        for name, low in (("fixed_size", 0), ("replicates", 1), ("bootstrap", 1)):
            if getattr(self, name) < low:
                raise HparamsError(name, f"must be >= {low}, got {getattr(self, name)}")


@dataclass(frozen=True)
class GfsHparams(Hparams):
    """lth gfs: pre-train, prune with greedy forward selection, fine-tune (or the budget study)."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(batch_size=64))
    model: ModelHparams = hfield(default_factory=lambda: ModelHparams(name="mlp_bn_128"))
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        lr=0.05, weight_decay=1e-4, training_steps="20ep", milestone_steps="15ep"))
    gfs: GfsOptions = hfield(default_factory=GfsOptions)
    finetune: TrainingHparams = hfield(help="the final fine-tune of the pruned network", default_factory=lambda:
                                       TrainingHparams(lr=2.5e-3, weight_decay=4e-5, training_steps="5ep",
                                                       eval_every="0it"))
    budget: BudgetOptions = hfield(default_factory=BudgetOptions)


_FRACTION = re.compile(r"(\d*\.\d+|\d+)ep")


def epoch_fraction(steps: str) -> float | None:
    """``"0.1ep" -> 0.1`` (a fractional number of epochs, as the reference's ``--n_epoch 0.1``); None for other
    step strings (``"20it"``, ``"1ep5it"``)."""
    m = _FRACTION.fullmatch(steps.strip())
    return float(m.group(1)) if m and "." in m.group(1) else None
