"""open_lth's CIFAR ResNets: ``cifar_resnet_<depth>[_<width>]`` with ``depth = 6n + 2``.

A 3x3 conv (``width`` filters, default 16) + BN + ReLU, then three segments of ``n`` basic blocks with
``width``, ``2*width`` and ``4*width`` filters (the first block of segments 2 and 3 downsamples with stride 2 and
a 1x1 conv + BN shortcut), global average pooling and the output layer ``fc``. Convs have no bias.
``cifar_resnet_20`` has 272,474 parameters on CIFAR-10. Module and parameter names match open_lth, so its
``model_ep*_it*.pth`` files load with ``checkpoint_path=``. open_lth excludes nothing from pruning for ResNets,
so ``default_prune_exclude`` is empty. Any input size works (8x8 digits: 8 -> 4 -> 2 pixels per side);
open_lth pools with a square kernel of the map's width, here the pooling is global, which is the same on
square inputs.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.models._registry import register_model
from lth_kernels.models.initializers import initialize


class Block(nn.Module):
    """Basic block: conv-BN-ReLU-conv-BN plus shortcut, then ReLU."""

    def __init__(self, f_in: int, f_out: int, downsample: bool = False):
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(f_in, f_out, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(f_out)
        self.conv2 = nn.Conv2d(f_out, f_out, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(f_out)
        if downsample or f_in != f_out:
            self.shortcut = nn.Sequential(nn.Conv2d(f_in, f_out, kernel_size=1, stride=stride, bias=False),
                                          nn.BatchNorm2d(f_out))
        else:
            self.shortcut = nn.Sequential()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    def __init__(self, plan: list[tuple[int, int]], num_classes: int, in_chans: int):
        super().__init__()
        current = plan[0][0]
        self.conv = nn.Conv2d(in_chans, current, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(current)
        blocks = []
        for segment, (filters, num_blocks) in enumerate(plan):
            for index in range(num_blocks):
                blocks.append(Block(current, filters, downsample=segment > 0 and index == 0))
                current = filters
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(plan[-1][0], num_classes)
        self.default_prune_exclude = ()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.conv(x)))
        out = self.blocks(out)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)


@register_model(re.compile(r"cifar_resnet_(?P<depth>\d+)(?:_(?P<width>\d+))?"), display="cifar_resnet_<6n+2>[_<width>]")
def _cifar_resnet(name, spec, *, num_classes, in_chans, img_size, init="kaiming_normal", batchnorm_init="uniform"):
    depth, width = int(spec["depth"]), int(spec.get("width", 16))
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"model: {name!r} needs a depth of 6n+2 (8, 14, 20, 32, 44, 56, 110, ...), got {depth}")
    if width < 1:
        raise ValueError(f"model: {name!r} needs a positive width, got {width}")
    n = (depth - 2) // 6
    plan = [(width, n), (2 * width, n), (4 * width, n)]
    return initialize(CifarResNet(plan, num_classes, in_chans), init, batchnorm_init)
