"""Batch-level training augmentation through timm: mixup, cutmix and random erasing (the DeiT recipe).

``AugmentHparams`` are the flags (``--<prefix>.augment.mixup 0.8`` ...); ``BatchAugment`` applies them to
each training batch on the device, inside the Trainer, *before* the model sees it, so a model that picks
its inputs from the batch (a data-level ticket's selector) picks them on the augmented view. Mixup and
cutmix turn the labels into soft targets with label smoothing folded in (timm's ``Mixup``); the Trainer's
default loss is then soft-target cross entropy. RandAugment is a per-image PIL transform and lives in the
file-backed data sets (``create_dataset(..., randaugment="rand-m9-mstd0.5-inc1")``).

timm draws from numpy's, Python's and torch's global generators; ``BatchAugment`` seeds them from
``(seed, step)`` for each call and restores them after, so a run is reproducible and a resumed run draws
exactly what the uninterrupted one drew.
"""

from __future__ import annotations

from dataclasses import dataclass

from lth_kernels.training.hparams import Hparams, HparamsError, hfield

# torch, numpy and timm are imported where used: workflow hparams modules import this one and stay light.


@dataclass(frozen=True)
class AugmentHparams(Hparams):
    """Batch augmentation (timm): mixup, cutmix, random erasing; RandAugment for PIL data sets."""

    mixup: float = hfield(0.0, "mixup alpha (0: off; DeiT: 0.8)")
    cutmix: float = hfield(0.0, "cutmix alpha (0: off; DeiT: 1.0)")
    mix_prob: float = hfield(1.0, "probability of mixing a batch when mixup or cutmix is on")
    switch_prob: float = hfield(0.5, "probability of cutmix instead of mixup when both are on")
    random_erasing: float = hfield(0.0, "probability of erasing a random rectangle per image (DeiT: 0.25)")
    randaugment: str = hfield("", "timm RandAugment policy for file-backed data sets, e.g. "
                                  "'rand-m9-mstd0.5-inc1' (DeiT); empty: off")

    def validate(self):
        for name in ("mixup", "cutmix"):
            if getattr(self, name) < 0:
                raise HparamsError(name, f"must be >= 0, got {getattr(self, name)}")
        for name in ("mix_prob", "switch_prob", "random_erasing"):
            if not 0 <= getattr(self, name) <= 1:
                raise HparamsError(name, f"must be in [0, 1], got {getattr(self, name)}")
        if self.randaugment and not self.randaugment.startswith("rand-"):
            raise HparamsError("randaugment", f"expected a timm policy like 'rand-m9-mstd0.5-inc1', got "
                                              f"{self.randaugment!r}")

    @property
    def mixes(self) -> bool:
        return (self.mixup > 0 or self.cutmix > 0) and self.mix_prob > 0

    @property
    def batch_level(self) -> bool:
        """Whether ``BatchAugment`` has anything to do."""
        return self.mixes or self.random_erasing > 0


class BatchAugment:
    """``(images, labels, step) -> (images, targets)`` with the augmentations of ``hp``.

    ``targets`` are the labels unchanged, or (with mixup/cutmix) float soft targets (B, num_classes) that
    already carry ``label_smoothing``.
    """

    def __init__(self, hp: AugmentHparams, num_classes: int, *, label_smoothing: float = 0.0, seed: int = 0):
        from timm.data import Mixup
        from timm.data.random_erasing import RandomErasing

        self.hp, self.seed = hp, seed
        self.mixup = Mixup(mixup_alpha=hp.mixup, cutmix_alpha=hp.cutmix, prob=hp.mix_prob,
                           switch_prob=hp.switch_prob, label_smoothing=label_smoothing,
                           num_classes=num_classes) if hp.mixes else None
        # 'pixel' erasing (per-pixel normal noise) as DeiT; the device is set per call.
        self.erase = RandomErasing(hp.random_erasing, mode="pixel", device="cpu") if hp.random_erasing > 0 else None

    def __call__(self, x, y, step: int):
        from lth_kernels.training import distributed as dist_utils
        from lth_kernels.training.data_order import epoch_seed
        from lth_kernels.training.seed import seeded

        if self.mixup is not None and x.shape[0] % 2:
            raise ValueError(f"batch_size: mixup/cutmix pair the images of a batch and need an even per-device "
                             f"batch, got {x.shape[0]}")
        # Per step and per rank: DDP ranks hold different images and should draw different boxes.
        with seeded(epoch_seed(self.seed, step * 4096 + dist_utils.rank()), x.device):
            if self.erase is not None:
                self.erase.device = x.device
                x = self.erase(x.clone())
            if self.mixup is not None:
                # timm mixes in place; the Trainer's batch may be a view of the resident data set.
                x, y = self.mixup(x.clone(), y)
        return x, y
