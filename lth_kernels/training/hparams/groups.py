"""The hparam groups every workflow shares: dataset, model, training, pruning."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from lth_kernels.training.hparams.base import Hparams, HparamsError, hfield
from lth_kernels.training.steps import StepError, split_step_list, split_step_string

# ----------------------------------------------------------------------------------------------- groups

_STRUCTURE_RE = re.compile(r"^(unstructured|channel|\d+:\d+|block\d+(x\d+)?)$")


def _check_step(name: str, text: str, *, positive: bool = False, allow_empty: bool = False) -> None:
    if allow_empty and not text.strip():
        return
    try:
        ep, it = split_step_string(text, f"--{name}")
    except StepError as e:
        raise HparamsError(name, str(e).split(": ", 1)[1]) from None
    if positive and ep == 0 and it == 0:
        raise HparamsError(name, f"must be more than zero steps, got {text!r}")


@dataclass(frozen=True)
class DatasetHparams(Hparams):
    """Data set and batching."""

    RUN_NEUTRAL = ("data_dir", "download")  # where the files are, not what they hold

    name: str = hfield("digits", "data set name (registry: digits, synthetic, mnist, cifar10, cifar100, imagefolder)")
    data_dir: str | None = hfield(None, "directory holding the data set files (none: the registry's default)")
    download: bool = hfield(False, "download the data set if it is missing")
    batch_size: int = hfield(128, "global training batch size (split evenly over DDP ranks)")
    augment: bool = hfield(True, "use the data set's training augmentation")
    pipeline: str = hfield("auto", "how batches are made: device = decoded uint8 images held on the training device, "
                                   "augmented per batch there (digits, synthetic, mnist, cifar10/100 without "
                                   "RandAugment); loader = per-image transforms in DataLoader workers; auto = device "
                                   "where it applies", choices=("auto", "device", "loader"))
    num_workers: str = hfield("auto", "DataLoader worker processes of the loader pipeline: auto = min(8, cores), or "
                                      "a count (0: in the training process)", named=False)
    validation: int = hfield(0, "training images held out (seeded, class-balanced) as a validation set that "
                                "selects the best step instead of the test set; 0: none")
    crop_scale: str = hfield("", "imagefolder: area range of the training RandomResizedCrop, e.g. 0.1,1 (open_lth's "
                                 "ImageNet); empty: torchvision's 0.08,1")
    interpolation: str = hfield("bilinear", "imagefolder: interpolation of the training crop and the test resize "
                                            "(DeiT: bicubic)", choices=("bilinear", "bicubic"))

    def validate(self):
        if self.batch_size < 1:
            raise HparamsError("batch_size", f"must be >= 1, got {self.batch_size}")
        if self.num_workers != "auto" and not self.num_workers.isdigit():
            raise HparamsError("num_workers", f"expected 'auto' or an int >= 0, got {self.num_workers!r}")
        if self.validation < 0:
            raise HparamsError("validation", f"must be >= 0, got {self.validation}")
        if self.crop_scale:
            try:
                lo, hi = (float(v) for v in self.crop_scale.split(","))
            except ValueError:
                lo = hi = -1.0
            if not 0 < lo <= hi <= 1:
                raise HparamsError("crop_scale", f"expected two areas 0 < lo <= hi <= 1, e.g. 0.1,1, got "
                                                 f"{self.crop_scale!r}")
        if (self.crop_scale or self.interpolation != "bilinear") and self.name != "imagefolder":
            raise HparamsError("crop_scale" if self.crop_scale else "interpolation",
                               f"only imagefolder resizes its images, got --dataset.name {self.name}")

    def builder_kwargs(self) -> dict:
        """The data-set builder's options these hparams set (none at their defaults: old builders, old runs)."""
        out = {}
        if self.crop_scale:
            out["crop_scale"] = tuple(float(v) for v in self.crop_scale.split(","))
        if self.interpolation != "bilinear":
            out["interpolation"] = self.interpolation
        return out


@dataclass(frozen=True)
class ModelHparams(Hparams):
    """Model architecture."""

    name: str = hfield("lenet_300_100", "model name (registry: lenet_300_100, cifar_resnet_20, vit_*, timm:<name>)")
    kwargs: dict[str, Any] = hfield(help="extra model arguments: JSON object or k=v,k2=v2", default_factory=dict)


