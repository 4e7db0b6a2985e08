"""Swap ``nn.Linear`` / ``nn.Conv2d`` layers of any model for their masked versions, and back.

Names are *canonical* parameter/module names: those of the unwrapped model, without the ``module.`` prefix of
DDP/DataParallel or the ``_orig_mod.`` segments of ``torch.compile``. A ticket is any mapping
``parameter name -> bool mask``; its names are canonicalised the same way.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from lth_kernels._util import canonical_name
from lth_kernels.nn.mask_guard import guard_optimizer
from lth_kernels.nn.masked import MaskedConv2d, MaskedLinear, _Masked

_MASKED = {nn.Linear: MaskedLinear, nn.Conv2d: MaskedConv2d}


def _masked_cls(module: nn.Module) -> type[_Masked] | None:
    """The masked class that computes the same function as ``module``, or None. A subclass that overrides
    ``forward`` (e.g. a weight-standardised conv) computes something else and is left alone."""
    if isinstance(module, _Masked):
        return type(module)
    for dense, masked in _MASKED.items():
        if isinstance(module, dense) and type(module).forward is dense.forward:
            return masked
    return None


def _patterns(name: str, value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [value]
    if isinstance(value, Iterable):
        value = list(value)
        if all(isinstance(p, str) for p in value):
            return value
    raise TypeError(f"{name}: expected a glob pattern or a list of them, got {value!r}")


def _matches(fqn: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(fqn, p) or fnmatch.fnmatchcase(f"{fqn}.weight", p) for p in patterns)


def _layer_slots(model: nn.Module):
    """(canonical fqn, parent, attribute, layer) for every maskable layer, the root model included (parent None).
    Children of ``nn.MultiheadAttention`` are skipped: it reads ``out_proj.weight`` without calling its forward."""
    if _masked_cls(model) is not None:
        yield "", None, None, model
    for parent_fqn, parent in model.named_modules():
        if isinstance(parent, nn.MultiheadAttention):
            continue
        for attr, child in parent._modules.items():  # not named_children(): it hides a second name of a layer
            if child is not None and _masked_cls(child) is not None:
                yield canonical_name(f"{parent_fqn}.{attr}" if parent_fqn else attr), parent, attr, child


def _swap(model: nn.Module, slots, make) -> nn.Module:
    done: dict[int, nn.Module] = {}  # a layer shared by several parents becomes one new layer
    for _fqn, parent, attr, layer in slots:
        new = done.setdefault(id(layer), make(layer))
        if parent is None:
            model = new
        else:
            setattr(parent, attr, new)
    return model


def _weight_name(fqn: str) -> str:
    return f"{fqn}.weight" if fqn else "weight"


def _ticket_masks(ticket, selected: set[str], model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical weight name -> mask, every entry checked against the model and the selected layers."""
    params = {canonical_name(n): p for n, p in model.named_parameters()}
    masks: dict[str, torch.Tensor] = {}
    for raw, mask in ticket.items():
        name = canonical_name(raw)
        if name in masks:
            raise ValueError(f"ticket: {raw!r} names the parameter {name!r} twice (after stripping wrapper prefixes)")
        if name not in params:
            raise ValueError(f"ticket: {raw!r} names no parameter of the model ({type(model).__name__})")
        if name not in selected:
            raise ValueError(f"ticket: {raw!r} is not the weight of a selected nn.Linear/nn.Conv2d layer (another "
                             f"parameter, a layer with its own forward, or one left out by include/exclude)")
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"ticket[{raw!r}]: expected a torch.bool tensor, got {got}")
        if mask.shape != params[name].shape:
            raise ValueError(f"ticket[{raw!r}]: expected shape {tuple(params[name].shape)}, got {tuple(mask.shape)}")
        masks[name] = mask
    return masks


def sparsify(model: nn.Module, ticket: Mapping[str, torch.Tensor] | None = None, include=None, exclude=None,
             optimizer: torch.optim.Optimizer | None = None):
    """Replaces, in place, the ``nn.Linear`` / ``nn.Conv2d`` layers of ``model`` by ``MaskedLinear`` /
    ``MaskedConv2d`` sharing their parameters, and returns ``model`` (the new layer if ``model`` itself is one).

    include / exclude: glob patterns (``fnmatch``) on a layer's canonical name or ``<name>.weight``; exclude wins.
    Default: every layer, or with a ``ticket`` and no ``include``, the layers the ticket names. ticket: mapping
    parameter name -> bool mask (weight's shape), applied with ``set_mask``; names may carry ``module.`` /
    ``_orig_mod.`` prefixes. Layers already masked are kept (and take the ticket's mask). Layers not in the ticket
    keep their mask (all ones for a new layer). Everything is checked before the model is touched. Subclasses that
    override ``forward`` and the layers inside ``nn.MultiheadAttention`` are never swapped.

    optimizer: the optimizer that keeps training the model (its state may predate the masks): its state is
    zeroed at the pruned positions and a post-step hook keeps pruned weights exactly zero from then on
    (``lth_kernels.nn.mask_guard.guard_optimizer``). Without it, only an optimizer without state at the
    pruned positions (created after the masks, or never stepped) keeps them zero.
    """
    include, exclude = _patterns("include", include), _patterns("exclude", exclude)
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer: expected a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
    if ticket is not None and (not isinstance(ticket, Mapping) or not all(isinstance(k, str) for k in ticket)):
        raise TypeError(f"ticket: expected a mapping parameter name (str) -> bool mask, got {type(ticket).__name__}")
    wanted = None if ticket is None or include is not None else {canonical_name(n) for n in ticket}

    def selected(fqn: str) -> bool:
        if exclude is not None and _matches(fqn, exclude):
            return False
        if wanted is not None:
            return _weight_name(fqn) in wanted
        return include is None or _matches(fqn, include)

    slots = [s for s in _layer_slots(model) if selected(s[0])]
    masks = _ticket_masks(ticket, {_weight_name(s[0]) for s in slots}, model) if ticket is not None else {}
    model = _swap(model, slots, lambda layer: layer if isinstance(layer, _Masked) else
                  _masked_cls(layer).from_dense(layer))
    layers = {_weight_name(n): m for n, m in masked_modules(model).items()}
    for name, mask in masks.items():
        layers[name].set_mask(mask)
    if optimizer is not None:
        guard_optimizer(model, optimizer)
    return model


def densify(model: nn.Module) -> nn.Module:
    """Replaces every masked layer by the plain layer sharing its parameters (pruned weights stay 0)."""
    slots = [s for s in _layer_slots(model) if isinstance(s[3], _Masked)]
    return _swap(model, slots, lambda layer: layer.to_dense())


def masked_modules(model: nn.Module) -> dict[str, _Masked]:
    """Canonical name -> masked layer, in module order."""
    return {canonical_name(n): m for n, m in model.named_modules() if isinstance(m, _Masked)}


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Canonical weight name -> a copy of its bool mask: a ticket of the model's current masks."""
    return {_weight_name(n): m.mask.detach().clone() for n, m in masked_modules(model).items()}
