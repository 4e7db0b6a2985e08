"""What is built and live, and why: ``lth info`` / ``python -m lth_kernels.info``."""

from __future__ import annotations

import importlib
import platform
import sys

import torch

from lth_kernels import __version__, _ext
from lth_kernels.ops import _registry


def _version(module: str) -> str:
    try:
        return getattr(importlib.import_module(module), "__version__", "?")
    except Exception as e:  # noqa: BLE001 - any import failure is reported, not raised
        return f"not importable ({type(e).__name__})"


def collect() -> dict:
    """The facts ``lth info`` prints, as a dict (also written into run directories and benchmark files)."""
    gpu = None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        gpu = {"name": props.name, "capability": f"{props.major}.{props.minor}",
               "memory_gib": props.total_memory / 2**30}
    devices = ["cpu", "cuda"]  # cuda too without a GPU: the table then says why each GPU backend is off
    ops = {}
    for name, entry in sorted(_registry.ops().items()):
        ops[name] = {}
        for device in devices:
            rows = {}
            for backend in _registry.BACKENDS:
                if backend not in entry.impls:
                    continue
                live, why = entry.status(backend, device)
                rows[backend] = why if live else f"off: {why}"
            ops[name][device] = {"selected": _registry.resolve(name, device), "backends": rows}
    return {
        "lth_kernels": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "timm": _version("timm"),
        "threads": torch.get_num_threads(),
        "extension": _ext.build_info() or {"error": _ext.load_error},
        "gpu": gpu,
        "ops": ops,
    }


def format_info(info: dict) -> str:
    lines = [
        f"lth_kernels {info['lth_kernels']}  python {info['python']}  torch {info['torch']} "
        f"(CUDA {info['torch_cuda']})  triton {info['triton']}  timm {info['timm']}",
        f"platform     {info['platform']}, {info['threads']} threads",
    ]
    ext = info["extension"]
    if "error" in ext:
        lines.append(f"extension    _C not loaded: {ext['error']}")
    else:
        cuda = f"CPU + CUDA (archs {ext.get('archs')})" if ext.get("with_cuda") == "1" else "CPU only"
        lines.append(f"extension    _C built: {cuda}; {ext.get('cuda_decision')}; {ext.get('compiler')}")
    gpu = info["gpu"]
    gpu_text = f"{gpu['name']} (sm {gpu['capability']}, {gpu['memory_gib']:.0f} GiB)" if gpu else "none"
    lines.append(f"gpu          {gpu_text}")
    lines.append("")
    width = max((len(n) for n in info["ops"]), default=4) + 2
    for name, per_device in info["ops"].items():
        for device, d in per_device.items():
            head = f"{name:<{width}}{device:<5} -> {d['selected']:<10}"
            detail = "; ".join(f"{b}: {why}" for b, why in d["backends"].items())
            lines.append(f"{head} {detail}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="lth info", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the facts as JSON")
    args = parser.parse_args(argv)
    info = collect()
    print(json.dumps(info, indent=2) if args.json else format_info(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
