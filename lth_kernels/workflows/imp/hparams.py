"""The hparams of ``lth imp``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

from lth_kernels.training.hparams import (
    DatasetHparams,
    Hparams,
    HparamsError,
    ModelHparams,
    PruningHparams,
    TrainingHparams,
    hfield,
)
from lth_kernels.training.steps import StepError, split_step_string

WORKFLOW = "imp"


DEFAULT_PRESET = "lenet_300_100-digits"


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RandomReinitHparams(Hparams):
    """Branch random_reinit: the level's mask on a fresh random initialisation."""

    seed: int = hfield(0, "added to the re-initialisation seed (which differs from the main run's init)")
    start_at_step_zero: bool = hfield(False, "train from step 0 instead of the rewind step")


@dataclass(frozen=True)
class RandomPruneHparams(Hparams):
    """Branch random_prune: the level's density at random places, trained from the rewind weights."""

    scope: str = hfield("layerwise", "keep each layer's density (layerwise) or only the total density (global)",
                        choices=("layerwise", "global"))
    seed: int = hfield(0, "seed of the random mask (combined with replicate and level)")
    start_at: str = hfield("rewind", "weights to train the random mask from: rewind (θ_K, from step K), init "
                                     "(θ₀, from step 0) or end (the level's trained weights, from step 0)",
                           choices=("rewind", "init", "end"))


@dataclass(frozen=True)
class RetrainHparams(Hparams):
    """Branch retrain: the level's ticket trained with other data / training hparams (ticket transfer)."""

    dataset: dict[str, Any] = hfield(help="overrides of --dataset.* for the retraining, e.g. name=synthetic",
                                     default_factory=dict)
    training: dict[str, Any] = hfield(help="overrides of --training.* for the retraining, e.g. lr=0.05,"
                                           "training_steps=10ep", default_factory=dict)
    start_at_step_zero: bool = hfield(False, "train from step 0 (of the new schedule) instead of the rewind step")
    transfer_learn: bool = hfield(False, "start from the level's final weights instead of the rewind weights")

    def validate(self):
        for name, cls in (("dataset", DatasetHparams), ("training", TrainingHparams)):
            try:
                cls().with_overrides(getattr(self, name), source=f"--retrain.{name}")
            except HparamsError as e:
                raise HparamsError(name, f"{e.name}: {e.message}") from None


@dataclass(frozen=True)
class InitHparams(Hparams):
    """Where IMP starts: the initial weights θ₀ and the level-0 mask."""

    weights: str = hfield("", "a weight file (safetensors, or a torch state dict) used as θ₀ instead of a random "
                              "initialisation (every replicate)")
    ticket: str = hfield("", "a Ticket file (e.g. another run's mask.safetensors): level 0 trains under it and level 1 "
                             "prunes it further")


@dataclass(frozen=True)
class LmcHparams(Hparams):
    """Branch lmc: instability analysis, two copies of the level's ticket from θ_K with other data orders."""

    points: int = hfield(21, "interpolation points between the two copies' final weights, ends included")

    def validate(self):
        if self.points < 2:
            raise HparamsError("points", f"must be >= 2, got {self.points}")


def parse_levels(text: str, flag: str = "--branch_levels") -> set[int] | None:
    """``"3-8"``, ``"1,3,5-7"`` -> the level set; ``""`` -> None (every level)."""
    if not text.strip():
        return None
    out = set()
    for part in text.split(","):
        lo, dash, hi = part.strip().partition("-")
        if not lo.isdigit() or (dash and not hi.isdigit()):
            raise HparamsError(flag.lstrip("-"), f"expected levels like '3-8' or '1,3,5-7', got {text!r}")
        a, b = int(lo), int(hi) if dash else int(lo)
        if a > b:
            raise HparamsError(flag.lstrip("-"), f"range {part.strip()!r} runs backwards")
        out.update(range(a, b + 1))
    return out


# Fields that say how much of the run to do or which controls to add; they do not change what the main
# run computes, so they stay out of the run's name (rerunning with more levels extends the same run).
JOB_FIELDS = ("levels", "target_density", "replicates", "branches", "branch_levels", "random_reinit", "random_prune",
              "retrain", "lmc")


_STRUCTURES = "unstructured, block<b> (e.g. block16), block<r>x<c> or N:M (e.g. 2:4)"


@dataclass(frozen=True)
class ImpPruningHparams(PruningHparams):
    """Pruning strategy and amount per pruning level."""

    fraction_by: dict[str, Any] = hfield(help="per layer group: glob=fraction,... (e.g. convs.*=0.1,fc_layers.*=0.2,"
                                              "fc.weight=0.1): each matched layer loses that fraction of its own "
                                              "remaining weights, the most specific glob winning, also a layer "
                                              "the model excludes by default; the others --pruning.fraction",
                                         default_factory=dict)

    def validate(self):
        super().validate()
        for glob, f in self.fraction_by.items():
            if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f < 1:
                raise HparamsError("fraction_by", f"{glob}: expected a fraction in (0, 1), got {f!r}")


