"""Keeping pruned weights at exactly zero during training, with or without the project's Trainer.

A masked module is anything with a ``mask`` buffer and a ``weight`` parameter of the same shape
(``lth_kernels.nn.MaskedLinear`` / ``MaskedConv2d`` and friends).

When can an optimizer step revive a zero weight ``w = 0`` at a pruned position? Only through a non-zero
update there, which needs a non-zero gradient or non-zero optimizer state at that position:

* the gradient: the masked kernels return a masked ``dW``, and everything between backward and the update
  keeps zeros zero (AMP loss scaling and unscaling, gradient clipping, DDP all-reduce of zeros);
* SGD weight decay (``g + wd * w``) and Adam's coupled L2 add ``wd * 0 = 0``; AdamW's decoupled decay
  multiplies ``w`` by ``1 - lr * wd``, so zeros stay zero;
* momentum / Adam ``exp_avg`` and ``exp_avg_sq``: zero at a position whose gradient has always been zero,
  **but not** when the mask changed while the optimizer already had state (pruning mid-training, mask
  swaps, loading dense optimizer state at a rewind step). Then momentum keeps moving a pruned weight.

So ``MaskGuard`` in ``auto`` mode acts only when a mask changed (seen through the buffer's identity and
autograd version counter, a Python-side check with no device sync): it zeroes the weight and the
optimizer state at the pruned positions once. It also verifies the invariant at each evaluation (one
sync) and, if a layer broke it (e.g. a backward that returned a dense ``dW``), repairs it and switches that
layer to enforcing ``weight.mul_(mask)`` after every step, with a warning. ``always`` enforces after every
step for every layer (one elementwise multiply per masked weight); ``off`` trusts the layers.

Outside the Trainer, ``guard_optimizer(model, optimizer)`` (what ``sparsify(..., optimizer=)`` and
``Ticket.apply(..., optimizer=)`` call) zeroes the pruned positions of the weights and of the optimizer state
that predates the mask, and registers an ``Optimizer.register_step_post_hook`` that runs ``after_step``: a
mask changed later (``set_mask``) zeroes that state again before the next step can use it.
"""

from __future__ import annotations

import logging
import weakref

import torch
from torch import nn

log = logging.getLogger(__name__)


def guarded_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every module holding a ``mask`` buffer beside its ``weight``."""
    out = []
    for name, m in model.named_modules():
        mask = m._buffers.get("mask") if hasattr(m, "_buffers") else None
        weight = getattr(m, "weight", None)
        if isinstance(mask, torch.Tensor) and isinstance(weight, torch.Tensor) and mask.shape == weight.shape:
            out.append((name, m))
    return out


def _mask_key(mask: torch.Tensor) -> tuple[int, int]:
    return mask.data_ptr(), mask._version


class MaskGuard:
    """Enforces ``weight == weight * mask`` for the masked modules of ``model`` (see module docstring)."""

    MODES = ("auto", "always", "off")

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, mode: str = "auto"):
        if mode not in self.MODES:
            raise ValueError(f"mode: expected one of {', '.join(self.MODES)}, got {mode!r}")
        self.model, self.optimizer, self.mode = model, optimizer, mode
        self.modules = guarded_modules(model)
        self._seen: dict[str, tuple[int, int]] = {}
        self._always: set[str] = set()
        self._handle = None  # the post-step hook's handle when guard_optimizer registered one

    def remove(self) -> None:
        """Detach the optimizer post-step hook (if any); the guard does nothing by itself afterwards."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            _GUARDS.get(self.optimizer, {}).pop(id(self.model), None)

    @torch.no_grad()
    def _apply(self, name: str, m: nn.Module) -> None:
        keep = m.mask.to(m.weight.dtype)
        m.weight.mul_(keep)
        state = self.optimizer.state.get(m.weight) if self.optimizer is not None else None
        for v in (state or {}).values():
            if isinstance(v, torch.Tensor) and v.shape == m.weight.shape:
                v.mul_(keep.to(v.dtype))
        self._seen[name] = _mask_key(m.mask)

    @torch.no_grad()
    def after_step(self) -> None:
        """Call after every optimizer step (and after a mask change)."""
        if self.mode == "off":
            return
        for name, m in self.modules:
            if self.mode == "always" or name in self._always or self._seen.get(name) != _mask_key(m.mask):
                self._apply(name, m)

    @torch.no_grad()
    def verify(self) -> list[str]:
        """Check the invariant (one device sync); repair and escalate layers that broke it."""
        if self.mode == "off" or not self.modules:
            return []
        bad = [name for name, m in self.modules if bool((m.weight.detach() * ~m.mask.bool()).ne(0).any())]
        for name in bad:
            log.warning("masked weights of %s became non-zero (its backward may not mask dW); "
                        "re-applying the mask after every step from now on", name)
            self._always.add(name)
            self._apply(name, dict(self.modules)[name])
        return bad


# One guard per (optimizer, model): calling guard_optimizer again refreshes it instead of adding a second hook.
_GUARDS: weakref.WeakKeyDictionary[torch.optim.Optimizer, dict[int, MaskGuard]] = weakref.WeakKeyDictionary()


def guard_optimizer(model: nn.Module, optimizer: torch.optim.Optimizer, mode: str = "auto") -> MaskGuard:
    """Keep ``model``'s pruned weights exactly zero under ``optimizer``, whatever state it already holds.

    Zeroes now the masked entries of every masked weight and of its optimizer state (momentum, ``exp_avg``,
    ``exp_avg_sq``, ...) and runs ``MaskGuard.after_step`` after every ``optimizer.step()`` (a post-step
    hook), so a later mask change is handled before its stale state moves a pruned weight twice. Returns the
    guard; ``guard.remove()`` detaches the hook.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer, got {type(optimizer).__name__}")
    guards = _GUARDS.setdefault(optimizer, {})
    guard = guards.get(id(model))
    if guard is None or guard.model is not model:
        guard = MaskGuard(model, optimizer, mode)
        hook = optimizer.register_step_post_hook(lambda opt, args, kwargs, g=guard: g.after_step())
        guard._handle = hook
        guards[id(model)] = guard
    else:
        guard.modules = guarded_modules(model)  # layers swapped in since the last call
        guard._seen.clear()
    guard.after_step()  # every mask is "new": zero weights and state at the pruned positions now
    return guard
