"""Import/export of masks: ``torch.nn.utils.prune`` (``<name>_orig`` / ``<name>_mask``) and open_lth ``mask.pth``
(a dict name -> int 0/1 tensor, written with ``torch.save``)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lth_kernels._io import atomic_save
from lth_kernels.tickets.prunable import canonical_name, iter_maskable, model_name, unwrap_model
from lth_kernels.tickets.ticket import Ticket, TicketError


def from_torch_prune(model: nn.Module, *, include_unpruned: bool = True) -> Ticket:
    """The masks of a model pruned with ``torch.nn.utils.prune`` (every ``<name>_mask`` buffer whose
    ``<name>_orig`` parameter exists), keyed ``<module>.<name>``. With ``include_unpruned``, maskable weights
    that were not pruned appear all-ones, so the ticket covers the model like ``Ticket.from_model``."""
    masks = {}
    for module_name, module in model.named_modules():
        for buf_name, buf in module.named_buffers(recurse=False):
            if not buf_name.endswith("_mask"):
                continue
            pname = buf_name[: -len("_mask")]
            if not isinstance(getattr(module, pname + "_orig", None), nn.Parameter):
                continue
            masks[canonical_name(f"{module_name}.{pname}" if module_name else pname)] = buf
    if not masks:
        raise ValueError(f"model: {type(unwrap_model(model)).__name__} has no torch.nn.utils.prune masks "
                         "(no '<name>_orig' parameter with a '<name>_mask' buffer)")
    if include_unpruned:
        ordered = {}
        for name, module, _ in iter_maskable(model):
            ordered[name] = masks.pop(name) if name in masks else torch.ones(module.weight.shape, dtype=torch.bool)
        masks = {**ordered, **masks}
    meta = {"model": model_name(model), "strategy": "torch_prune", "structure": "unstructured"}
    return Ticket(masks, meta)


def to_torch_prune(ticket: Ticket, model: nn.Module) -> nn.Module:
    """Apply ``ticket`` with ``torch.nn.utils.prune.custom_from_mask`` (composes with masks already there).

    Every ticket name must be a parameter of the model (wrapper prefixes ignored) with the mask's shape.
    Returns the model.
    """
    modules = {canonical_name(n): m for n, m in model.named_modules()}
    targets = []
    for key, mask in ticket.items():
        name = canonical_name(key)
        module_name, _, pname = name.rpartition(".")
        module = modules.get(module_name)
        param = None if module is None else getattr(module, pname + "_orig", getattr(module, pname, None))
        if not isinstance(param, torch.Tensor):
            raise TicketError(f"ticket entry {key!r} is not a parameter of the model")
        if tuple(param.shape) != tuple(mask.shape):
            raise TicketError(f"ticket entry {key!r}: mask shape {tuple(mask.shape)} != parameter shape "
                              f"{tuple(param.shape)}")
        targets.append((module, pname, mask, param.device))
    for module, pname, mask, device in targets:
        torch_prune.custom_from_mask(module, pname, mask.to(device))
    return model


def from_open_lth(path: str | os.PathLike) -> Ticket:
    """Read an open_lth ``mask.pth`` (loaded with ``weights_only=True``: no code runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"open_lth mask file {path} does not exist")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors come in many types
        msg = " ".join(str(e).split())[:300]
        raise TicketError(f"open_lth mask file {path} cannot be read: {msg}") from e
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                             for k, v in data.items()):
        raise TicketError(f"open_lth mask file {path} is not a dict of name -> tensor (got {type(data).__name__})")
    try:
        return Ticket(data, {"strategy": "open_lth", "structure": "unstructured", "source_run": str(path.parent)})
    except ValueError as e:
        raise TicketError(f"open_lth mask file {path}: {e}") from e


def to_open_lth(ticket: Ticket, path: str | os.PathLike) -> Path:
    """Write ``ticket`` as an open_lth ``mask.pth`` (int32 0/1 tensors, as open_lth's ``Mask.save``), atomically."""
    path = Path(path)
    atomic_save({k: m.int() for k, m in ticket.items()}, path)
    return path
