"""Small models for the ticket tests (the model registry lives elsewhere)."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """LeNet-300-100-like MLP; like open_lth's LeNet it excludes the output layer from pruning by default."""

    default_prune_exclude = ("fc.weight",)

    def __init__(self, d_in: int = 20, hidden: tuple[int, ...] = (30, 16), d_out: int = 5, bias: bool = True):
        super().__init__()
        dims = (d_in, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b, bias=bias) for a, b in zip(dims[:-1], dims[1:]))
        self.fc = nn.Linear(dims[-1], d_out, bias=bias)

    def forward(self, x):
        for layer in self.layers:
            x = torch.relu(layer(x))
        return self.fc(x)


class CNN(nn.Module):
    def __init__(self, c_in: int = 3, classes: int = 4):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 10, 3, padding=1)
        self.fc = nn.Linear(10, classes)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean(dim=(2, 3)))


class FakeMaskedLinear(nn.Linear):
    """Stand-in for lth_kernels.nn.MaskedLinear: dense weight + bool mask buffer + set_mask."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register_buffer("mask", torch.ones_like(self.weight, dtype=torch.bool), persistent=False)

    def set_mask(self, mask):
        self.mask.copy_(mask)
        with torch.no_grad():
            self.weight.mul_(self.mask)

    def forward(self, x):
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def classification_batches(n_batches: int = 2, batch: int = 16, shape=(20,), classes: int = 5, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn((batch, *shape), generator=g), torch.randint(0, classes, (batch,), generator=g))
            for _ in range(n_batches)]


class _OnceDifferentiableLinear(torch.autograd.Function):
    """x @ W^T whose backward cannot be differentiated again, as a custom sparse op's may not be."""

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return x @ w.t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        return grad @ w, grad.reshape(-1, grad.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


class OnceDiffMaskedLinear(FakeMaskedLinear):
    def forward(self, x):
        return _OnceDifferentiableLinear.apply(x, self.weight * self.mask) + self.bias
