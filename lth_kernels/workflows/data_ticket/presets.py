"""``lth data-ticket --preset NAME``: the embedded default and the DeiT recipes."""

from __future__ import annotations

from typing import Any

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.data_ticket.hparams import WORKFLOW

# DeiT's main.py (which the reference's is): model EMA 0.99996 (evaluated beside the model, the model stays the
# result), repeated augmentation x3.
_DEIT_MAIN = {"ema_decay": 0.99996, "repeated_augment": 3}


def _deit(steps: str, batch: int, warmup: str = "5ep") -> dict[str, Any]:
    # DeiT: AdamW lr 5e-4 x batch/512, wd 0.05, cosine to min-lr 1e-5, 5 warmup epochs, label smoothing 0.1.
    return {"optimizer": "adamw", "lr": 5e-4 * batch / 512, "momentum": 0.9, "weight_decay": 0.05,
            "training_steps": steps, "lr_schedule": "cosine", "min_lr": 1e-5, "warmup_steps": warmup,
            "label_smoothing": 0.1, "eval_every": "10ep", **_DEIT_MAIN}


# The selector fine-tune of the reference: 30 epochs, AdamW 2e-5 x batch/512, wd 1e-6, cosine, no warmup (its
# peak lr is at or near DeiT's min-lr 1e-5, so the cosine goes to 0 here).
_FINETUNE = {"optimizer": "adamw", "momentum": 0.9, "weight_decay": 1e-6, "training_steps": "30ep",
             "lr_schedule": "cosine", "warmup_steps": "0it", "eval_every": "5ep", **_DEIT_MAIN}


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
        "dataset": {"name": "imagefolder", "batch_size": 1024, "interpolation": "bicubic"},
        "model": {"name": "vit_small", "kwargs": {"patch_size": 16, "drop_path_rate": 0.1}},
        "training": _deit("300ep", 1024), "dense_training": _deit("300ep", 1024),
        "selector": {"source": "checkpoint", "training": {**_FINETUNE, "lr": 2e-5 * 1024 / 512,
                                                          "eval_every": "1ep"}},
        # the paper's ImageNet sweep (Shen et al., 2023): K = 170, 144, 121, 101, 84 of 196 patches
        "augment": _DEIT_AUGMENT, "keep_rate": ("0.95", "0.9", "0.85", "0.8", "0.75")},
}


for _name, _overrides in PRESETS.items():
    register_preset(WORKFLOW, _name, _overrides)
