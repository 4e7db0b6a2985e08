"""The CIFAR networks of lottery jackpots (Zhang et al.; ``models/resnet_cifar.py`` and ``models/vgg_cifar.py``
of zyxxmu/lottery-jackpots): ``jackpot_resnet_<6n+2>`` and ``jackpot_vgg_<11|13|16|19>``.

They differ from open_lth's ``cifar_resnet_*`` / ``cifar_vgg_*``, so the jackpot presets use these:

* ResNet: a 3x3 stem of 32 filters, three stages of ``n`` basic blocks with 32 / 64 / 128 filters (stride 2
  at the first block of stages 2 and 3) and *option-A* shortcuts: a stride-2 subsample zero-padded on the
  channel axis, no parameters. ``jackpot_resnet_32`` has 1,849,898 parameters on CIFAR-10 (1,861,508 on
  CIFAR-100), against 466,906 for open_lth's width-16 ``cifar_resnet_32`` with 1x1-conv shortcuts.
* VGG: 3x3 conv (no bias) + BN + ReLU per plan entry, a 2x2 max-pool at each ``M`` (five of them, 32 -> 1
  pixel; ``ceil_mode`` so smaller inputs such as 8x8 digits pass too), and a 1x1-conv classifier with bias
  (512 -> classes) and no hidden fully connected layer. ``jackpot_vgg_19`` has 20,035,018 parameters on
  CIFAR-10 (20,081,188 on CIFAR-100).

Convs have no bias; the classifier, named ``fc`` (ResNet) / ``classifier`` (VGG), is a 1x1 conv with bias, as in
the reference, where the search keeps it dense. Initialisation: PyTorch's defaults, as the reference (its VGG
initialiser is commented out, its ResNet has none).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.models._registry import register_model

VGG_PLANS = {
    11: [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    13: [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    16: [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    19: [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


class BlockA(nn.Module):
    """conv-BN-ReLU-conv-BN plus the option-A shortcut, then ReLU."""

    def __init__(self, f_in: int, f_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(f_in, f_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        self.stride, self.pad = stride, f_out - f_in

    def shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[:, :, ::2, ::2]
        if self.pad:
            x = F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class JackpotResNet(nn.Module):
    def __init__(self, n: int, num_classes: int, in_chans: int, width: int = 32):
        super().__init__()
        self.conv = nn.Conv2d(in_chans, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, current = [], width
        for stage, filters in enumerate((width, 2 * width, 4 * width)):
            for index in range(n):
                blocks.append(BlockA(current, filters, stride=2 if stage > 0 and index == 0 else 1))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Conv2d(current, num_classes, 1, bias=True)
        self.default_prune_exclude = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        return self.fc(F.adaptive_avg_pool2d(out, 1)).flatten(1)


class JackpotVGG(nn.Module):
    def __init__(self, plan: list, num_classes: int, in_chans: int):
        super().__init__()
        layers, current = [], in_chans
        for x in plan:
            if x == "M":
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            else:
                layers += [nn.Conv2d(current, x, 3, padding=1, bias=False), nn.BatchNorm2d(x), nn.ReLU(inplace=True)]
                current = x
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Conv2d(current, num_classes, 1, bias=True)
        self.default_prune_exclude = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1)).flatten(1)


@register_model(re.compile(r"jackpot_resnet_(?P<depth>\d+)"), display="jackpot_resnet_<6n+2>")
def _jackpot_resnet(name, spec, *, num_classes, in_chans, img_size):
    depth = int(spec["depth"])
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"model: {name!r} needs a depth of 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
    return JackpotResNet((depth - 2) // 6, num_classes, in_chans)


@register_model(re.compile(r"jackpot_vgg_(?P<depth>\d+)"), display="jackpot_vgg_<11|13|16|19>")
def _jackpot_vgg(name, spec, *, num_classes, in_chans, img_size):
    depth = int(spec["depth"])
    if depth not in VGG_PLANS:
        raise ValueError(f"model: {name!r} needs a depth of 11, 13, 16 or 19, got {depth}")
    return JackpotVGG(VGG_PLANS[depth], num_classes, in_chans)
