"""The ``live`` stage of ``make gpu-check``: every op that has a ``cuda`` or ``triton`` backend must have it live on
the GPU (the extension built with CUDA and registering each op's kernel, Triton importable), else exit 1 with
the reason per op. ``--dry-run`` prints the same table on any machine and always exits 0."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def gpu_backends() -> list[tuple[str, str, bool, str]]:
    """(op, backend, live, reason) for every compiled or Triton backend, on cuda."""
    from lth_kernels.ops import _registry

    rows = []
    for name, entry in sorted(_registry.ops().items()):
        for backend in ("cuda", "triton"):
            if backend in entry.impls:
                live, why = entry.status(backend, "cuda")
                rows.append((name, backend, live, why))
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    import torch

    from lth_kernels import _ext

    info = _ext.build_info()
    print(f"extension: {info or _ext.load_error}")
    print(f"cuda available: {torch.cuda.is_available()}")
    rows = gpu_backends()
    dead = [r for r in rows if not r[2]]
    for op, backend, live, why in rows:
        print(f"  {op:<32} {backend:<7} {'live' if live else 'OFF'}  {why}")
    if args.dry_run:
        print(f"dry run: {len(rows)} GPU backends listed, {len(dead)} off on this machine")
        return 0
    if not _ext.has_cuda():
        print("FAIL: lth_kernels._C is not built with CUDA")
        return 1
    if dead:
        print(f"FAIL: {len(dead)} GPU backends are off: {', '.join(f'{o}/{b}' for o, b, _, _ in dead)}")
        return 1
    print(f"all {len(rows)} GPU backends live")
    return 0


if __name__ == "__main__":
    sys.exit(main())
