"""Run directories and idempotent stages.

``runs/<workflow>-<hashname>/hparams.json``; a stage is done when its output file exists
(``stage_done``), and every output is written atomically (temp file in the same directory, then
``os.replace``), so a killed process never leaves a half-written file that a rerun would trust.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
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
        lock_run_dir(path)
        if hp_file.exists():
            old = type(hparams).from_json(hp_file.read_text())
            if old.identity() != hparams.identity():
                raise FileExistsError(f"run directory {path} holds other hparams ({hp_file}); remove it or "
                                      "choose another --root")
        else:
            atomic_write_json(hp_file, hparams.to_dict())
    return path


# ---------------------------------------------------------------------------------------------- lock
LOCK = ".lock"
_held: set[Path] = set()
_wait = {"on": False, "poll_s": 1.0}


def set_lock_wait(wait: bool, poll_s: float = 1.0) -> None:
    """``--wait``: a run directory in use by another process is waited for instead of refused."""
    _wait.update(on=bool(wait), poll_s=float(poll_s))


def _holder(lock: Path) -> dict:
    try:
        return json.loads(lock.read_text())
    except (OSError, ValueError):
        return {}  # being written, or garbage: treated as held by nobody alive below


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def lock_run_dir(path: str | os.PathLike) -> None:
    """Hold ``<path>/.lock`` (pid, host, start time) until this process exits or ``release_run_dirs``.

    Two processes on one run directory would interleave checkpoints and metrics: the second one is refused
    with the holder's pid (or waits, after ``set_lock_wait(True)``). A lock left by a dead process on this
    host (``kill -9``, a crash) is taken over; the same process may lock the same directory again."""
    lock = Path(path) / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname()}
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _holder(lock)
            pid, host = holder.get("pid"), holder.get("host")
            if pid == me["pid"] and host == me["host"]:
                _held.add(lock)
                return
            if not isinstance(pid, int) or (host == me["host"] and not _alive(pid)):
                stale = lock.with_name(f"{LOCK}.stale.{me['pid']}")
                try:
                    os.replace(lock, stale)  # atomic: of two processes taking over, one wins
                    stale.unlink(missing_ok=True)
                except FileNotFoundError:
                    pass
                continue
            if not _wait["on"]:
                raise FileExistsError(f"run directory {path} is in use by pid {pid} on {host} since "
                                      f"{holder.get('started', '?')}; wait for it to finish or pass --wait") from None
            time.sleep(_wait["poll_s"])
            continue
        with os.fdopen(fd, "w") as f:
            json.dump({**me, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, f)
        if not _held:
            atexit.register(release_run_dirs)
        _held.add(lock)
        return


def release_run_dirs() -> None:
    """Remove the locks this process holds."""
    me = os.getpid()
    for lock in list(_held):
        if _holder(lock).get("pid") == me:
            lock.unlink(missing_ok=True)
        _held.discard(lock)


def stage_done(path: str | os.PathLike) -> bool:
    """A stage is done when its output exists (outputs are written atomically, so existence means complete)."""
    return Path(path).exists()


__all__ = ["atomic_save", "atomic_write_bytes", "atomic_write_json", "atomic_write_text", "lock_run_dir",
           "prepare_run_dir", "release_run_dirs", "run_dir", "set_lock_wait", "stage_done"]
