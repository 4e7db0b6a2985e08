"""``lth imp --preset NAME``: open_lth's default hparams per model and data set (``models/*.py:
default_hparams`` there), as overrides of ``ImpHparams``'s defaults (which are ``lenet_300_100-digits``).

Pruning is open_lth's global magnitude pruning of 20% of the remaining weights per level, with the
models carrying open_lth's exclusions themselves (``default_prune_exclude``: the output layer of LeNet,
Conv and VGG, nothing for ResNets), except Conv-4, which prunes per layer group at the LTH paper's rates.

The file-based data sets hold out ``VALIDATION`` training images (seeded, class-balanced) that select the
reported best step, as the LTH paper's 5,000-image validation set does; the test set only measures.
``--dataset.validation 0`` gives open_lth's full training split (and the run names of earlier versions).
Torch-free.
"""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset

VALIDATION = 5000


_CIFAR_SGD = {"dataset.validation": VALIDATION,
              "training.optimizer": "sgd", "training.lr": 0.1, "training.momentum": 0.9,
              "training.weight_decay": 1e-4, "training.training_steps": "160ep",
              "training.milestone_steps": "80ep,120ep", "training.gamma": 0.1, "training.eval_every": "1ep",
              "dataset.name": "cifar10", "dataset.batch_size": 128}


PRESETS = {
    # The default and `make demo`: the embedded digits (no download), a few seconds per level on a CPU core.
    "lenet_300_100-digits": {},
    # open_lth mnist_lenet_300_100: batch 128, plain SGD 0.1, 40 epochs, fc.weight not pruned.
    "lenet_300_100-mnist": {"dataset.name": "mnist", "dataset.batch_size": 128, "dataset.validation": VALIDATION,
                            "training.optimizer": "sgd",
                            "training.lr": 0.1, "training.momentum": 0.0, "training.training_steps": "40ep",
                            "training.eval_every": "1ep"},
    # Frankle & Carbin Conv-4 (not in open_lth): Adam 3e-4, batch 60, 25k iterations, each
    # level removing 10 % of every conv layer, 20 % of every hidden fully connected layer and 10 % of the output
    # layer (their Figure 2), layer by layer.
    "conv4-cifar10": {"model.name": "conv4", "dataset.name": "cifar10", "dataset.batch_size": 60,
                      "dataset.validation": VALIDATION,
                      "pruning.fraction_by": {"convs.*": 0.1, "fc_layers.*": 0.2, "fc.weight": 0.1},
                      "training.optimizer": "adam", "training.lr": 3e-4, "training.momentum": 0.9,
                      "training.training_steps": "25000it", "training.eval_every": "1ep"},
    # open_lth cifar_resnet_20, rewound to 500 iterations (the README's example; follow-up work uses 1000it).
    "cifar_resnet_20-cifar10": {**_CIFAR_SGD, "model.name": "cifar_resnet_20", "rewind": "500it"},
    # open_lth cifar_vgg_16 (output layer excluded by the model), rewound to 200 iterations.
    "cifar_vgg_16-cifar10": {**_CIFAR_SGD, "model.name": "cifar_vgg_16", "rewind": "200it"},
    # open_lth imagenet_resnet_50: batch 1024, SGD 0.4 with 5 warmup epochs, x0.1 at 30/60/80, 90 epochs;
    # rewound to epoch 5 (Frankle et al., "Linear mode connectivity"). timm's ResNet-50 with open_lth's init
    # (Kaiming-normal convs and fc, BN scales U[0, 1); model.kwargs init=timm for timm's), ImageFolder data with
    # open_lth's training crop: RandomResizedCrop(224, scale=(0.1, 1)).
    "resnet50-imagenet": {"model.name": "timm:resnet50", "model.kwargs": {"init": "kaiming_normal"},
                          "dataset.name": "imagefolder", "dataset.batch_size": 1024, "dataset.crop_scale": "0.1,1",
                          "training.optimizer": "sgd", "training.lr": 0.4, "training.momentum": 0.9,
                          "training.weight_decay": 1e-4, "training.warmup_steps": "5ep",
                          "training.training_steps": "90ep", "training.milestone_steps": "30ep,60ep,80ep",
                          "training.eval_every": "1ep", "rewind": "5ep"},
}


for _name, _overrides in PRESETS.items():
    register_preset("imp", _name, _overrides)
