"""Shared benchmark helpers: timing (CUDA events over back-to-back calls, interleaved providers, the cold first
call apart), device roofs, environment record, result files (``bench/results/<date>-<device>-<stem>.{json,md}``,
written atomically)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch

from lth_kernels._io import atomic_write_text
from lth_kernels._util import cuda_calls_ms, cuda_time_ms, inner_calls

# Measured peaks (dense bf16 tensor core FLOP/s, HBM copy bytes/s); A100 from the datasheet.
ROOFS = {"H100": (790e12, 3.0e12), "H200": (790e12, 4.3e12), "A100": (312e12, 2.0e12)}


def roof(device_name: str) -> tuple[float, float] | None:
    for key, value in ROOFS.items():
        if key in device_name:
            return value
    return None


def require_cuda(stem: str) -> None:
    """Benchmarks time GPU kernels: on a machine without CUDA say so and exit 0."""
    if not torch.cuda.is_available():
        print(f"{stem}: CUDA is needed for this benchmark; nothing measured")
        sys.exit(0)

def _timer(device: torch.device):
    if device.type == "cuda":
        run = cuda_calls_ms
    else:
        def run(fn, inner=1):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            return (time.perf_counter() - t0) * 1e3 / inner
    return run


def time_interleaved(fns: dict, device, reps: int = 20, warmup: int = 3, cold: dict | None = None) -> dict:
    """Median ms per call of each callable; providers alternate inside every repetition so clock drift hits all
    alike, and each timing covers ``inner_calls`` back-to-back calls.

    ``cold``: a dict that receives each provider's first call in wall ms (compile / autotune included), kept
    apart from the steady-state times. A callable that raises is reported as None (with the error printed once)."""
    device = torch.device(device)
    run = _timer(device)
    live, inner = {}, {}
    for name, fn in fns.items():
        try:
            t0 = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if cold is not None:
                cold[name] = (time.perf_counter() - t0) * 1e3
            for _ in range(max(0, warmup - 1)):
                fn()
            inner[name] = inner_calls(run(fn))
            live[name] = fn
        except Exception as e:  # noqa: BLE001 - a failing baseline must not stop the sweep
            print(f"  {name}: unavailable ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
    times = {name: [] for name in live}
    for _ in range(reps):
        for name, fn in live.items():
            times[name].append(run(fn, inner[name]))
    return {name: (statistics.median(times[name]) if name in times else None) for name in fns}


def ratio(num: float | None, den: float | None) -> float | None:
    """num / den, None when either is missing (a provider that could not run) or zero."""
    return num / den if num and den else None


def percent(num: float | None, den: float | None) -> float | None:
    r = ratio(num, den)
    return None if r is None else 100 * r


def tflops(flops: float, ms: float | None) -> float | None:
    return flops / (ms * 1e-3) / 1e12 if ms else None


def show(row: dict) -> dict:
    """Prints a result row (floats rounded) and returns it."""
    print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
    return row


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


cuda_time = cuda_time_ms  # median ms over CUDA events; one implementation with the 2:4 dispatch


def copy_bandwidth_gbs(nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (read + write) measured now, the roof for memory-bound kernels."""
    src = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = cuda_time(lambda: dst.copy_(src), warmup=3, reps=20)
    return 2 * nbytes / ms / 1e6


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=os.path.dirname(os.path.abspath(__file__)))
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def env_info(device=None) -> dict:
    """Device, versions, commit and date: the header of every results file."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "python": platform.python_version(),
            "commit": _commit(), "date": datetime.date.today().isoformat()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = ""
    if device.type == "cuda":
        info["device"] = torch.cuda.get_device_name(device)
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["driver"] = _driver()
    else:
        info["device"] = _cpu_name()
        info["threads"] = torch.get_num_threads()
    return info


environment = env_info


def _driver() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def rows_json(env: dict, rows: list[dict]) -> str:
    """``{"env": ..., "rows": [...]}`` with one row per line: diffable, and a few hundred rows stay short."""
    body = ",\n".join("  " + json.dumps(r) for r in rows)
    return '{"env": ' + json.dumps(env) + ',\n "rows": [\n' + body + "\n ]}\n"


def _fmt(v) -> str:
    return "" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)


def write_results(stem: str, rows: list[dict], env: dict | None = None, columns: list[str] | None = None,
                  out_dir: str | None = None) -> str:
    """Writes ``<date>-<device>-<stem>.{json,md}`` under bench/results (or ``out_dir``); returns the json path."""
    env = env or env_info()
    out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    device = "".join(c if c.isalnum() else "_" for c in env.get("device", "cpu")).strip("_")
    base = os.path.join(out_dir, f"{env['date']}-{device}-{stem}")
    columns = columns or list(dict.fromkeys(k for r in rows for k in r))
    md = [f"# {stem}", "", " | ".join(f"{k}: {v}" for k, v in env.items()), "",
          "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    atomic_write_text(base + ".json", rows_json(env, rows))
    atomic_write_text(base + ".md", "\n".join(md) + "\n")
    return base + ".json"
