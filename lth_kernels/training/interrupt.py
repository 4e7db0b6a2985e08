"""SIGTERM during training: a scheduler's pre-emption, ``kill``, torchrun stopping its workers.

While ``SigtermFlag`` is active a SIGTERM only sets a flag; the Trainer looks at it after every step, writes
its checkpoint and raises ``TrainingInterrupted``, so the rerun of the same command resumes bit-exactly
instead of losing the epoch (or leaving a half-written file)."""

from __future__ import annotations

import signal
import threading

import torch

from lth_kernels.training import distributed as dist_utils


class TrainingInterrupted(Exception):  # noqa: N818  (not an error: a requested stop)
    """Training stopped by SIGTERM at a step boundary after writing its checkpoint (rerun to resume)."""


class SigtermFlag:
    """``with SigtermFlag() as flag``: SIGTERM sets ``flag.raised`` instead of killing the process (main
    thread only: elsewhere signal handlers cannot be set and the default action stays)."""

    def __init__(self):
        self.raised, self._old = False, None

    def __enter__(self) -> SigtermFlag:
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._old is not None:
            signal.signal(signal.SIGTERM, self._old)
            self._old = None

    def _handle(self, signum, frame) -> None:
        self.raised = True

    def agreed(self, device: torch.device) -> bool:
        """Whether any rank was signalled: every rank must stop at the same step, or a collective hangs."""
        if not dist_utils.is_distributed():
            return self.raised
        t = torch.tensor([float(self.raised)], device=device)
        return bool(dist_utils.all_reduce_sum(t).item() > 0)
