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


def cuda_time_ms(fn: Callable[[], object], warmup: int = 10, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` CUDA-event timings after ``warmup`` calls (the 2:4
    dispatch measurement and the benchmarks share it)."""
    import statistics

    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)
