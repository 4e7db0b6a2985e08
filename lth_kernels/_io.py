"""Atomic file writes (temp file in the same directory, fsync, then ``os.replace``): a killed process never
leaves a half-written file that a rerun would trust. Below every other module (ops, training, bench use it)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return mask


def _temp_for(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


def _replace(tmp: Path, path: Path) -> None:
    try:
        # mkstemp creates 0600 (and writers such as safetensors may recreate the file): the renamed file gets
        # the mode a plain open() would (0666 minus the umask), or nobody else in a shared group reads a run.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    fd, tmp = _temp_for(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, sort_keys=True) + "\n")


def atomic_save(obj: Any, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Save atomically: a ``.safetensors`` path takes a dict of tensors (+ string ``metadata``), any other
    path goes through ``torch.save``."""
    path = Path(path)
    fd, tmp = _temp_for(path)
    os.close(fd)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file(obj, str(tmp), metadata=metadata)
        else:
            import torch

            torch.save(obj, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _replace(tmp, path)
