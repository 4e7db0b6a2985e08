"""``lth jackpot --preset NAME``: the embedded default and the paper's settings."""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.jackpot.hparams import WORKFLOW

# The default hparams are the embedded preset: lenet_300_100 on digits, trained dense, searched at 90 %.
register_preset(WORKFLOW, "mlp-digits", {})


_CIFAR_PRETRAIN = {"training_steps": "160ep", "lr": 0.1, "lr_schedule": "multistep", "milestone_steps": "80ep,120ep",
                   "weight_decay": 1e-4}


_CIFAR_SEARCH = {"training_steps": "30ep", "lr": 0.1, "lr_schedule": "cosine", "weight_decay": 5e-4}


# The reference's CIFAR networks (``models/resnet_cifar.py``: ResNet-32 with 32/64/128 filters and option-A
# shortcuts, 1,849,898 parameters on CIFAR-10; ``models/vgg_cifar.py``: VGG-19 with five max-pools and a 1x1-conv
# classifier, 20,035,018) at the sparsities of its ``configs/`` (0.9 and 0.95, 30 search epochs, batch 256, lr 0.1
# cosine, wd 5e-4). ``cifar_resnet_32-cifar10`` / ``cifar_vgg_19-cifar10`` keep open_lth's architectures
# (width-16 ResNet-32 with 1x1-conv shortcuts; VGG-19 with four pools and a linear head) as an option.
for _model, _dataset in (("jackpot_resnet_32", "cifar10"), ("jackpot_resnet_32", "cifar100"),
                         ("jackpot_vgg_19", "cifar10"), ("jackpot_vgg_19", "cifar100"),
                         ("cifar_resnet_32", "cifar10"), ("cifar_vgg_19", "cifar10")):
    register_preset(WORKFLOW, f"{_model}-{_dataset}", {
        "dataset": {"name": _dataset, "batch_size": 128}, "model": {"name": _model},
        "pretrain": _CIFAR_PRETRAIN, "search_training": _CIFAR_SEARCH,
        "search": {"sparsities": ["0.9", "0.95"], "batch_size": 256, "baselines": []}})


register_preset(WORKFLOW, "resnet50-imagenet", {
    "dataset": {"name": "imagefolder", "batch_size": 256}, "model": {"name": "timm:resnet50"},
    "source": {"train_dense": False},
    "search_training": {"training_steps": "30ep", "lr": 0.1, "lr_schedule": "cosine", "weight_decay": 1e-4},
    "finetune": {"training_steps": "10ep", "lr": 0.01, "lr_schedule": "cosine", "weight_decay": 0.0},
    "search": {"sparsities": ["0.8", "0.9"], "baselines": [], "criteria": ["magnitude", "random"]}})
