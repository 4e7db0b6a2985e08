"""``lth data-ticket``: data-level (patch) lottery tickets for vision transformers (Shen et al., IJCAI 2023).

A *ticket selector*, an EViT-style ViT that keeps ``ceil(r N)`` patch tokens by CLS attention at three drop
blocks, is fine-tuned from a trained ViT (trained here on the data set, or a local checkpoint). Its
per-image choice of ``K`` patches is the winning ticket. Students of the same family, randomly initialised,
are then trained on

* ``ticket`` (a): the selector's patches of each (augmented) image, selected in inference mode;
* ``random`` (b): K random patches per image, redrawn every iteration;
* ``random_fixed``: one random K-subset per batch slot, fixed for the whole run;
* ``random_scaled``: as (b) with the training length scaled by ``1 / r^stages`` (the reference's 300/r^3
  epochs: as many patches seen as the dense run);
* ``all`` (c): every patch,

and each is evaluated on the test set with all patches, with the selector's patches (sparse eval) and with
random patches. ``--keep-rate 0.9,0.8,0.7`` sweeps keep rates in one run directory::

    hparams.json  summary.json  speed.json  plots/{tickets,accuracy_vs_keep}.png
    dense/                                    the ViT the selector starts from (selector.source = dense)
    all/replicate_<i>/                        the all-patches student (shared by every keep rate)
    keep_<r>/selector/                        the fine-tuned selector (step_<T>.safetensors, metrics)
    keep_<r>/<student>/replicate_<i>/         a student's training (+ eval.json with the three evaluations)
    keep_<r>/tickets.safetensors              with --export: the test split's (N, K) patch indices

Every stage is skipped when its output exists and resumes from its checkpoint, so rerunning with more
keep rates, students or replicates only does what is missing. This module does not import torch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from lth_kernels.training.augment import AugmentHparams
from lth_kernels.training.hparams import (
    DatasetHparams,
    Hparams,
    HparamsError,
    ModelHparams,
    TrainingHparams,
    hfield,
    register_preset,
)
from lth_kernels.workflows._ticket_sizes import check_keep_rate

WORKFLOW = "data-ticket"
DEFAULT_PRESET = "vit-digits"
STUDENTS = ("ticket", "random", "random_fixed", "random_scaled", "all")
INPUT_MODES = ("tokens", "zero", "compact")
# How much of the sweep to run; the run's name (hash) leaves them out, so a rerun with more extends it.
JOB_FIELDS = ("keep_rate", "students", "replicates")

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
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        optimizer="adamw", lr=2e-4, momentum=0.9, weight_decay=1e-6, training_steps="5ep", lr_schedule="cosine",
        eval_every="5ep"))


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

    def validate(self):
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


def _deit(steps: str, batch: int, warmup: str = "5ep") -> dict[str, Any]:
    # DeiT: AdamW lr 5e-4 x batch/512, wd 0.05, cosine, 5 warmup epochs, label smoothing 0.1.
    return {"optimizer": "adamw", "lr": 5e-4 * batch / 512, "momentum": 0.9, "weight_decay": 0.05,
            "training_steps": steps, "lr_schedule": "cosine", "warmup_steps": warmup, "label_smoothing": 0.1,
            "eval_every": "10ep"}


# The selector fine-tune of the reference: 30 epochs, AdamW 2e-5 x batch/512, wd 1e-6, cosine, no warmup.
_FINETUNE = {"optimizer": "adamw", "momentum": 0.9, "weight_decay": 1e-6, "training_steps": "30ep",
             "lr_schedule": "cosine", "warmup_steps": "0it", "eval_every": "5ep"}

# DeiT's augmentation: mixup 0.8, cutmix 1.0 (switch 0.5), RandAugment m9, random erasing 0.25.
_DEIT_AUGMENT = {"mixup": 0.8, "cutmix": 1.0, "random_erasing": 0.25, "randaugment": "rand-m9-mstd0.5-inc1"}

PRESETS = {
    # Embedded default: digits 8x8, patch 2 (16 patches), a 4-block 32-wide ViT; drop blocks 1, 2, 3.
    "vit-digits": {},
    # DeiT-Tiny on 32x32 CIFAR-10 with patch 4 (64 patches), trained from scratch here, drop blocks 3, 6, 9.
    "deit_tiny-cifar10": {
        "dataset": {"name": "cifar10", "batch_size": 256},
        "model": {"name": "vit_tiny", "kwargs": {"patch_size": 4, "drop_path_rate": 0.1}},
        "training": _deit("300ep", 256), "dense_training": _deit("300ep", 256),
        "selector": {"training": {**_FINETUNE, "lr": 2e-5 * 256 / 512}},
        "augment": _DEIT_AUGMENT, "keep_rate": ("0.9", "0.8", "0.7")},
    # DeiT-Small on ImageNet (ImageFolder layout): the paper's recipe; the selector starts from a local
    # DeiT-S checkpoint (--selector.checkpoint FILE, e.g. the official deit_small_patch16_224 weights).
    "deit_small-imagenet": {
        "dataset": {"name": "imagefolder", "batch_size": 1024},
        "model": {"name": "vit_small", "kwargs": {"patch_size": 16, "drop_path_rate": 0.1}},
        "training": _deit("300ep", 1024), "dense_training": _deit("300ep", 1024),
        "selector": {"source": "checkpoint", "training": {**_FINETUNE, "lr": 2e-5 * 1024 / 512,
                                                          "eval_every": "1ep"}},
        "augment": _DEIT_AUGMENT, "keep_rate": ("0.9", "0.8", "0.7")},
}

for _name, _overrides in PRESETS.items():
    register_preset(WORKFLOW, _name, _overrides)


# ------------------------------------------------------------------------------------------------ API and CLI


def run_data_ticket(hp: DataTicketHparams, root: str = "runs", *, export: bool = False, **kwargs):
    """Run (or resume) the workflow for ``hp`` under ``root``; returns the run directory (a ``Path``).

    ``export`` writes each keep rate's test-split tickets; ``kwargs`` go to ``DataTicketRunner``
    (``device``, ``progress``, ``data`` = ``(train, test, info)`` instead of building ``hp.dataset``).
    """
    from lth_kernels.workflows._data_ticket_runner import DataTicketRunner

    return DataTicketRunner(hp, root=root, export=export, **kwargs).run()


ALIASES = {"--keep-rate": "--keep_rate", "--student-input": "--student_input"}


def _job_args(parser) -> None:
    parser.add_argument("--export", action="store_true",
                        help="write keep_<r>/tickets.safetensors: the test split's per-image patch indices")


def _run(hp: DataTicketHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process

    path = run_data_ticket(hp, root=ns.root, export=ns.export)
    if is_main_process():
        from lth_kernels.workflows._data_ticket_report import format_table, load_summary

        print(format_table(load_summary(path)))
        print(f"run directory: {path}")


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows._cli import workflow_main

    return workflow_main(DataTicketHparams, argv, workflow=WORKFLOW, prog="lth data-ticket",
                         default_preset=DEFAULT_PRESET, aliases=ALIASES, extra_args=_job_args, run=_run,
                         description="Data-level lottery tickets for ViTs: selector, ticket/random/all students, "
                                     "sparse evaluation. --keep-rate = --keep_rate.")
