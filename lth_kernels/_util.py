"""Small helpers shared across subpackages (registries, parameter names, GPU timing)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable


def check_kwargs(what: str, builder: Callable, kwargs: dict, fixed: Iterable[str], extra: Iterable[str] = ()) -> None:
    """One-line error for keyword arguments ``builder`` does not take, instead of a TypeError deep inside.

    ``fixed`` names the builder parameters the registry fills itself; ``extra`` names the ones the registry
    consumes before calling the builder (listed as accepted). Builders with ``**kwargs`` accept anything.
    """
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = set(fixed)
    known = [p for p in params if p not in fixed] + list(extra)
    bad = sorted(set(kwargs) - set(known))
    if bad:
        raise ValueError(f"{', '.join(bad)}: {what} takes no such argument; it takes: {', '.join(known) or 'none'}")


def canonical_name(name: str) -> str:
    """``name`` without DDP's leading ``module.`` and torch.compile's ``_orig_mod`` segments (anywhere: compiling
    a submodule leaves one in the middle; no user module is named that)."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)


def inner_calls(ms_per_call: float, pair_ms: float = 1.0, most: int = 100) -> int:
    """Back-to-back calls one timing should span for a callable taking ``ms_per_call``: about ``pair_ms`` in all,
    so that a short kernel is timed rather than the Python launch and event overhead around it."""
    import math

    return max(1, min(most, math.ceil(pair_ms / max(ms_per_call, 1e-4))))


def cuda_calls_ms(fn: Callable[[], object], n: int = 1) -> float:
    """Milliseconds per call of ``n`` back-to-back calls of ``fn()``, between one pair of CUDA events."""
    import torch

    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / n


def cuda_time_ms(fn: Callable[[], object], warmup: int = 10, reps: int = 30, inner: int | None = None) -> float:
    """Median milliseconds per call of ``fn()`` over ``reps`` CUDA-event timings after ``warmup`` calls (the 2:4
    dispatch measurement and the benchmarks share it). Each timing spans ``inner`` back-to-back calls (default:
    enough for about 1 ms, at most 100), so a short kernel is timed rather than its Python launch."""
    import statistics

    import torch

    def timed(n: int) -> float:
        return cuda_calls_ms(fn, n)

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    if inner is None:
        inner = inner_calls(timed(1))
    return statistics.median(timed(inner) for _ in range(reps))