@dataclass(frozen=True)
class TrainingHparams(Hparams):
    """Optimizer, schedule and training length."""

    RUN_NEUTRAL = ("eval_every",)  # evaluation reads the model, it changes no weight or random stream

    optimizer: str = hfield("sgd", "optimizer", choices=("sgd", "adam", "adamw"))
    lr: float = hfield(0.1, "peak learning rate")
    momentum: float = hfield(0.9, "SGD momentum (Adam/AdamW: beta1)")
    nesterov: bool = hfield(False, "Nesterov momentum (SGD only)")
    weight_decay: float = hfield(0.0, "weight decay (L2 for sgd/adam, decoupled for adamw)")
    training_steps: str = hfield("20ep", "training length: '160ep', '2000it' or '2ep500it'")
    lr_schedule: str = hfield("multistep", "multistep: x gamma at each milestone; cosine: to --training.min_lr at "
                                           "the end", choices=("multistep", "cosine"))
    min_lr: float = hfield(0.0, "learning rate the cosine schedule ends at (DeiT's --min-lr 1e-5)")
    milestone_steps: str = hfield("", "multistep milestones, e.g. '80ep,120ep'")
    gamma: float = hfield(0.1, "multistep decay factor")
    warmup_steps: str = hfield("0it", "linear warmup length from lr 0, e.g. '5ep' or '500it'")
    label_smoothing: float = hfield(0.0, "label smoothing of the training loss")
    grad_clip: float = hfield(0.0, "clip the global gradient norm to this value (0: off)")
    amp: str = hfield("auto", "mixed precision: auto = bf16 on GPU, off on CPU",
                      choices=("auto", "bf16", "fp16", "off"))
    data_order_seed: int = hfield(0, "seed of the per-epoch data order")
    seed: int = hfield(0, "seed of initialisation and other randomness")
    eval_every: str = hfield("1ep", "evaluate every this many steps (and at the end); '0it': only at the end")
    compile: bool = hfield(False, "torch.compile the model's training forward and backward (CPU and CUDA)")
    ema_decay: float = hfield(0.0, "keep an exponential moving average of the weights with this decay per step "
                                   "(DeiT: 0.99996), evaluated beside the model (ema_test_acc) and saved as "
                                   "ema.safetensors; 0: none")
    repeated_augment: int = hfield(1, "repeated augmentation: each epoch draws n / R distinct images, each R times "
                                      "in a row (so in one batch, on R ranks under DDP), with its own random "
                                      "transform (DeiT: 3); 1: off")

    def validate(self):
        for name in ("lr", "gamma"):
            if getattr(self, name) <= 0:
                raise HparamsError(name, f"must be > 0, got {getattr(self, name)}")
        if not 0 <= self.momentum < 1:
            raise HparamsError("momentum", f"must be in [0, 1), got {self.momentum}")
        for name in ("weight_decay", "grad_clip"):
            if getattr(self, name) < 0:
                raise HparamsError(name, f"must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.label_smoothing < 1:
            raise HparamsError("label_smoothing", f"must be in [0, 1), got {self.label_smoothing}")
        if self.min_lr < 0 or (self.min_lr and (self.lr_schedule != "cosine" or self.min_lr >= self.lr)):
            raise HparamsError("min_lr", f"needs --training.lr_schedule cosine and 0 <= min_lr < lr ({self.lr}), "
                                         f"got {self.min_lr}")
        if not 0 <= self.ema_decay < 1:
            raise HparamsError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if self.repeated_augment < 1:
            raise HparamsError("repeated_augment", f"must be >= 1, got {self.repeated_augment}")
        if self.nesterov and (self.optimizer != "sgd" or self.momentum == 0):
            raise HparamsError("nesterov", "needs --training.optimizer sgd and --training.momentum > 0")
        _check_step("training_steps", self.training_steps, positive=True)
        _check_step("warmup_steps", self.warmup_steps)
        _check_step("eval_every", self.eval_every)
        try:
            split_step_list(self.milestone_steps, "--milestone_steps")
        except StepError as e:
            raise HparamsError("milestone_steps", str(e).split(": ", 1)[1]) from None


@dataclass(frozen=True)
class PruningHparams(Hparams):
    """Pruning strategy and amount per pruning event."""

    strategy: str = hfield("magnitude", "pruning strategy (registry: magnitude, random, snip, grasp, synflow, ...)")
    fraction: float = hfield(0.2, "fraction of the remaining weights removed per pruning event")
    scope: str = hfield("global", "rank weights across all layers or within each layer",
                        choices=("global", "layerwise"))
    structure: str = hfield("unstructured", "granularity: unstructured, channel, N:M (e.g. 2:4), blockB or blockBxB")
    exclude: tuple[str, ...] = hfield(help="extra parameter names never pruned (comma separated), added to the "
                                           "model's default_prune_exclude", default_factory=tuple)

    def validate(self):
        if not 0 <= self.fraction < 1:
            raise HparamsError("fraction", f"must be in [0, 1), got {self.fraction}")
        if not _STRUCTURE_RE.match(self.structure):
            raise HparamsError("structure", "expected unstructured, channel, N:M, blockB or blockBxB, got "
                                            f"{self.structure!r}")
