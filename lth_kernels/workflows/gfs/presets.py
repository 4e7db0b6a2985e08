"""``lth gfs --preset NAME``: the embedded default and the paper's settings."""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.gfs.hparams import WORKFLOW

_CIFAR = {"training.lr": 0.1, "training.weight_decay": 1e-4, "training.training_steps": "160ep",
          "training.milestone_steps": "80ep,120ep", "dataset.batch_size": 128, "gfs.finetune_steps": "20ep",
          "gfs.layer_finetune_steps": "0ep100it", "gfs.eval_samples": 2048,
          "gfs.pretrain_steps": "0it,500it,1000it,2000it,5000it,10000it,20000it",
          "gfs.train_sizes": "5000,10000,25000,50000"}


register_preset(WORKFLOW, "mlp-digits", {})  # the embedded default: the class defaults


register_preset(WORKFLOW, "cifar_vgg_16-cifar100", {**_CIFAR, "dataset.name": "cifar100",
                                                    "model.name": "cifar_vgg_16"})


register_preset(WORKFLOW, "cifar_resnet_20-cifar10", {**_CIFAR, "dataset.name": "cifar10",
                                                      "model.name": "cifar_resnet_20"})


register_preset(WORKFLOW, "resnet18-imagenet", {
    **_CIFAR, "dataset.name": "imagefolder", "model.name": "timm:resnet18", "dataset.batch_size": 256,
    "training.training_steps": "90ep", "training.milestone_steps": "30ep,60ep", "gfs.finetune_steps": "5ep",
    "gfs.layer_finetune_steps": "0ep500it", "gfs.eval_samples": 10000,
    "gfs.pretrain_steps": "0it,5000it,10000it,20000it,50000it,100000it",
    "gfs.train_sizes": "128000,320000,640000,1281167"})
