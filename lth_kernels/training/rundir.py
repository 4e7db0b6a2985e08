"""Run directories and idempotent stages.

``runs/<workflow>-<hashname>/hparams.json``; a stage is done when its output file exists
(``stage_done``), and every output is written atomically (temp file in the same directory, then
``os.replace``), so a killed process never leaves a half-written file that a rerun would trust.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def run_dir(workflow: str, hparams, root: str | os.PathLike = "runs") -> Path:
    """``<root>/<workflow>-<hparams.hashname()>``."""
    return Path(root) / f"{workflow}-{hparams.hashname()}"


def prepare_run_dir(workflow: str, hparams, root: str | os.PathLike = "runs", write: bool = True) -> Path:
    """Create the run directory and write ``hparams.json`` (full resolved values) once; ``write=False``
    on non-main ranks. An existing ``hparams.json`` with different values is an error: the hash collided
    or the directory was edited by hand."""
    path = run_dir(workflow, hparams, root)
    hp_file = path / "hparams.json"
    if write:
        path.mkdir(parents=True, exist_ok=True)
        if hp_file.exists():
            old = type(hparams).from_json(hp_file.read_text())
            if old.non_default() != hparams.non_default():
                raise FileExistsError(f"run directory {path} holds other hparams ({hp_file}); remove it or "
                                      "choose another --root")
        else:
            atomic_write_json(hp_file, hparams.to_dict())
    return path


def stage_done(path: str | os.PathLike) -> bool:
    """A stage is done when its output exists (outputs are written atomically, so existence means complete)."""
    return Path(path).exists()


def _temp_for(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    return fd, Path(tmp)


def _replace(tmp: Path, path: Path) -> None:
    try:
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
