"""The hparams of ``lth data-ticket``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lth_kernels.training.augment import AugmentHparams
from lth_kernels.training.hparams import DatasetHparams, Hparams, HparamsError, ModelHparams, TrainingHparams, hfield
from lth_kernels.workflows.data_ticket.sizes import check_keep_rate

WORKFLOW = "data-ticket"


DEFAULT_PRESET = "vit-digits"


STUDENTS = ("ticket", "random", "random_fixed", "random_scaled", "all")


INPUT_MODES = ("tokens", "zero", "compact")


# How much of the sweep to run; the run's name (hash) leaves them out, so a rerun with more extends it.
JOB_FIELDS = ("keep_rate", "students", "replicates", "stability_images")


log = logging.getLogger(__name__)


def _digits_training(steps: str, lr: float) -> TrainingHparams:
    # AdamW + cosine + warmup + label smoothing: the DeiT recipe, scaled to 1,437 8x8 images (22 steps/epoch).
    return TrainingHparams(optimizer="adamw", lr=lr, momentum=0.9, weight_decay=0.05, training_steps=steps,
                           lr_schedule="cosine", warmup_steps="2ep", label_smoothing=0.1, eval_every="10ep")


@dataclass(frozen=True)
class SelectorHparams(Hparams):
    """The ticket selector: an EViT-style ViT fine-tuned with token dropping active."""

    source: str = hfield("dense", "dense: train --model on the data set first (dense/ stage); checkpoint: start "
                                  "from --selector.checkpoint", choices=("dense", "checkpoint"))
    model: str = hfield("", "selector model (empty: --model.name); it may differ in size from the student, "
                            "e.g. a tiny selector for a small student")
    model_kwargs: dict[str, Any] = hfield(help="selector model arguments (empty: --model.kwargs)",
                                          default_factory=dict)
    checkpoint: str | None = hfield(None, "local weight file of the trained ViT the selector starts from "
                                          "(safetensors or torch state dict, e.g. official DeiT weights)")
    drop_blocks: str = hfield("", "0-based blocks that drop tokens, e.g. '3,6,9' (empty: 3, 6, 9 of 12 scaled "
                                  "to the depth)")
    keep_rate_schedule: str = hfield("constant", "keep rate during the fine-tune: constant = r throughout; cosine = "
                                                 "the reference's ramp (EViT): 1 for --selector.shrink_start_epoch "
                                                 "epochs, then a cosine from 1 to r over --selector.shrink_epochs",
                                     choices=("constant", "cosine"))
    shrink_start_epoch: int = hfield(10, "cosine keep-rate schedule: epochs at keep rate 1 before the ramp")
    shrink_epochs: int = hfield(100, "cosine keep-rate schedule: epochs of the ramp from 1 to r (then r)")
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        optimizer="adamw", lr=2e-4, momentum=0.9, weight_decay=1e-6, training_steps="5ep", lr_schedule="cosine",
        eval_every="5ep"))

    def validate(self):
        for name in ("shrink_start_epoch", "shrink_epochs"):
            if getattr(self, name) < 0:
                raise HparamsError(name, f"must be >= 0, got {getattr(self, name)}")


@dataclass(frozen=True)
class DataTicketHparams(Hparams):
    """Data-level lottery tickets for ViTs. The defaults are the vit-digits preset."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(name="digits", batch_size=64))
    model: ModelHparams = hfield(default_factory=lambda: ModelHparams(
        name="vit_tiny", kwargs={"patch_size": 2, "embed_dim": 32, "depth": 4, "num_heads": 2, "mlp_ratio": 2.0}))
    training: TrainingHparams = hfield(default_factory=lambda: _digits_training("40ep", 3e-3))
    dense_training: TrainingHparams = hfield(default_factory=lambda: _digits_training("40ep", 3e-3))
    selector: SelectorHparams = hfield(default_factory=SelectorHparams)
    augment: AugmentHparams = hfield(default_factory=AugmentHparams)
    student_input: str = hfield("tokens", "how students see a ticket: tokens (ViT on the K kept tokens + CLS), "
                                          "zero (any model, dropped patches zeroed), compact (any model, kept "
                                          "patches re-tiled into a small image)", choices=INPUT_MODES)
    keep_rate: tuple[str, ...] = hfield(help="keep rate(s) r in (0, 1]: each drop block keeps ceil(r * tokens); a "
                                             "list sweeps, e.g. 0.9,0.8,0.7",
                                        default_factory=lambda: ("0.75", "0.5"))
    students: tuple[str, ...] = hfield(help=f"student paths to train: {', '.join(STUDENTS)}",
                                       default_factory=lambda: STUDENTS)
    replicates: int = hfield(1, "student replicates (seeds shifted by the replicate index)")
    speed_batch: int = hfield(256, "batch size of the inference speed measurement (speed.json)")
    stability_images: int = hfield(256, "first images of the evaluation split whose ticket stability across "
                                        "augmentations and selector checkpoints is measured (0: none)")

    def validate(self):
        if self.stability_images < 0:
            raise HparamsError("stability_images", f"must be >= 0, got {self.stability_images}")
        if not self.keep_rate:
            raise HparamsError("keep_rate", "expected at least one keep rate, got none")
        for text in self.keep_rate:
            try:
                check_keep_rate(text)
            except ValueError:
                raise HparamsError("keep_rate", f"expected numbers in (0, 1], got {text!r}") from None
        if len({float(t) for t in self.keep_rate}) != len(self.keep_rate):
            raise HparamsError("keep_rate", f"a keep rate is given twice: {','.join(self.keep_rate)}")
        unknown = [s for s in self.students if s not in STUDENTS]
        if unknown or not self.students:
            raise HparamsError("students", f"expected names from {', '.join(STUDENTS)}, got "
                                           f"{','.join(self.students) or 'none'}")
        if self.replicates < 1:
            raise HparamsError("replicates", f"must be >= 1, got {self.replicates}")
        if self.speed_batch < 1:
            raise HparamsError("speed_batch", f"must be >= 1, got {self.speed_batch}")

    def non_default(self) -> dict[str, Any]:
        """The non-default values that name the run (``JOB_FIELDS`` left out)."""
        return {k: v for k, v in super().non_default().items() if k.split(".", 1)[0] not in JOB_FIELDS}

    @property
    def keep_rates(self) -> list[float]:
        return [float(t) for t in self.keep_rate]

    @classmethod
    def from_preset(cls, name: str = DEFAULT_PRESET, **overrides: Any) -> DataTicketHparams:
        """A registered preset with dotted overrides, e.g. ``from_preset(**{"training.training_steps": "2ep"})``."""
        from lth_kernels.training.hparams import presets

        table = presets(WORKFLOW)
        if name not in table:
            raise HparamsError("preset", f"unknown preset {name!r} for {WORKFLOW} (choose from "
                                         f"{', '.join(sorted(table))})")
        return cls().with_overrides(table[name], source=f"preset {name!r}").with_overrides(overrides)
