"""Test tiers. Without a CUDA device, Triton kernels run on CPU tensors through the interpreter
(TRITON_INTERPRET=1 must be set before triton is imported, so it is set here, first), `gpu` tests
are skipped, and the shapes stay small. `pytest -m gpu` on a GPU machine runs the full sizes."""

from __future__ import annotations

import contextlib
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


def torch_error_bound(want: torch.Tensor, torch_own: torch.Tensor, factor: float = 2.0) -> float:
    """The GPU tolerance rule: ``factor`` x torch's own error in the dtype (``torch_own``: the same function by
    plain torch ops on the low-precision inputs, e.g. cuBLAS/cuDNN) against the float64 oracle ``want``, as a max
    abs error, plus a tiny floor (float32 eps at the output's scale) for outputs torch happens to get exactly."""
    want = want.double()
    scale = float(want.abs().max()) if want.numel() else 0.0
    own = float((torch_own.double() - want).abs().max()) if want.numel() else 0.0
    return factor * own + torch.finfo(torch.float32).eps * scale


def assert_within_torch_error(got: torch.Tensor, want: torch.Tensor, torch_own: torch.Tensor, factor: float = 2.0,
                              msg: str = "") -> None:
    """``max |got - want| <= torch_error_bound(want, torch_own, factor)``: ours no worse than ``factor`` x torch's
    own error in that dtype against the float64 oracle (compare fp32 with TF32 off: the ``no_tf32`` fixture)."""
    assert got.shape == want.shape == torch_own.shape, f"{msg}: shapes {got.shape}, {want.shape}, {torch_own.shape}"
    bound = torch_error_bound(want, torch_own, factor)
    err = float((got.double() - want.double()).abs().max()) if got.numel() else 0.0
    assert err <= bound, (f"{msg}{': ' if msg else ''}max abs error {err:.3g} > {bound:.3g} "
                          f"({factor:g} x torch's own {got.dtype} error + floor)")


@contextlib.contextmanager
def tf32_off():
    """fp32 matmuls and convolutions in full fp32 inside the block (the flags are restored after)."""
    flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = flags


@pytest.fixture
def no_tf32():
    """The test runs with TF32 off: a fp32 comparison is about fp32 (tests about TF32 set the flags themselves)."""
    with tf32_off():
        yield


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
