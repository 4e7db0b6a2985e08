"""Run directories and idempotent stages.

``runs/<workflow>-<hashname>/hparams.json``; a stage is done when its output file exists
(``stage_done``), and every output is written atomically (temp file in the same directory, then
``os.replace``), so a killed process never leaves a half-written file that a rerun would trust.
"""

from __future__ import annotations

import os
from pathlib import Path

from lth_kernels._io import atomic_save, atomic_write_bytes, atomic_write_json, atomic_write_text


def run_dir(workflow: str, hparams, root: str | os.PathLike = "runs") -> Path:
    """``<root>/<workflow>-<hparams.hashname()>``, or the directory named by ``legacy_hashname()`` when only
    that one exists (a run made before the run-neutral fields, data_dir, download, eval_every, left the hash)."""
    path = Path(root) / f"{workflow}-{hparams.hashname()}"
    legacy = Path(root) / f"{workflow}-{hparams.legacy_hashname()}" if hasattr(hparams, "legacy_hashname") else path
    return legacy if legacy != path and not path.exists() and legacy.exists() else path


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
            if old.identity() != hparams.identity():
                raise FileExistsError(f"run directory {path} holds other hparams ({hp_file}); remove it or "
                                      "choose another --root")
        else:
            atomic_write_json(hp_file, hparams.to_dict())
    return path


def stage_done(path: str | os.PathLike) -> bool:
    """A stage is done when its output exists (outputs are written atomically, so existence means complete)."""
    return Path(path).exists()


__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "prepare_run_dir", "run_dir",
           "stage_done"]
