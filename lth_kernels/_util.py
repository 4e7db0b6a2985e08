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


class Progress:
    """Progress of a loop as the user sees it: a tqdm bar on a terminal; without one (a log file, CI) one
    ``logger.info`` line when the loop starts (a bar's redraws would flood the log). ``enabled=False`` (not the
    main rank, or the caller asked for quiet) shows nothing; ``log_start=False`` keeps the bar but not the line (a
    loop inside a stage whose start is already logged). Use as a context manager; ``update`` and ``note`` are
    no-ops when there is no bar."""

    def __init__(self, total: int | None, *, desc: str | None, unit: str = "step", initial: int = 0,
                 enabled: bool = True, logger=None, line: str | None = None, log_start: bool = True) -> None:
        import logging
        import sys

        self.bar = None
        if not enabled:
            return
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, leave=False, desc=desc)
        elif log_start and total is not None and initial < total:
            (logger or logging.getLogger("lth_kernels")).info(
                line if line is not None else f"{desc}: {unit} {initial} -> {total}")

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)

    def note(self, **values) -> None:
        """Values shown after the bar (the last evaluation, a loss)."""
        if self.bar is not None:
            self.bar.set_postfix(**values)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
