"""Which parameters a ticket masks and which ones pruning may touch.

*Maskable* = the ``weight`` of every ``nn.Linear`` / ``nn.Conv2d`` (subclasses included, so the masked
layers of ``lth_kernels.nn`` count) and of any module exposing ``weight``, a ``mask`` buffer and
``set_mask``. *Prunable* = maskable minus the exclusions: the model's ``default_prune_exclude`` globs
(open_lth excludes the output layer of LeNet and VGG) unless ``use_default_exclude=False``, plus the
user's ``exclude`` globs. Names are canonical: the ``module.`` (DDP/DataParallel) and ``_orig_mod.``
(torch.compile) wrappers are stripped, so a ticket fits the bare, the wrapped and the compiled model.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Iterator

import torch
from torch import nn

from lth_kernels._util import canonical_name  # noqa: F401  (re-exported: tickets.canonical_name)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's model inside DDP/DataParallel (``.module``) and torch.compile (``._orig_mod``) wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def model_name(model: nn.Module) -> str:
    """The registry name a model was created from (``model_name``), else its class name."""
    inner = unwrap_model(model)
    name = getattr(inner, "model_name", None)
    return name if isinstance(name, str) and name else type(inner).__name__


def _is_maskable_module(module: nn.Module) -> bool:
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        return isinstance(getattr(module, "weight", None), torch.Tensor)
    # Duck-typed masked layers that do not subclass the torch layer.
    return (isinstance(getattr(module, "weight", None), torch.Tensor) and hasattr(module, "set_mask")
            and isinstance(getattr(module, "mask", None), torch.Tensor))


def iter_maskable(model: nn.Module) -> Iterator[tuple[str, nn.Module, str]]:
    """Yield ``(canonical weight name, module, actual weight name)`` for every maskable weight, in model order."""
    for module_name, module in model.named_modules():
        if _is_maskable_module(module):
            actual = f"{module_name}.weight" if module_name else "weight"
            yield canonical_name(actual), module, actual


def _check_globs(exclude: Iterable[str]) -> tuple[str, ...]:
    if isinstance(exclude, str):
        # A bare string would be iterated character by character: make it a one-glob tuple.
        exclude = (exclude,)
    globs = tuple(exclude)
    for g in globs:
        if not isinstance(g, str) or not g:
            raise ValueError(f"exclude: every entry must be a non-empty glob string, got {g!r} in {globs!r}")
    return globs


def excluded(name: str, globs: Iterable[str]) -> bool:
    """Whether a canonical parameter name matches any glob; a glob may name the parameter or its module."""
    module = name.rsplit(".", 1)[0] if "." in name else ""
    return any(fnmatch.fnmatchcase(name, g) or (module and fnmatch.fnmatchcase(module, g)) for g in globs)


def default_exclude(model: nn.Module) -> tuple[str, ...]:
    """The model's own exclusion globs (attribute ``default_prune_exclude``), looked up through wrappers."""
    globs = getattr(unwrap_model(model), "default_prune_exclude", ())
    return _check_globs(globs or ())


def maskable_parameters(model: nn.Module, exclude: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """Every maskable weight (canonical name -> parameter) except those matching ``exclude``; no defaults."""
    globs = _check_globs(exclude)
    return {name: module.weight for name, module, _ in iter_maskable(model) if not excluded(name, globs)}


def prunable_parameters(model: nn.Module, exclude: Iterable[str] = (), *, use_default_exclude: bool = True,
                        include: Iterable[str] = ()) -> dict[str, nn.Parameter]:
    """The weights pruning may touch: canonical name -> parameter, in model order.

    ``exclude``: fnmatch globs over parameter names (``"fc.weight"``, ``"head.*"``) or module names
    (``"fc"``); a glob matching nothing is fine. The model's ``default_prune_exclude`` globs apply too
    unless ``use_default_exclude=False``; ``include`` globs bring weights back that only those defaults
    exclude (a per-layer fraction names the output layer: the LTH paper prunes it at 10 %), ``exclude``
    still wins. Raises ``ValueError`` when the model has no maskable weight or when the exclusions leave
    nothing to prune.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    user, back = _check_globs(exclude), _check_globs(include)
    defaults = default_exclude(model) if use_default_exclude else ()
    globs = user + defaults
    candidates = list(iter_maskable(model))
    if not candidates:
        raise ValueError(f"model: {type(unwrap_model(model)).__name__} has no prunable parameter "
                         "(no nn.Linear / nn.Conv2d weight)")
    kept = {name: module.weight for name, module, _ in candidates
            if not excluded(name, user) and not (excluded(name, defaults) and not excluded(name, back))}
    if not kept:
        raise ValueError(f"exclude: {list(globs)!r} excludes every prunable parameter "
                         f"({', '.join(n for n, _, _ in candidates)})")
    return kept
