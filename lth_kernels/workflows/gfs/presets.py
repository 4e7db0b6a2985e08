"""``lth gfs --preset NAME``: the embedded default and the paper's settings."""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.gfs.hparams import WORKFLOW

# The fine-tunes follow the reference (lushleaf/Network-Pruning-Greedy-Forward-Selection):
# * after each layer, ``mobile2_prune.py``: 0.1 epoch of SGD at the fixed lr 2.5e-3, momentum 0.9, wd 4e-5
#   (the GfsOptions defaults);
# * the final fine-tune, ``mobile2_finetune.py``: SGD with Nesterov momentum 0.9 from lr 0.1 on a per-epoch
#   cosine without warm-up, cross entropy with label smoothing 0.1, wd 4e-5 except on BN parameters and biases
#   (weight decay 0 there), batch 256, 150 epochs on ImageNet; then 10 more epochs meant at lr 5e-4 (the script
#   writes that lr into a variable it never hands to the optimizer, so as released it keeps the last cosine
#   lr; here it is applied). The CIFAR presets scale the length down (30 + 2 epochs).
_FINAL_FT = {"finetune.lr": 0.1, "finetune.lr_schedule": "cosine", "finetune.nesterov": True,
             "finetune.momentum": 0.9, "finetune.label_smoothing": 0.1, "finetune.weight_decay": 4e-5,
             "gfs.finetune_no_decay_bn_bias": True, "gfs.finetune_tail_lr": 5e-4}
_CIFAR = {"training.lr": 0.1, "training.weight_decay": 1e-4, "training.training_steps": "160ep",
          "training.milestone_steps": "80ep,120ep", "dataset.batch_size": 128, **_FINAL_FT,
          "finetune.training_steps": "30ep", "gfs.finetune_tail_steps": "2ep", "gfs.eval_samples": 2048,
          "gfs.pretrain_steps": "0it,500it,1000it,2000it,5000it,10000it,20000it",
          "gfs.train_sizes": "5000,10000,25000,50000"}


register_preset(WORKFLOW, "mlp-digits", {})  # the embedded default: the class defaults


register_preset(WORKFLOW, "cifar_vgg_16-cifar100", {**_CIFAR, "dataset.name": "cifar100",
                                                    "model.name": "cifar_vgg_16"})


register_preset(WORKFLOW, "cifar_resnet_20-cifar10", {**_CIFAR, "dataset.name": "cifar10",
                                                      "model.name": "cifar_resnet_20"})


_IMAGENET = {**_CIFAR, "dataset.name": "imagefolder", "dataset.batch_size": 256, "finetune.training_steps": "150ep",
             "gfs.finetune_tail_steps": "10ep", "gfs.eval_samples": 10000,
             "gfs.pretrain_steps": "0it,5000it,10000it,20000it,50000it,100000it",
             "gfs.train_sizes": "128000,320000,640000,1281167"}


register_preset(WORKFLOW, "resnet18-imagenet", {
    **_IMAGENET, "model.name": "timm:resnet18", "training.training_steps": "90ep",
    "training.milestone_steps": "30ep,60ep"})


# The reference's own setting: MobileNetV2 (timm ``mobilenetv2_100``, ReLU6 inside its BN+act modules, so the
# gates sit after the activation) on ImageNet-layout data. Dense training follows the MobileNetV2 recipe the
# reference starts from (pre-trained weights: --model.kwargs checkpoint_path=...). ``mobile2_prune.py`` skips its
# Mask layers 0, 1, 33 and 34 by index; here that is approximated by name: the first block (tied to the stem)
# and the 1280-channel head conv are not pruned.
register_preset(WORKFLOW, "mobilenetv2-imagenet", {
    **_IMAGENET, "model.name": "timm:mobilenetv2_100", "training.lr": 0.05, "training.lr_schedule": "cosine",
    "training.training_steps": "150ep", "training.milestone_steps": "", "training.weight_decay": 4e-5,
    "training.nesterov": True, "training.label_smoothing": 0.1,
    "gfs.exclude": "bn1,blocks.0.*,bn2"})
