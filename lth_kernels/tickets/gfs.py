"""Greedy forward selection (Ye et al., ICML 2020; the pruning method Wolfe et al. analyse).

Two-layer form: the dense net is ``f(x) = (1/N) sum_i sigma_i(x)``; grow a multiset ``S`` from empty, adding
at step k the neuron ``i* = argmin_i L(((k-1) f_S + sigma_i) / k)`` (Frank-Wolfe with step ``1/k`` on the
convex hull of the neurons). Deep form (as implemented by the reference ``mobile2_prune.py``): a layer's
output channels get a gate ``alpha`` (the dense net is ``alpha = 1/D`` with the output scaled by ``D``); for
the layer being pruned, ``alpha`` starts empty and each step (1) takes one mini-batch, (2) samples up to
``num_candidates`` channels not selected yet, (3) scores each with the batch loss at
``alpha' = (1 - eta) alpha + eta e_i``, ``eta = 1/(k+1)`` (the first pick sets ``alpha = e_i``), (4) keeps the
best. The layer stops once the batch top-1 is within ``converge_tolerance`` of the target and then the top-1
on an evaluation set is within ``tolerance`` of it (relative), or when every channel is selected.

The gate is applied with a temporary forward hook on the layer (the last affine module before the
nonlinearity: the BN, else the Conv/Linear); ``fold_gate_`` then bakes ``D * alpha`` into that module's
parameters (exact: scaling a BN output = scaling its gamma and beta), so unselected channels become exactly
zero and ``nn.channel_prune`` removes them. A layer whose channels all got selected is not folded: the
reference restores the exact dense layer then (``set_alpha_to_init``; ``GfsLayerResult.full``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GfsStep:
    chosen: int
    loss: float
    acc: float
    candidates: list[int]
    losses: list[float]
    eval_acc: float | None = None  # the evaluation-set top-1 after this step, where the stopping rule ran it


@dataclass
class GfsLayerResult:
    name: str
    alpha: torch.Tensor  # [D] mixing weights, summing to 1; zero = channel not selected
    steps: list[GfsStep] = field(default_factory=list)
    eval_acc: float | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.alpha > 0

    @property
    def kept(self) -> int:
        return int(self.mask.sum())

    @property
    def full(self) -> bool:
        """Every channel was selected: the reference then restores the dense layer (``set_alpha_to_init``)."""
        return self.kept == self.alpha.numel()


def _channels(mod: nn.Module) -> int:
    for attr in ("num_features", "out_channels", "out_features"):
        if hasattr(mod, attr):
            return int(getattr(mod, attr))
    raise ValueError(f"name: {type(mod).__name__} has no output channels to select")


class _Gate:
    """Multiplies the module's output channels (dim 1) by ``scale`` while installed."""

    def __init__(self, module: nn.Module, scale: torch.Tensor):
        self.scale = scale
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, inputs, out):
        return out * self.scale.view(1, -1, *([1] * (out.dim() - 2))).to(out.dtype)

    def remove(self):
        self.handle.remove()


