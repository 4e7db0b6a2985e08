"""``lth jackpot --preset NAME``: the embedded default and the paper's settings."""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.jackpot.hparams import WORKFLOW

# The default hparams are the embedded preset: lenet_300_100 on digits, trained dense, searched at 90 %.
register_preset(WORKFLOW, "mlp-digits", {})


_CIFAR_PRETRAIN = {"training_steps": "160ep", "lr": 0.1, "lr_schedule": "multistep", "milestone_steps": "80ep,120ep",
                   "weight_decay": 1e-4}


_CIFAR_SEARCH = {"training_steps": "30ep", "lr": 0.1, "lr_schedule": "cosine", "weight_decay": 5e-4}


for _model in ("cifar_resnet_32", "cifar_vgg_19"):
    register_preset(WORKFLOW, f"{_model}-cifar10", {
        "dataset": {"name": "cifar10", "batch_size": 128}, "model": {"name": _model},
        "pretrain": _CIFAR_PRETRAIN, "search_training": _CIFAR_SEARCH,
        "search": {"sparsities": ["0.9", "0.95"], "batch_size": 256, "baselines": []}})


register_preset(WORKFLOW, "resnet50-imagenet", {
    "dataset": {"name": "imagefolder", "batch_size": 256}, "model": {"name": "timm:resnet50"},
    "source": {"train_dense": False},
    "search_training": {"training_steps": "30ep", "lr": 0.1, "lr_schedule": "cosine", "weight_decay": 1e-4},
    "finetune": {"training_steps": "10ep", "lr": 0.01, "lr_schedule": "cosine", "weight_decay": 0.0},
    "search": {"sparsities": ["0.8", "0.9"], "baselines": [], "criteria": ["magnitude", "random"]}})
