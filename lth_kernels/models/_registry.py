"""Model registry: names and name patterns -> builders, plus local weight loading.

A builder is ``fn(name, spec, *, num_classes, in_chans, img_size, **kwargs) -> nn.Module`` where ``spec``
holds the named groups of the pattern that matched (``{}`` for an exact name) and ``img_size`` is an
``(h, w)`` tuple. ``create_model`` stamps two attributes on every model it returns:

* ``model_name``: the name it was created from;
* ``default_prune_exclude``: fnmatch globs over ``named_parameters()`` names that pruning skips unless
  the user says otherwise (open_lth: the output layer of VGG and LeNet; nothing for ResNets).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lth_kernels._util import canonical_name, check_kwargs

# Parameter-name prefixes added by wrappers: DistributedDataParallel / DataParallel and torch.compile.
# Keys under which training scripts commonly nest the state dict inside a checkpoint.
_NESTED_STATE_KEYS = ("state_dict", "model_state_dict", "model")


@dataclass(frozen=True)
class _Entry:
    display: str
    exact: str | None
    pattern: re.Pattern | None
    builder: Callable[..., nn.Module]

    def match(self, name: str) -> dict[str, str] | None:
        if self.exact is not None:
            return {} if name == self.exact else None
        m = self.pattern.fullmatch(name)
        return None if m is None else {k: v for k, v in m.groupdict().items() if v is not None}


_MODELS: list[_Entry] = []
_BUILDER_ARGS = ("name", "spec", "num_classes", "in_chans", "img_size")


def register_model(name_or_pattern: str | re.Pattern, *, display: str | None = None) -> Callable:
    """Decorator registering a builder for an exact name (``str``) or a name pattern (compiled ``re``).

    ``display`` is how a pattern appears in ``model_names()`` and error messages, e.g.
    ``"cifar_resnet_<6n+2>[_<width>]"``. The pattern must match the whole name; its named groups are passed
    to the builder as the ``spec`` dict.
    """
    if isinstance(name_or_pattern, re.Pattern):
        if display is None:
            raise ValueError(f"display: a pattern needs a display name, got None for {name_or_pattern.pattern!r}")
        entry_args = (display, None, name_or_pattern)
    elif isinstance(name_or_pattern, str) and name_or_pattern:
        entry_args = (display or name_or_pattern, name_or_pattern, None)
    else:
        raise ValueError(f"name_or_pattern: expected a non-empty str or re.Pattern, got {name_or_pattern!r}")

    def deco(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if any(e.display == entry_args[0] for e in _MODELS):
            raise ValueError(f"name_or_pattern: model {entry_args[0]!r} is already registered")
        _MODELS.append(_Entry(*entry_args, builder))
        return builder

    return deco


def model_names() -> list[str]:
    """Registered names and patterns, in registration order (patterns in their display form)."""
    return [e.display for e in _MODELS]


def _lookup(name: str) -> tuple[_Entry, dict[str, str]]:
    for entry in _MODELS:  # exact names first, so a pattern never shadows an exact registration
        if entry.exact is not None and entry.exact == name:
            return entry, {}
    for entry in _MODELS:
        if entry.pattern is not None and (spec := entry.match(name)) is not None:
            return entry, spec
    raise ValueError(f"model: unknown model {name!r}; valid: {', '.join(model_names())}")


def _as_hw(img_size: int | Iterable[int]) -> tuple[int, int]:
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(int(s) for s in img_size)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"img_size: expected a positive int or (h, w), got {img_size!r}")
    return hw


def create_model(name: str, *, num_classes: int, in_chans: int, img_size: int | tuple[int, int],
                 checkpoint_path: str | os.PathLike | None = None, **kwargs) -> nn.Module:
    """Build model ``name`` for inputs ``[B, in_chans, *img_size]`` and ``num_classes`` outputs.

    ``checkpoint_path`` loads local weights after building (safetensors, or a torch file read with
    ``weights_only=True``; ``module.`` / ``_orig_mod.`` prefixes stripped; strict key match). Nothing is
    ever downloaded. Remaining ``kwargs`` go to the builder (for ``timm:<name>`` to ``timm.create_model``).
    """
    if not isinstance(name, str):
        raise ValueError(f"model: expected a str, got {name!r}")
    entry, spec = _lookup(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans: expected a positive int, got {in_chans!r}")
    hw = _as_hw(img_size)
    check_kwargs(f"model {name!r}", entry.builder, kwargs, fixed=_BUILDER_ARGS, extra=("checkpoint_path",))
    model = entry.builder(name, spec, num_classes=num_classes, in_chans=in_chans, img_size=hw, **kwargs)
    model.model_name = name
    if not hasattr(model, "default_prune_exclude"):
        model.default_prune_exclude = ()
    if checkpoint_path is not None:
        load_weights(model, checkpoint_path)
    return model


def _read_state_dict(path: str) -> dict[str, torch.Tensor]:
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    # Unwrap {"state_dict": {...}, "epoch": ...}-style checkpoints; a flat name -> tensor dict is used as is.
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in _NESTED_STATE_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"checkpoint_path: {path} holds a {type(obj).__name__}, not a state dict")
    return obj


def strip_prefixes(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from the keys."""
    return {canonical_name(key): value for key, value in state_dict.items()}


def load_weights(model: nn.Module, checkpoint_path: str | os.PathLike) -> nn.Module:
    """Load a local weight file into ``model`` (strict). Returns the model."""
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint_path: no file at {path}")
    state = strip_prefixes(_read_state_dict(path))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "") if keys else "none"

        raise ValueError(f"checkpoint_path: {path} does not fit model {getattr(model, 'model_name', '?')}: "
                         f"missing {few(missing)}; unexpected {few(unexpected)}; shape (file vs model) {few(shapes)}")
    model.load_state_dict(state, strict=True)
    return model


def prunable_parameter_names(model: nn.Module, exclude: Iterable[str] | None = None) -> list[str]:
    """Names of the prunable tensors (see :func:`lth_kernels.tickets.prunable_parameters`): the ``.weight`` of
    every Conv2d and Linear layer, minus the fnmatch globs in ``exclude`` (default: ``model.default_prune_exclude``)."""
    from lth_kernels.tickets.prunable import prunable_parameters

    if exclude is None:
        return list(prunable_parameters(model))
    return list(prunable_parameters(model, tuple(exclude), use_default_exclude=False))
