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


def layer_rules() -> dict[str, str]:
    """How each layer family picks its kernel (the facts behind the automatic choice, in words)."""
    from lth_kernels.nn import masked
    from lth_kernels.ops import _masked_matmul_dispatch

    tile_rule = _masked_matmul_dispatch.rule_text().removeprefix("per call: ")
    blocks = "/".join(masked.BLOCK_SPARSE_DEVICES)
    two_four = "/".join(masked.SEMI_STRUCTURED_DEVICES)
    return {
        "MaskedLinear": (
            f"eval on CPU, fp32, sparsity above cpu_sparse_table.json's crossover -> cpu_sparse_linear; on {blocks} a "
            f"block-structured mask at density <= {masked.BLOCK_SPARSE_MAX_DENSITY:g} -> block_sparse_linear; on "
            f"{two_four}, no gradient needed, fp16/bf16, a 2:4 mask that cuSPARSELt ran faster (timed once per "
            f"shape) -> semi_structured_linear; otherwise masked_linear on the weight as stored: on cuda {tile_rule}; "
            f"on cpu reference (MKL)"),
        "MaskedConv2d": (
            "masked_conv2d -> reference on every device: F.conv2d (cuDNN / oneDNN) on the weight as stored, dW from "
            "torch's convolution backward masked in place; no Triton convolution"),
        "ScoredLinear, ScoredConv2d": (
            "masked_linear_scores (convs over unfolded patches), weight masked inside the op (frozen weights keep "
            "their values); backend as masked_linear; the score gradient alone: one library GEMM; dW and scores "
            "together: the fused Triton kernel on triton, one GEMM on reference"),
        "BlockSparseLinear": "block_sparse_linear (dds/sdd) -> triton on cuda, reference elsewhere",
    }


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
            rule = entry.rules.get(device)
            ops[name][device] = {"selected": _registry.resolve(name, device), "backends": rows,
                                 "rule": rule.text if rule is not None else None}
    return {
        "lth_kernels": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "triton": _version("triton"),
        "timm": _version("timm"),
        "threads": torch.get_num_threads(),
        "extension": _ext.build_info() or {"error": _ext.load_error,
                                                      "built": _ext.was_built() and not _ext.skipped},
        "gpu": gpu,
        "ops": ops,
        "layers": layer_rules(),
    }


def format_info(info: dict) -> str:
    lines = [
        f"lth_kernels {info['lth_kernels']}  python {info['python']}  torch {info['torch']} "
        f"(CUDA {info['torch_cuda']})  triton {info['triton']}  timm {info['timm']}",
        f"platform     {info['platform']}, {info['threads']} threads",
    ]
    ext = info["extension"]
    if "error" in ext:
        built = " (it was built here: the compiled kernels are off until it imports)" if ext.get("built") else ""
        lines.append(f"extension    _C not loaded{built}: {ext['error']}")
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
            if d.get("rule"):  # shown also while a candidate is off: it is what a call gets once both are live
                lines.append(f"{'':<{width + 9}}auto rule: {d['rule']}")
    lines += ["", "layers (automatic kernel choice):"]
    lines += [f"  {family}: {rule}" for family, rule in info.get("layers", {}).items()]
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