def _digits_training() -> TrainingHparams:
    # lenet_300_100 on the 1,437 digits training images: open_lth's MNIST recipe (plain SGD, lr 0.1), with
    # a batch of 64 (22 steps per epoch) and 30 epochs, so that a level takes about a second on a laptop core.
    return TrainingHparams(optimizer="sgd", lr=0.1, momentum=0.0, training_steps="30ep", eval_every="5ep")


@dataclass(frozen=True)
class ImpHparams(Hparams):
    """Iterative magnitude pruning with rewinding. The defaults are the lenet_300_100-digits preset."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(name="digits", batch_size=64))
    model: ModelHparams = hfield(default_factory=lambda: ModelHparams(name="lenet_300_100"))
    training: TrainingHparams = hfield(default_factory=_digits_training)
    pruning: ImpPruningHparams = hfield(default_factory=ImpPruningHparams)
    init: InitHparams = hfield(default_factory=InitHparams)
    rewind: str = hfield("0it", "rewind step K: every level restarts from the weights, schedule and data order at "
                                "step K ('0it' = the original LTH, '500it', '2ep')")
    levels: int = hfield(5, "pruning levels after the dense level 0 (ignored when --target_density is set)")
    target_density: float | None = hfield(None, "prune until the prunable weights' density is at most this "
                                                "(sets --levels)")
    replicates: int = hfield(1, "independent replicates (seeds shifted by the replicate index)")
    branches: tuple[str, ...] = hfield(help="controls trained on every pruned level's ticket: random_reinit, "
                                            "random_prune, retrain, lmc", default_factory=tuple)
    branch_levels: str = hfield("", "the pruned levels the branches train on, e.g. '3-8' or '1,4-6' (empty: all)")
    random_reinit: RandomReinitHparams = hfield(default_factory=RandomReinitHparams)
    random_prune: RandomPruneHparams = hfield(default_factory=RandomPruneHparams)
    retrain: RetrainHparams = hfield(default_factory=RetrainHparams)
    lmc: LmcHparams = hfield(default_factory=LmcHparams)

    def validate(self):
        try:
            split_step_string(self.rewind, "--rewind")
        except StepError as e:
            raise HparamsError("rewind", str(e).split(": ", 1)[1]) from None
        structure = self.pruning.structure
        fixed = ":" in structure
        if structure == "channel" or structure.startswith("block") and not _block_ok(structure):
            raise HparamsError("pruning.structure", f"expected {_STRUCTURES}, got {structure!r}")
        if not fixed and not 0 < self.pruning.fraction < 1:
            raise HparamsError("pruning.fraction", f"must be in (0, 1), got {self.pruning.fraction}")
        if self.pruning.strategy != "magnitude":
            raise HparamsError("pruning.strategy", f"imp prunes by magnitude, got {self.pruning.strategy!r} (one-shot "
                                                   "strategies are other workflows)")
        if self.levels < 0:
            raise HparamsError("levels", f"must be >= 0, got {self.levels}")
        if self.target_density is not None and not 0 < self.target_density < 1:
            raise HparamsError("target_density", f"must be in (0, 1), got {self.target_density}")
        if self.pruning.fraction_by and (fixed or self.target_density is not None):
            raise HparamsError("pruning.fraction_by", "per-layer fractions need a structure of free density and "
                                                      "--levels (the density after L levels is per layer, not "
                                                      "(1 - fraction)^L: --target_density cannot set the levels)")
        if self.replicates < 1:
            raise HparamsError("replicates", f"must be >= 1, got {self.replicates}")
        from lth_kernels.workflows.imp.branches import BRANCHES

        for name in self.branches:
            if name not in BRANCHES:
                raise HparamsError("branches", f"unknown branch {name!r} (known: {', '.join(BRANCHES)})")
        parse_levels(self.branch_levels)
        if len(set(self.branches)) != len(self.branches):
            raise HparamsError("branches", f"a branch is named twice: {','.join(self.branches)}")

    def non_default(self) -> dict[str, Any]:
        """The non-default values that name the run (``JOB_FIELDS`` left out)."""
        return {k: v for k, v in super().non_default().items() if k.split(".", 1)[0] not in JOB_FIELDS}

    @property
    def num_levels(self) -> int:
        """The last level index: ``levels``, or the first level whose nominal density (1 - fraction)^L
        reaches ``target_density``. N:M structures have a fixed density: one pruned level."""
        if ":" in self.pruning.structure:
            return min(self.levels if self.target_density is None else 1, 1)
        if self.target_density is None:
            return self.levels
        return math.ceil(round(math.log(self.target_density) / math.log(1 - self.pruning.fraction), 9))

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides: Any) -> ImpHparams:
        """A registered preset with dotted overrides, e.g. ``from_preset(levels=3, **{"training.lr": 0.05})``."""
        from lth_kernels.training.hparams import presets

        table = presets(WORKFLOW)
        if name not in table:
            raise HparamsError("preset", f"unknown preset {name!r} for imp (choose from {', '.join(sorted(table))})")
        return cls().with_overrides(table[name], source=f"preset {name!r}").with_overrides(overrides)


def _block_ok(structure: str) -> bool:
    import re

    return re.fullmatch(r"block[1-9]\d*(x[1-9]\d*)?", structure) is not None
