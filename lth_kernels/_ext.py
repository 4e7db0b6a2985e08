"""Loads the compiled extension ``lth_kernels._C`` if it was built; the package works without it.

``LTH_KERNELS_SKIP_C=1`` forces the pure-Python path (references and Triton only).
"""

from __future__ import annotations

import json
import logging
import os
import sysconfig

import torch

log = logging.getLogger("lth_kernels")

C = None
load_error: str | None = None

skipped = os.environ.get("LTH_KERNELS_SKIP_C") == "1"
if skipped:
    load_error = "skipped (LTH_KERNELS_SKIP_C=1)"
else:
    try:
        from lth_kernels import _C as C  # noqa: N811  (registers the lth_kernels_C:: ops on import)
    except ImportError as e:  # a pure-Python checkout, or a torch the extension was not built against
        load_error = f"{type(e).__name__}: {e}".splitlines()[0]
        log.warning("lth_kernels._C is not available, using reference/Triton ops only: %s", load_error)


BUILD_RECORD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_build_info.json")


def build_record() -> dict | None:
    """What setup.py recorded after it built ``_C`` here (``{"extension": file name, "build_info": ...}``), or None
    when no build wrote one (a pure-Python install, or an extension built before the record existed)."""
    try:
        with open(BUILD_RECORD) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def was_built() -> bool:
    """Whether a compiled ``_C`` for this interpreter was built into the package: then it must load."""
    name = "_C" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so")
    record = build_record()
    return (record or {}).get("extension") == name or os.path.exists(os.path.join(os.path.dirname(BUILD_RECORD), name))


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
