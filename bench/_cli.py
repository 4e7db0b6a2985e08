"""The command line every GPU benchmark shares: ``--quick`` (the few shapes a short GPU session can afford),
``--out-dir`` (where result files go), ``--no-write`` and, where the script has one, ``--smoke`` (a tiny CPU run
through the Triton interpreter). Torch-free on purpose: ``--smoke`` must set TRITON_INTERPRET before torch and
triton are imported."""

from __future__ import annotations

import argparse
import os


def parser(doc: str, smoke: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the short set of shapes (gpu-check)")
    p.add_argument("--out-dir", default=None, help="where the result files go (default bench/results)")
    p.add_argument("--no-write", action="store_true", help="print the rows, write no files")
    if smoke:
        p.add_argument("--smoke", action="store_true", help="tiny CPU run of the script itself (Triton interpreter)")
    return p


def start(args, script: str) -> bool:
    """Prepares the run; False (after saying why) when the benchmark needs a GPU this machine lacks."""
    smoke = getattr(args, "smoke", False)
    if smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
    import torch

    if not torch.cuda.is_available() and not smoke:
        hint = " (use --smoke for a tiny CPU run)" if hasattr(args, "smoke") else ""
        print(f"bench/{script}.py needs a CUDA device{hint}; nothing measured.")
        return False
    return True


def finish(args, stem: str, rows: list, env: dict, columns: list | None = None) -> None:
    """Writes the result files unless --no-write / --smoke."""
    if args.no_write or getattr(args, "smoke", False):
        return
    from bench.common import write_results

    print("wrote", write_results(stem, rows, env, columns, out_dir=args.out_dir))
