"""Conv-2 / Conv-4 / Conv-6 of Frankle & Carbin (ICLR 2019, Figure 2), the VGG-like CIFAR-10 nets of the LTH paper.

Blocks of two 3x3 convs (padding 1, bias, ReLU) followed by a 2x2 max-pool: 64 filters (Conv-2), then 128
(Conv-4), then 256 (Conv-6); then fully connected 256 - 256 - output. The first fc layer takes the flattened
feature map, so its width follows the input: ``filters * (h / 2^blocks) * (w / 2^blocks)``. Parameter counts on
CIFAR-10: Conv-2 4,301,642 and Conv-4 2,425,930 (the paper's 4.3M and 2.4M); Conv-6 2,262,602 (the paper's
figure says 1.7M, which this layer list does not give). Inputs must be at least ``2^blocks`` pixels per side
(8x8 digits work for all three). Following open_lth's convention for VGG and LeNet, the output layer ``fc``
is not pruned by default (the paper pruned it at half the rate of the other fc layers instead).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.models._common import too_small
from lth_kernels.models._registry import register_model
from lth_kernels.models.initializers import initialize

_FILTERS = {2: (64,), 4: (64, 128), 6: (64, 128, 256)}


class ConvNet(nn.Module):
    def __init__(self, blocks: tuple[int, ...], num_classes: int, in_chans: int, img_size: tuple[int, int],
                 name: str):
        super().__init__()
        down = 2 ** len(blocks)
        if min(img_size) < down:
            raise too_small(name, img_size, down, f"{len(blocks)} 2x2 max-pools")
        layers, current = [], in_chans
        for filters in blocks:
            for _ in range(2):
                layers += [nn.Conv2d(current, filters, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
                current = filters
            layers.append(nn.MaxPool2d(2))
        self.convs = nn.Sequential(*layers)
        flat = current * (img_size[0] // down) * (img_size[1] // down)
        self.fc_layers = nn.ModuleList([nn.Linear(flat, 256), nn.Linear(256, 256)])
        self.fc = nn.Linear(256, num_classes)
        self.default_prune_exclude = ("fc.weight",)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.convs(x).flatten(1)
        for layer in self.fc_layers:
            x = F.relu(layer(x))
        return self.fc(x)


def _make(depth: int):
    def build(name, spec, *, num_classes, in_chans, img_size, init="kaiming_normal", batchnorm_init="uniform"):
        return initialize(ConvNet(_FILTERS[depth], num_classes, in_chans, img_size, name), init, batchnorm_init)

    return build


for _depth in _FILTERS:
    register_model(f"conv{_depth}")(_make(_depth))
