"""Loads the compiled extension ``lth_kernels._C`` if it was built; the package works without it.

``LTH_KERNELS_SKIP_C=1`` forces the pure-Python path (references and Triton only).
"""

from __future__ import annotations

import logging
import os

import torch

log = logging.getLogger("lth_kernels")

C = None
load_error: str | None = None

if os.environ.get("LTH_KERNELS_SKIP_C") == "1":
    load_error = "skipped (LTH_KERNELS_SKIP_C=1)"
else:
    try:
        from lth_kernels import _C as C  # noqa: N811  (registers the lth_kernels_C:: ops on import)
    except ImportError as e:  # a pure-Python checkout, or a torch the extension was not built against
        load_error = f"{type(e).__name__}: {e}".splitlines()[0]
        log.warning("lth_kernels._C is not available, using reference/Triton ops only: %s", load_error)


def build_info() -> dict[str, str]:
    """What the extension was built with (compiler, torch, CUDA, archs), recorded by setup.py."""
    if C is None:
        return {}
    return dict(C.build_info())


def has_cuda() -> bool:
    return C is not None and build_info().get("with_cuda") == "1"


def has_op(name: str) -> bool:
    """Whether ``torch.ops.lth_kernels_C.<name>`` exists (and, for CUDA, has a CUDA kernel registered)."""
    if C is None:
        return False
    try:
        getattr(torch.ops.lth_kernels_C, name)
    except (AttributeError, RuntimeError):
        return False
    return True
