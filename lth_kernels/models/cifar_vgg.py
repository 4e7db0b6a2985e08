"""open_lth's CIFAR VGGs: ``cifar_vgg_<11|13|16|19>``.

Conv modules (3x3 conv with bias, BN, ReLU) following the plans below, where ``M`` is a 2x2 max-pool (four of
them), then average pooling to 1x1 and the output layer ``fc`` (512 -> classes). open_lth pools with
``AvgPool2d(2)``, which on 32x32 CIFAR inputs (2x2 maps after four max-pools) is the same as the global pooling
used here; global pooling also keeps larger inputs working. Inputs smaller than 16x16 cannot pass four max-pools:
that is a one-line error (the 8x8 digits data set does not fit a VGG; use ``conv2``/``conv4``/``conv6``,
``cifar_resnet_*`` or ``lenet_*`` there). As in open_lth, ``fc.weight`` is not pruned by default.
Parameter counts on CIFAR-10: VGG-11 9,231,114; VGG-13 9,416,010; VGG-16 14,728,266; VGG-19 20,040,522.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.models._common import too_small
from lth_kernels.models._registry import register_model
from lth_kernels.models.initializers import initialize

PLANS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512],
}


class ConvModule(nn.Module):
    def __init__(self, in_filters: int, out_filters: int):
        super().__init__()
        self.conv = nn.Conv2d(in_filters, out_filters, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm2d(out_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class CifarVGG(nn.Module):
    def __init__(self, plan: list, num_classes: int, in_chans: int):
        super().__init__()
        layers, filters = [], in_chans
        for spec in plan:
            if spec == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers.append(ConvModule(filters, spec))
                filters = spec
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(filters, num_classes)
        self.default_prune_exclude = ("fc.weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(self.layers(x), 1).flatten(1)
        return self.fc(x)


@register_model(re.compile(r"cifar_vgg_(?P<depth>\d+)"), display="cifar_vgg_<11|13|16|19>")
def _cifar_vgg(name, spec, *, num_classes, in_chans, img_size, init="kaiming_normal", batchnorm_init="uniform"):
    depth = int(spec["depth"])
    if depth not in PLANS:
        raise ValueError(f"model: {name!r} needs a depth in {sorted(PLANS)}, got {depth}")
    pools = PLANS[depth].count("M")
    if min(img_size) < 2 ** pools:
        raise too_small(name, img_size, 2 ** pools, f"{pools} 2x2 max-pools")
    return initialize(CifarVGG(PLANS[depth], num_classes, in_chans), init, batchnorm_init)
