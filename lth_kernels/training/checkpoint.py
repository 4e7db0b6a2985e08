"""Weights at named steps (``step_<K>.safetensors`` + ``step_<K>.optim.pt``) and the rolling
``checkpoint.pt`` (everything needed to resume bit-exactly), all written atomically."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from lth_kernels.training.distributed import unwrap
from lth_kernels.training.rundir import atomic_save, atomic_write_text

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
_PREFIXES = ("module.", "_orig_mod.")


def strip_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes from state-dict keys."""
    out = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as independent contiguous CPU tensors (safe for safetensors, which refuses
    shared storage, and for a model that keeps training)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in unwrap(model).state_dict().items()}


def save_weights(model: nn.Module, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    atomic_save(model_state(model), path, metadata={k: str(v) for k, v in (metadata or {}).items()})


def load_weights(model: nn.Module, path: str | os.PathLike, strict: bool = True) -> None:
    """Load a ``.safetensors`` state dict (prefixes stripped) into ``model`` in place."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    unwrap(model).load_state_dict(strip_prefixes(load_file(str(path))), strict=strict)


def step_paths(directory: str | os.PathLike, step: int) -> tuple[Path, Path]:
    """(weights, optimizer state) file paths of step ``step`` in ``directory``."""
    d = Path(directory)
    return d / f"step_{step}.safetensors", d / f"step_{step}.optim.pt"


def save_step(directory: str | os.PathLike, step: int, model: nn.Module,
              optimizer: torch.optim.Optimizer | None = None, metadata: dict[str, str] | None = None) -> None:
    """Weights (and, separately, optimizer state) at ``step``; the optimizer file is written first, so an
    existing weights file means both are complete."""
    w, o = step_paths(directory, step)
    if optimizer is not None:
        atomic_save(optimizer.state_dict(), o)
    save_weights(model, w, {"step": str(step), **(metadata or {})})


def load_step(directory: str | os.PathLike, step: int, model: nn.Module,
              optimizer: torch.optim.Optimizer | None = None) -> None:
    """Load the weights at ``step`` (and the optimizer state, when ``optimizer`` is given)."""
    w, o = step_paths(directory, step)
    load_weights(model, w)
    if optimizer is not None:
        if not o.exists():
            raise FileNotFoundError(f"optimizer state {o} does not exist (saved without an optimizer?)")
        optimizer.load_state_dict(torch.load(o, map_location="cpu", weights_only=False))


def _previous(path: Path) -> Path:
    return path.with_name(path.name + ".prev")


def _digest_file(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """Write ``path`` atomically with its sha256 beside it (``<path>.sha256``), keeping the checkpoint it
    replaces as ``<path>.prev`` (with its digest): a checkpoint found corrupt later falls back to that one."""
    path = Path(path)
    if path.exists():
        os.replace(path, _previous(path))
        if _digest_file(path).exists():
            os.replace(_digest_file(path), _digest_file(_previous(path)))
    atomic_save(state, path)
    atomic_write_text(_digest_file(path), _sha256(path) + "\n")


def remove_checkpoint(path: str | os.PathLike) -> None:
    """Delete a checkpoint, its previous one and their digests (a finished stage needs none of them)."""
    path = Path(path)
    for p in (path, _previous(path)):
        p.unlink(missing_ok=True)
        _digest_file(p).unlink(missing_ok=True)


def _read_verified(path: Path) -> dict:
    digest = _digest_file(path)
    if digest.exists() and digest.read_text().strip() != _sha256(path):
        raise ValueError("its sha256 does not match " + digest.name)
    return torch.load(path, map_location="cpu", weights_only=False)


def load_checkpoint(path: str | os.PathLike) -> dict | None:
    """The checkpoint dict, or None when there is none. A checkpoint whose sha256 does not match (a truncated
    or altered file) or that does not load is reported and the previous one (``<path>.prev``) is used; when
    neither is sound the run starts over. It holds RNG states and optimizer state, hence
    ``weights_only=False``: only load checkpoints this package wrote."""
    path = Path(path)
    for candidate in (path, _previous(path)):
        if not candidate.exists():
            continue
        try:
            state = _read_verified(candidate)
        except Exception as e:  # torch.load raises many types on a damaged file
            log.warning("checkpoint %s is corrupt (%s); %s", candidate, " ".join(str(e).split())[:200],
                        "trying the previous one" if candidate == path else "starting this stage over")
            continue
        if candidate != path:
            log.warning("resuming from the previous checkpoint %s", candidate)
        return state
    return None
