"""open_lth's weight and BatchNorm initialisers, applied to the models defined in this package.

Conv/Linear weights: ``kaiming_normal`` (default), ``kaiming_uniform``, ``orthogonal`` or ``binary``
(sign of a Kaiming draw times its std); biases keep PyTorch's default. BatchNorm: ``uniform`` (default:
weight ~ U[0, 1), bias 0), ``fixed`` (1, 0), ``oneone`` (1, 1), ``positivenegative`` (weight ~ U[-1, 1), bias 0).
timm models keep timm's own initialisation.
"""

from __future__ import annotations

import torch
from torch import nn

_WEIGHTED = (nn.Linear, nn.Conv2d)


def _kaiming_normal(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w)


def _kaiming_uniform(w: torch.Tensor) -> None:
    nn.init.kaiming_uniform_(w)


def _orthogonal(w: torch.Tensor) -> None:
    nn.init.orthogonal_(w)


def _binary(w: torch.Tensor) -> None:
    nn.init.kaiming_normal_(w)
    sigma = w.std()
    w.copy_(torch.sign(w) * sigma)


WEIGHT_INITS = {"kaiming_normal": _kaiming_normal, "kaiming_uniform": _kaiming_uniform,
                "orthogonal": _orthogonal, "binary": _binary}

BN_INITS = {
    "uniform": lambda bn: (bn.weight.uniform_(0.0, 1.0), bn.bias.zero_()),
    "fixed": lambda bn: (bn.weight.fill_(1.0), bn.bias.zero_()),
    "oneone": lambda bn: (bn.weight.fill_(1.0), bn.bias.fill_(1.0)),
    "positivenegative": lambda bn: (bn.weight.uniform_(-1.0, 1.0), bn.bias.zero_()),
}


@torch.no_grad()
def initialize(model: nn.Module, init: str = "kaiming_normal", batchnorm_init: str = "uniform") -> nn.Module:
    """Apply open_lth's initialisers in place; unknown names are a one-line error listing the valid ones."""
    if init not in WEIGHT_INITS:
        raise ValueError(f"init: unknown initialiser {init!r}; valid: {', '.join(WEIGHT_INITS)}")
    if batchnorm_init not in BN_INITS:
        raise ValueError(f"batchnorm_init: unknown initialiser {batchnorm_init!r}; valid: {', '.join(BN_INITS)}")
    for m in model.modules():
        if isinstance(m, _WEIGHTED):
            WEIGHT_INITS[init](m.weight)
        elif isinstance(m, nn.BatchNorm2d) and m.affine:
            BN_INITS[batchnorm_init](m)
    return model
