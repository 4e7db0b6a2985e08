"""CPU sparse inference (fp32): the SELL kernel vs dense F.linear (MKL/oneDNN) vs the sparse libraries.

    python bench/cpu_sparse.py [--threads 2] [--reps 25] [--rounds 3] [--mkl-avx2] [--no-table] [--quick]
    python bench/cpu_sparse.py --model [--threads 1] ...      whole models, images/s (bench/cpu_sparse_model.py)

Layers: ViT-B / DeiT-S linears and ResNet-50 1x1 convs as GEMMs, B = 1, 8, 64 rows, sparsities 0 ... 0.99.
Baselines: dense ``F.linear``; torch CSR (``addmm`` with a sparse CSR weight: MKL sparse BLAS on x86); from 80 %
up, scipy CSR (``(W @ x.T).T + b`` on numpy arrays) and, when ``python-graphblas`` is installed (the ``bench``
extra), SuiteSparse:GraphBLAS ``mxm`` (B <= 8); a library that is not installed is skipped. All providers of a cell are
timed interleaved, repetition by repetition, so machine noise hits all alike; ``--rounds`` repeats the whole sweep.
Reported: the median over rounds of each round's minimum (on a shared machine preemption only adds time), for the
kernel the spread of its round minima ((max - min) / median) and its worst round against the fastest library, and
the ratio from the round medians too. Writes
``bench/results/<date>-cpu-cpu_sparse[-t<threads>].{json,md}`` and regenerates ``lth_kernels/ops/cpu_sparse_table.json``
(the crossover sparsity per batch and shape, read by ``use_sparse_cpu``). ``--mkl-avx2`` caps MKL and oneDNN at
AVX2 (only when this script is the process entry: under ``bench.run`` torch is already loaded); the table is then
not written.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = [  # (name, in_features K, out_features N)
    ("vitb.qkv", 768, 2304), ("vitb.proj", 768, 768), ("vitb.fc1", 768, 3072), ("vitb.fc2", 3072, 768),
    ("deits.fc1", 384, 1536), ("deits.fc2", 1536, 384),
    ("rn50.1x1.256-64", 256, 64), ("rn50.1x1.64-256", 64, 256), ("rn50.1x1.1024-256", 1024, 256),
    ("rn50.1x1.2048-512", 2048, 512),
]
BATCHES = [1, 8, 64]
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=25, help="timed repetitions per provider and cell (median)")
    p.add_argument("--rounds", type=int, default=3, help="whole-sweep repeats (median over rounds)")
    p.add_argument("--mkl-avx2", action="store_true", help="cap MKL/oneDNN at AVX2 (set before torch loads)")
    p.add_argument("--no-table", action="store_true", help="do not rewrite lth_kernels/ops/cpu_sparse_table.json")
    p.add_argument("--quick", action="store_true", help="3 shapes (with --model: LeNet only)")
    p.add_argument("--smoke", action="store_true", help="one shape, 90 %%, B = 1 and 8, 2 reps, 1 round (tests)")
    p.add_argument("--shapes", default="", help="comma-separated shape name prefixes (e.g. vitb,deits)")
    p.add_argument("--model", action="store_true", help="whole-model images/s instead of layers")
    p.add_argument("--models", default="", help="with --model: comma-separated labels (deit_s,lenet_300_100,resnet50)")
    p.add_argument("--no-write", action="store_true", help="print only (no result files, no table)")
    return p.parse_args(argv)


def cpu_model() -> dict:
    info = {"model": platform.processor() or "unknown", "flags": []}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    info["model"] = value.strip()
                elif key.strip() == "flags":
                    flags = value.split()
                    info["flags"] = [x for x in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if x in flags]
                    break
    except OSError:
        pass
    info["logical_cpus"] = os.cpu_count()
    return info


def measure(fns: dict, reps: int, warmup: int = 3) -> dict[str, tuple[float, float]]:
    """(median, min) seconds per callable over ``reps`` interleaved repetitions. On a shared machine preemption only
    adds time, to long calls more often than to short ones, so the minimum is the estimate of what the code costs;
    the median is what a caller saw."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: (statistics.median(v), min(v)) for name, v in times.items()}


