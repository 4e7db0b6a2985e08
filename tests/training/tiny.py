"""Tiny models and data for the trainer tests (no dependency on the model/data registries)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset


class TinyMaskedLinear(nn.Linear):
    """A Linear with the masked-layer interface: a non-persistent ``mask`` buffer and ``set_mask``; the
    forward multiplies by the mask, so autograd gives a masked dW (as the masked kernels do)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__(in_features, out_features, bias)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)

    def set_mask(self, mask: torch.Tensor) -> None:
        with torch.no_grad():
            self.mask.copy_(mask.bool())
            self.weight.mul_(self.mask)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class DenseGradMaskedLinear(TinyMaskedLinear):
    """A broken masked layer whose backward gives a dense dW (it ignores the mask in the forward)."""

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)


def tiny_mlp(in_features: int = 8, hidden: int = 16, classes: int = 3, dropout: float = 0.0, masked: bool = True):
    lin = TinyMaskedLinear if masked else nn.Linear
    return nn.Sequential(lin(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, classes))


def tiny_data(n_train: int = 96, n_test: int = 40, in_features: int = 8, classes: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_train + n_test, in_features, generator=g)
    w = torch.randn(in_features, classes, generator=g)
    y = (x @ w).argmax(dim=1)
    return TensorDataset(x[:n_train], y[:n_train]), TensorDataset(x[n_train:], y[n_train:])


class ListDataset(Dataset):
    """A map-style data set without ``.tensors``: forces the DataLoader path."""

    def __init__(self, ds: TensorDataset):
        self.x, self.y = ds.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]
