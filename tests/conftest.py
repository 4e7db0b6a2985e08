"""Test tiers. Without a CUDA device, Triton kernels run on CPU tensors through the interpreter
(TRITON_INTERPRET=1 must be set before triton is imported, so it is set here, first), `gpu` tests
are skipped, and the shapes stay small. `pytest -m gpu` on a GPU machine runs the full sizes."""

from __future__ import annotations

import os
import subprocess
import sys


def _cuda_visible() -> bool:
    # Ask a child process: importing torch here would import triton before TRITON_INTERPRET is set.
    if os.environ.get("LTH_TEST_CUDA") in ("0", "1"):
        return os.environ["LTH_TEST_CUDA"] == "1"
    try:
        out = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                             capture_output=True, text=True, timeout=120)
        return out.stdout.strip().endswith("True")
    except (OSError, subprocess.SubprocessError):
        return False


HAS_CUDA = _cuda_visible()
os.environ["LTH_TEST_CUDA"] = "1" if HAS_CUDA else "0"  # child processes (torchrun tests) reuse the answer
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

# Tolerances (atol, rtol) per dtype against a float64 oracle.
TOLERANCES = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-2, 2e-2),
    torch.bfloat16: (5e-2, 5e-2),
}


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    """Every test starts from the same seed; tests that want fresh inputs draw them after this."""
    torch.manual_seed(0)
    yield


@pytest.fixture
def tol():
    def get(dtype):
        return TOLERANCES[dtype]

    return get


@pytest.fixture
def device():
    return torch.device("cuda" if HAS_CUDA else "cpu")


def backends(op: str) -> list[str]:
    """The backends ``op`` implements, to parametrize its tests over (``cuda`` only where a CUDA device is): a
    backend the op lacks is no test case, so nothing skips as "not implemented"."""
    from lth_kernels.ops import _registry

    impls = _registry.ops()[op].impls
    return [b for b in _registry.BACKENDS if b in impls and (b != "cuda" or HAS_CUDA)]


def require_live(op: str, backend: str, device) -> None:
    """Skip a test of ``op`` on ``backend`` only where the machine lacks what the backend needs (a device, the
    interpreter, an extension that was never built), with the registry's reason; fail where the suite itself is
    wrong (a backend the op does not implement) or the build is broken (``_C`` was built but does not import, or
    lacks the op)."""
    from lth_kernels import _ext
    from lth_kernels.ops import _registry

    entry = _registry.ops()[op]
    if backend not in entry.impls:
        pytest.fail(f"{op} has no {backend!r} backend (it has {', '.join(entry.impls)}): parametrize over the "
                    f"backends it implements")
    live, why = entry.status(backend, device)
    if live:
        return
    if backend in ("cpu", "cuda") and not _ext.skipped and (
            (_ext.C is None and _ext.was_built()) or why.startswith("_C has no")):
        pytest.fail(f"{op} on {backend}: {why}, though the extension was built")
    pytest.skip(f"{op} on {backend}: {why}")


def assert_close(actual, expected, dtype=None, msg=""):
    """Compare against an oracle with the tolerance of `dtype` (default: actual's dtype)."""
    atol, rtol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual.double(), expected.double(), atol=atol, rtol=rtol, msg=msg or None)


@pytest.fixture(autouse=True)
def _fresh_backend_choices():
    # resolve() caches its answer per (op, device, backend, env); tests that fake a backend's liveness must not
    # see another test's cached answer
    from lth_kernels.ops import _registry

    _registry._RESOLVED.clear()
    yield
    _registry._RESOLVED.clear()


@pytest.fixture(autouse=True)
def _restore_log_levels():
    # the CLI frame quiets the trainer's loggers for the rest of the process; a test calling it must not
    # silence the next test's log capture
    import logging

    names = ("lth_kernels.training.trainer", "lth_kernels.training.trainer.eval")
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)