def library_baselines(weight, bias, threads: int) -> dict:
    """``name -> (x -> y)`` for the sparse libraries installed here (scipy, python-graphblas), weight pre-converted
    as each library's users would keep it; x is converted per call from torch (a numpy view: no copy)."""
    out = {}
    try:
        import scipy.sparse as sp
    except ImportError:
        sp = None
    if sp is not None:
        ws, bn = sp.csr_matrix(weight.numpy()), bias.numpy()
        out["scipy_csr"] = lambda x: (ws @ x.numpy().T).T + bn
    try:
        import graphblas as gb
    except ImportError:
        gb = None
    if gb is not None and sp is not None:
        gb.ss.config["nthreads"] = threads
        wg, bn = gb.io.from_scipy_sparse(sp.csr_matrix(weight.numpy())), bias.numpy()
        zero = bn.dtype.type(0)  # an int fill value would turn the result into float64

        def graphblas(x):
            xg = gb.Matrix.from_dense(x.numpy().T.copy())  # K x B
            return wg.mxm(xg, gb.semiring.plus_times).new().to_dense(fill_value=zero).T + bn

        out["graphblas"] = graphblas
    return out


LIBRARY_FROM = 0.8  # sparsity from which the library baselines are timed (below they lose to dense by far)
GRAPHBLAS_MAX_BATCH = 8  # its mxm is 5-80x slower than scipy here (measured); larger batches only cost time
LIBRARIES = ("torch_csr", "scipy_csr", "graphblas")


def crossover_of(points: list[tuple[float, float]]) -> float:
    """Smallest sparsity from which the kernel wins (speed-up > 1) at every measured higher sparsity; linear in
    log(speed-up) between the last losing and the first winning point; 1.0 when it never wins."""
    points = sorted(points)
    first = len(points)
    for i in range(len(points) - 1, -1, -1):
        if points[i][1] > 1.0:
            first = i
        else:
            break
    if first == len(points):
        return 1.0
    if first == 0:
        return points[0][0]
    (s0, r0), (s1, r1) = points[first - 1], points[first]
    l0, l1 = math.log(max(r0, 1e-9)), math.log(r1)
    return round(s0 + (s1 - s0) * (0 - l0) / (l1 - l0) if l1 != l0 else s1, 4)


def main(argv=None) -> int:
    args = parse(argv)
    if args.smoke:
        args.quick, args.reps, args.rounds = True, 2, 1
    if args.mkl_avx2:
        os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        os.environ["DNNL_MAX_CPU_ISA"] = "AVX2"
    sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
    import warnings

    import torch

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    from bench.common import env_info
    from lth_kernels.ops import _registry

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    live, why = _registry.ops()["cpu_sparse_linear"].status("cpu", "cpu")
    if not live:
        sys.exit(f"cpu_sparse: the compiled kernel is not available ({why}); build with "
                 "LTH_KERNELS_CUDA=0 python setup.py build_ext --inplace")
    machine = {**cpu_model(), "torch_threads": args.threads, "kernel_isa": torch.ops.lth_kernels_C.cpu_sparse_isa(),
               "mkl_isa_cap": "AVX2" if args.mkl_avx2 else "none", "mkl": torch.backends.mkl.is_available()}
    env = {**env_info("cpu"), "device": "cpu", "cpu": machine["model"], "threads": args.threads,
           "mkl_cap": machine["mkl_isa_cap"], "kernel_isa": machine["kernel_isa"], "rounds": args.rounds,
           "reps": args.reps}
    if args.model:
        from bench.cpu_sparse_model import run_models

        return run_models(args, env)
    return run_layers(args, env, machine)


