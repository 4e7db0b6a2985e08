"""Shared benchmark helpers: timing (CUDA events, interleaved providers), device roofs, result files."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import time

import torch

# Measured peaks (dense bf16 tensor core FLOP/s, HBM copy bytes/s); A100 from the datasheet.
ROOFS = {"H100": (790e12, 3.0e12), "H200": (790e12, 4.3e12), "A100": (312e12, 2.0e12)}


def roof(device_name: str) -> tuple[float, float] | None:
    for key, value in ROOFS.items():
        if key in device_name:
            return value
    return None


def _timer(device: torch.device):
    if device.type == "cuda":
        def run(fn):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end)
    else:
        def run(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
    return run


def time_interleaved(fns: dict, device, reps: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median ms of each callable; providers alternate inside every repetition so clock drift hits all alike.

    A callable that raises is reported as None (with the error printed once)."""
    run = _timer(torch.device(device))
    live = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - a failing baseline must not stop the sweep
            print(f"  {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    times = {name: [] for name in live}
    for _ in range(reps):
        for name, fn in live.items():
            times[name].append(run(fn))
    return {name: (statistics.median(times[name]) if name in times else None) for name in fns}


def gemm_cap(m: int, n: int, k: int, density: float, elt_bytes: int, device_name: str) -> float | None:
    """Roofline speed-up cap of a weight-sparse GEMM at ``density``: activations are read and written in full."""
    r = roof(device_name)
    if r is None:
        return None
    peak, bw = r
    t_compute = 2 * m * n * k / peak
    t_dense = max(t_compute, elt_bytes * (m * k + n * k + m * n) / bw)
    t_sparse = max(density * t_compute, elt_bytes * (m * k + density * n * k + m * n) / bw)
    return t_dense / t_sparse


def environment(device) -> dict:
    device = torch.device(device)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=os.path.dirname(os.path.abspath(__file__)), timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    return {"device": name, "torch": torch.__version__, "triton": triton_version, "cuda": torch.version.cuda,
            "commit": commit or "unknown", "date": datetime.date.today().isoformat()}


def _atomic_write(path: str, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(name: str, env: dict, rows: list[dict], columns: list[str], out_dir: str | None = None) -> str:
    """Writes ``<date>-<device>-<name>.json`` and ``.md`` under bench/results (or ``out_dir``); returns the stem."""
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    device = "".join(c if c.isalnum() else "_" for c in env["device"]).strip("_")
    stem = os.path.join(out_dir, f"{env['date']}-{device}-{name}")
    _atomic_write(stem + ".json", json.dumps({"environment": env, "rows": rows}, indent=1))

    def fmt(v):
        return "" if v is None else f"{v:.3g}" if isinstance(v, float) else str(v)

    lines = [f"# {name}", "", " | ".join(f"{k}: {v}" for k, v in env.items()), "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in columns) + " |" for r in rows]
    _atomic_write(stem + ".md", "\n".join(lines) + "\n")
    return stem