@torch.no_grad()
def select_layer(model: nn.Module, name: str, batches: Iterator, *, loss_fn: Callable = F.cross_entropy,
                 num_candidates: int = 50, target_acc: float | None = None, tolerance: float = 0.02,
                 converge_tolerance: float = 0.05, eval_fn: Callable[[], float] | None = None,
                 generator: torch.Generator | None = None, allow_repeats: bool = False,
                 max_steps: int | None = None, gate_at: str | list[str] | None = None) -> GfsLayerResult:
    """Greedy forward selection of the output channels of module ``name`` (model in eval mode while it runs).

    Args:
        batches: an endless iterator of ``(x, y)`` mini-batches on the model's device.
        num_candidates: channels scored per step (all remaining ones when fewer).
        target_acc: the accuracy to come close to (e.g. the dense network's); None: select until
            ``max_steps`` or every channel is in.
        tolerance / converge_tolerance: relative gaps of the evaluation / batch accuracy to ``target_acc``.
        eval_fn: evaluation accuracy of the model as it is (the gate installed); default: the batch accuracy.
        allow_repeats: sample from all channels (the two-layer Frank-Wolfe form, a multiset) instead of the
            ones not selected yet.
        gate_at: the module whose output the gate multiplies (default ``name``): the activation after the
            layer when it is not positively homogeneous (ReLU6, as the reference gates MobileNetV2); a list:
            one gate shared by all of them (every branch that writes a residual stream, which gates the stream).
    """
    if num_candidates < 1:
        raise ValueError(f"num_candidates: expected >= 1, got {num_candidates}")
    module = model.get_submodule(name)
    d = _channels(module)
    dev = next(model.parameters()).device
    alpha = torch.zeros(d, dtype=torch.float64)
    scale = torch.zeros(d, device=dev)
    points = [gate_at] if isinstance(gate_at, str) else list(gate_at or [name])
    gates = [_Gate(model.get_submodule(p), scale) for p in points]
    was = model.training
    model.eval()
    result = GfsLayerResult(name, alpha)
    selected: set[int] = set()
    limit = max_steps if max_steps is not None else (d if not allow_repeats else 4 * d)
    try:
        for k in range(limit):
            x, y = next(batches)
            pool = torch.arange(d) if allow_repeats else torch.tensor(sorted(set(range(d)) - selected))
            if pool.numel() == 0:
                break
            if pool.numel() > num_candidates:
                pool = pool[torch.randperm(pool.numel(), generator=generator)[:num_candidates]].sort().values
            eta = 1.0 / (k + 1)
            losses, accs = [], []
            for i in pool.tolist():
                trial = alpha * (1 - eta)
                trial[i] += eta
                scale.copy_((d * trial).to(scale))
                out = model(x).float()
                losses.append(float(loss_fn(out, y)))
                accs.append(float((out.argmax(1) == y).float().mean()))
            best = min(range(len(losses)), key=losses.__getitem__)  # ties: the lowest channel index
            chosen = int(pool[best])
            alpha.mul_(1 - eta)
            alpha[chosen] += eta
            selected.add(chosen)
            scale.copy_((d * alpha).to(scale))
            step = GfsStep(chosen, losses[best], accs[best], pool.tolist(), losses)
            result.steps.append(step)
            if target_acc is not None and accs[best] >= (1 - converge_tolerance) * target_acc:
                acc = eval_fn() if eval_fn is not None else accs[best]
                result.eval_acc = step.eval_acc = acc
                if acc >= (1 - tolerance) * target_acc:
                    break
    finally:
        for gate in gates:
            gate.remove()
        model.train(was)
    result.alpha = alpha
    return result


@torch.no_grad()
def fold_gate_(model: nn.Module, name: str, alpha: torch.Tensor) -> None:
    """Bake the gate ``D * alpha`` into module ``name`` (BN: gamma and beta; Conv/Linear: output rows and
    bias), so the model computes what it computed with the gate installed."""
    module = model.get_submodule(name)
    d = _channels(module)
    scale = (d * alpha).to(module.weight)
    module.weight.mul_(scale.view(-1, *([1] * (module.weight.dim() - 1))))
    if getattr(module, "bias", None) is not None:
        module.bias.mul_(scale)


@torch.no_grad()
def fold_gate_after_act_(model: nn.Module, name: str, alpha: torch.Tensor, consumers: list[tuple[str, int]]) -> None:
    """Bake a gate that sits *after* the activation of module ``name`` (a BN; the activation maps 0 to 0) into
    the model: unselected channels get ``gamma = beta = 0`` (so the activation outputs exactly 0 there) and the
    selected ones' scales ``D * alpha`` go into the input columns of the ``consumers`` (``(module, repeat)``:
    the Conv2d (groups 1) / Linear layers reading the gated tensor, ``repeat`` positions per channel after a
    flatten), which are linear in their input, so the model computes what it computed with the gate."""
    module = model.get_submodule(name)
    d = _channels(module)
    scale = (d * alpha).to(module.weight)
    module.weight[scale == 0] = 0
    if getattr(module, "bias", None) is not None:
        module.bias[scale == 0] = 0
    for cname, repeat in consumers:
        c = model.get_submodule(cname)
        cols = scale.repeat_interleave(repeat).to(c.weight)
        c.weight.mul_(cols.view(1, -1, *([1] * (c.weight.dim() - 2))))


__all__ = ["GfsLayerResult", "GfsStep", "fold_gate_", "fold_gate_after_act_", "select_layer"]
