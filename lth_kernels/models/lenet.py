"""LeNet models: open_lth's fully connected LeNets (``lenet_300_100`` etc.) and a LeNet-5 convnet.

``lenet_<n1>[_<n2>...]`` (open_lth's ``mnist_lenet_<...>``; alias ``mlp_<...>``): hidden Linear layers of
``n1, n2, ...`` units with ReLU, then the output layer ``fc``. The input is flattened, so any image shape
works: ``in_features = in_chans * h * w`` (784 for MNIST, 64 for the 8x8 digits). As in open_lth the output
layer's weight is not pruned by default.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.models._common import too_small
from lth_kernels.models._registry import register_model
from lth_kernels.models.initializers import initialize


class LeNet(nn.Module):
    """open_lth ``mnist_lenet``: Linear+ReLU per entry of ``plan``, then the output layer ``fc``."""

    def __init__(self, plan: list[int], num_classes: int, in_features: int):
        super().__init__()
        layers, current = [], in_features
        for size in plan:
            layers.append(nn.Linear(current, size))
            current = size
        self.fc_layers = nn.ModuleList(layers)
        self.fc = nn.Linear(current, num_classes)
        self.default_prune_exclude = ("fc.weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)


_PLAN = r"(?P<plan>[1-9]\d*(?:_[1-9]\d*)*)"


@register_model(re.compile(r"mlp_" + _PLAN), display="mlp_<n>[_<n>...]")
@register_model(re.compile(r"(?:mnist_)?lenet_" + _PLAN), display="lenet_<n>[_<n>...]")
def _lenet(name, spec, *, num_classes, in_chans, img_size, init="kaiming_normal", batchnorm_init="uniform"):
    plan = [int(n) for n in spec["plan"].split("_")]
    model = LeNet(plan, num_classes, in_chans * img_size[0] * img_size[1])
    return initialize(model, init, batchnorm_init)


class LeNet5(nn.Module):
    """LeNet-5 (LeCun et al. 1998) in its common PyTorch form: conv 6@5x5 (padding 2) - ReLU - maxpool 2 -
    conv 16@5x5 - ReLU - maxpool 2 - fc1 120 - fc2 84 - fc. On 28x28 MNIST: 61,706 parameters.
    Needs inputs of at least 12x12 (the second 5x5 conv is unpadded); the output layer ``fc`` is not pruned
    by default, as for open_lth's LeNets."""

    def __init__(self, num_classes: int, in_chans: int, img_size: tuple[int, int]):
        super().__init__()
        if min(img_size) < 12:
            raise too_small("lenet5", img_size, 12, "an unpadded 5x5 conv between two 2x2 pools")
        h, w = ((s // 2 - 4) // 2 for s in img_size)
        self.conv1 = nn.Conv2d(in_chans, 6, kernel_size=5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * h * w, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc = nn.Linear(84, num_classes)
        self.default_prune_exclude = ("fc.weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.fc(x)


@register_model("lenet5")
def _lenet5(name, spec, *, num_classes, in_chans, img_size, init="kaiming_normal", batchnorm_init="uniform"):
    return initialize(LeNet5(num_classes, in_chans, img_size), init, batchnorm_init)
