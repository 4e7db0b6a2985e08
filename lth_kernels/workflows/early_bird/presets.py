"""``lth early-bird --preset NAME``: the embedded default and the paper's settings."""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.early_bird.hparams import WORKFLOW

_PAPER = {"training.lr": 0.1, "training.momentum": 0.9, "training.weight_decay": 1e-4,
          "training.training_steps": "160ep", "training.milestone_steps": "80ep,120ep", "dataset.batch_size": 256}


register_preset(WORKFLOW, "mlp-digits", {})  # the embedded default: the class defaults


register_preset(WORKFLOW, "cifar_vgg_16-cifar100", {**_PAPER, "dataset.name": "cifar100", "model.name": "cifar_vgg_16"})


register_preset(WORKFLOW, "cifar_resnet_20-cifar10", {**_PAPER, "dataset.name": "cifar10",
                                                      "model.name": "cifar_resnet_20"})


register_preset(WORKFLOW, "resnet18-imagenet", {
    **_PAPER, "dataset.name": "imagefolder", "model.name": "timm:resnet18", "training.training_steps": "90ep",
    "training.milestone_steps": "30ep,60ep"})
