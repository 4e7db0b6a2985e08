"""Shared benchmark helpers: CUDA-event timing, environment record, result files (json + md)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

import torch


def require_cuda(stem: str) -> None:
    """Benchmarks time GPU kernels: on a machine without CUDA say so and exit 0."""
    if not torch.cuda.is_available():
        print(f"{stem}: CUDA is needed for this benchmark; nothing measured")
        sys.exit(0)


def cuda_time(fn, warmup: int = 10, reps: int = 30) -> float:
    """Median milliseconds of ``fn()`` over ``reps`` CUDA-event timings after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


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


def env_info() -> dict:
    info = {"torch": torch.__version__, "cuda": torch.version.cuda or "", "python": platform.python_version(),
            "commit": _commit(), "date": datetime.date.today().isoformat()}
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = ""
    if torch.cuda.is_available():
        info["device"] = torch.cuda.get_device_name()
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info


def write_results(stem: str, rows: list[dict], env: dict | None = None) -> str:
    """Writes bench/results/<date>-<device>-<stem>.{json,md} (temp file + rename); returns the json path."""
    env = env or env_info()
    device = env.get("device", "cpu").replace(" ", "_").replace("/", "_")
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, f"{env['date']}-{device}-{stem}")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    md = [f"# {stem}", "", " | ".join(f"{k}: {v}" for k, v in env.items()), "",
          "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_fmt(r.get(c, "")) for c in cols) + " |" for r in rows]
    for path, text in ((base + ".json", json.dumps({"env": env, "rows": rows}, indent=1)),
                       (base + ".md", "\n".join(md) + "\n")):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return base + ".json"


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