def run_layers(args, env: dict, machine: dict) -> int:
    import torch
    import torch.nn.functional as F

    from bench.common import atomic_write_text, write_results
    from lth_kernels.ops.cpu_sparse import TABLE_PATH, SparseWeight, cpu_sparse_linear

    shapes = SHAPES[:1] + SHAPES[3:4] + SHAPES[6:7] if args.quick else SHAPES
    sparsities, batches = SPARSITIES, BATCHES
    if args.shapes:
        shapes = [sh for sh in shapes if sh[0].startswith(tuple(args.shapes.split(",")))]
    if args.smoke:
        shapes, sparsities, batches = SHAPES[5:6], [0.9], [1, 8]
    print(json.dumps(env))
    cells = {}
    for rnd in range(args.rounds):
        for name, k, n in shapes:
            for s in sparsities:
                weight = torch.randn(n, k)
                mask = torch.rand(n, k) >= s
                weight *= mask
                bias = torch.randn(n)
                sw = SparseWeight.from_dense(weight, mask)
                w_csr = weight.to_sparse_csr()
                libs = library_baselines(weight, bias, args.threads) if s >= LIBRARY_FROM else {}
                for b in batches:
                    x = torch.randn(b, k)
                    want = F.linear(x, weight, bias)
                    torch.testing.assert_close(cpu_sparse_linear(x, sw, bias), want, atol=1e-3, rtol=1e-3)
                    fns = {"dense": lambda x=x, w=weight, c=bias: F.linear(x, w, c),
                           "torch_csr": lambda x=x, w=w_csr, c=bias: torch.addmm(c.unsqueeze(1), w, x.t()).t()}
                    for lib, fn in libs.items():
                        if lib == "graphblas" and b > GRAPHBLAS_MAX_BATCH:
                            continue
                        torch.testing.assert_close(torch.as_tensor(fn(x)), want, atol=1e-3, rtol=1e-3)
                        fns[lib] = lambda x=x, fn=fn: fn(x)
                    fns["cpu_sparse"] = lambda x=x, w=sw, c=bias: cpu_sparse_linear(x, w, c)
                    cells.setdefault((name, k, n, s, b), []).append(measure(fns, args.reps))
            print(f"round {rnd + 1}/{args.rounds}: {name} done", flush=True)
    rows = [summarise(key, ts) for key, ts in cells.items()]
    columns = ["shape", "K", "N", "batch", "sparsity", "dense_us", "torch_csr_us", "scipy_csr_us", "graphblas_us",
               "cpu_sparse_us", "x_vs_dense", "x_vs_torch_csr", "x_vs_scipy_csr", "x_vs_best_lib",
               "worst_round_x_vs_best_lib", "median_x_vs_best_lib", "spread_pct", "gflops_useful", "dense_gflops"]
    for r in rows:
        if r["sparsity"] >= 0.9:
            print(f"{r['shape']:>20} B={r['batch']:<3} s={r['sparsity']:.2f}  x dense {r['x_vs_dense']:6.2f}  "
                  f"x best lib {r['x_vs_best_lib'] or 0:5.2f} (worst round {r['worst_round_x_vs_best_lib'] or 0:5.2f})"
                  f"  spread {r['spread_pct']:4.1f} %  {r['gflops_useful']:6.1f} GFLOP/s")
    if args.no_write:
        return 0
    suffix = "cpu_sparse" + ("-quick" if args.quick else "") + ("-mklavx2" if args.mkl_avx2 else "")
    suffix += f"-{args.shapes.replace(',', '-')}" if args.shapes else ""
    suffix += f"-t{args.threads}" if args.threads != 2 else ""
    print(f"wrote {write_results(suffix, rows, env, columns)} (+ .md)")
    if args.mkl_avx2 or args.no_table or args.quick or args.shapes:
        return 0
    entries = []
    for name, k, n in shapes:
        for b in batches:
            pts = [(r["sparsity"], r["x_vs_dense"]) for r in rows if r["shape"] == name and r["batch"] == b]
            entries.append({"shape": name, "batch": b, "in_features": k, "out_features": n,
                            "crossover": crossover_of(pts)})
    table = {"machine": machine, "torch": torch.__version__, "commit": env["commit"], "date": env["date"],
             "method": "crossover sparsity above which cpu_sparse_linear beats dense F.linear fp32 (min of "
                       f"{args.reps} interleaved reps, median over {args.rounds} rounds, {args.threads} threads)",
             "entries": entries}
    atomic_write_text(TABLE_PATH, json.dumps(table, indent=1) + "\n")
    print(f"wrote {TABLE_PATH}")
    return 0


def summarise(key, rounds: list[dict]) -> dict:
    """One result row from the per-round (median, min) of a cell: times and ratios are the median over rounds of
    each round's minimum; ``spread_pct`` is the range of the kernel's round minima; ``median_x_vs_best_lib`` is
    the same ratio from the round medians (what a caller saw on the shared machine)."""
    name, k, n, s, b = key
    best = {p: statistics.median(r[p][1] for r in rounds) for p in rounds[0]}
    ours = [r["cpu_sparse"][1] for r in rounds]
    libs = [p for p in LIBRARIES if p in best]
    useful = 2 * b * k * n * (1 - s)
    row = {"shape": name, "K": k, "N": n, "batch": b, "sparsity": s}
    row.update({f"{p}_us": best[p] * 1e6 for p in best})
    row.update({"x_vs_dense": best["dense"] / best["cpu_sparse"]})
    row.update({f"x_vs_{p}": best[p] / best["cpu_sparse"] for p in libs if p != "graphblas"})
    vs_lib = [min(r[p][i] for p in libs) / r["cpu_sparse"][i] for r in rounds for i in (0, 1)]
    lib_rows = s >= LIBRARY_FROM
    row.update({"x_vs_best_lib": statistics.median(vs_lib[1::2]) if lib_rows else None,
                "worst_round_x_vs_best_lib": min(vs_lib[1::2]) if lib_rows else None,
                "median_x_vs_best_lib": statistics.median(vs_lib[0::2]) if lib_rows else None,
                "spread_pct": 100 * (max(ours) - min(ours)) / statistics.median(ours),
                "gflops_useful": useful / best["cpu_sparse"] / 1e9,
                "dense_gflops": 2 * b * k * n / best["dense"] / 1e9})
    return row


if __name__ == "__main__":
    sys.exit(main())
