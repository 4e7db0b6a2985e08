"""CPU sparse inference (fp32): CSR kernel vs dense F.linear (MKL/oneDNN) vs torch CSR (MKL sparse).

    python bench/cpu_sparse.py [--threads 2] [--reps 25] [--rounds 1] [--mkl-avx2] [--no-table] [--quick]

Shapes: ViT-B / DeiT-S linears and ResNet-50 1x1 convs as GEMMs, B = 1, 8, 64 rows, sparsities 0 ... 0.99.
Times are medians (and minima) of interleaved repetitions (providers alternate so that machine noise hits all
alike); ``--rounds`` repeats the whole sweep (median of medians, min of minima). Writes
``bench/results/<date>-cpu-cpu_sparse.{json,md}`` and regenerates ``lth_kernels/ops/cpu_sparse_table.json``
(the crossover sparsity per batch and shape, read by ``use_sparse_cpu``). ``--mkl-avx2`` caps MKL and oneDNN at
AVX2 (the CI machine kind) for the dense and torch-CSR baselines (only when this script is the process entry:
under ``bench.run`` torch is already loaded); the table is then not written.
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
    p.add_argument("--rounds", type=int, default=1, help="whole-sweep repeats (median over rounds)")
    p.add_argument("--mkl-avx2", action="store_true", help="cap MKL/oneDNN at AVX2 (set before torch loads)")
    p.add_argument("--no-table", action="store_true", help="do not rewrite lth_kernels/ops/cpu_sparse_table.json")
    p.add_argument("--quick", action="store_true", help="3 shapes, for a smoke run")
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
    """(median, min) seconds per callable, interleaved. On a shared machine preemption only adds time, so the
    minimum is the steadier estimate of what the code costs; the median is what a caller sees."""
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
    if args.mkl_avx2:
        os.environ["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
        os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
        os.environ["DNNL_MAX_CPU_ISA"] = "AVX2"
    sys.path[:0] = [ROOT, os.path.dirname(os.path.abspath(__file__))]
    import warnings

    import torch
    import torch.nn.functional as F

    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")

    from bench.common import atomic_write_text, env_info, write_results
    from lth_kernels.ops import _registry
    from lth_kernels.ops.cpu_sparse import TABLE_PATH, SparseWeight, cpu_sparse_linear

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    live, why = _registry.ops()["cpu_sparse_linear"].status("cpu", "cpu")
    if not live:
        sys.exit(f"cpu_sparse: the compiled kernel is not available ({why}); build with "
                 "LTH_KERNELS_CUDA=0 python setup.py build_ext --inplace")
    shapes = SHAPES[:1] + SHAPES[3:4] + SHAPES[6:7] if args.quick else SHAPES
    machine = {**cpu_model(), "torch_threads": args.threads, "kernel_isa": torch.ops.lth_kernels_C.cpu_sparse_isa(),
               "mkl_isa_cap": "AVX2" if args.mkl_avx2 else "none", "mkl": torch.backends.mkl.is_available()}
    env = {**env_info("cpu"), "device": "cpu", "cpu": machine["model"], "threads": args.threads,
           "mkl_cap": machine["mkl_isa_cap"], "kernel_isa": machine["kernel_isa"], "rounds": args.rounds,
           "reps": args.reps}
    print(json.dumps(env))
    cells = {}
    for rnd in range(args.rounds):
        for name, k, n in shapes:
            for s in SPARSITIES:
                weight = torch.randn(n, k)
                mask = torch.rand(n, k) >= s
                weight *= mask
                bias = torch.randn(n)
                sw = SparseWeight.from_dense(weight, mask)
                w_csr = weight.to_sparse_csr()
                for b in BATCHES:
                    x = torch.randn(b, k)
                    y = cpu_sparse_linear(x, sw, bias)
                    torch.testing.assert_close(y, F.linear(x, weight, bias), atol=1e-3, rtol=1e-3)
                    t = measure({"dense": lambda x=x, w=weight, c=bias: F.linear(x, w, c),
                                 "torch_csr": lambda x=x, w=w_csr, c=bias: torch.addmm(c.unsqueeze(1), w, x.t()).t(),
                                 "cpu_sparse": lambda x=x, w=sw, c=bias: cpu_sparse_linear(x, w, c)}, args.reps)
                    cells.setdefault((name, k, n, s, b), []).append(t)
            print(f"round {rnd + 1}/{args.rounds}: {name} done", flush=True)
    rows = []
    for (name, k, n, s, b), ts in cells.items():
        t = {p: statistics.median(x[p][0] for x in ts) for p in ts[0]}
        m = {p: min(x[p][1] for x in ts) for p in ts[0]}
        useful = 2 * b * k * n * (1 - s)
        rows.append({"shape": name, "K": k, "N": n, "batch": b, "sparsity": s,
                     "dense_us": t["dense"] * 1e6, "torch_csr_us": t["torch_csr"] * 1e6,
                     "cpu_sparse_us": t["cpu_sparse"] * 1e6, "gflops_useful": useful / t["cpu_sparse"] / 1e9,
                     "dense_gflops": 2 * b * k * n / t["dense"] / 1e9,
                     "x_vs_dense": t["dense"] / t["cpu_sparse"], "x_vs_torch_csr": t["torch_csr"] / t["cpu_sparse"],
                     "min_x_vs_dense": m["dense"] / m["cpu_sparse"],
                     "min_x_vs_torch_csr": m["torch_csr"] / m["cpu_sparse"],
                     "min_gflops_useful": useful / m["cpu_sparse"] / 1e9})
    columns = ["shape", "K", "N", "batch", "sparsity", "dense_us", "torch_csr_us", "cpu_sparse_us", "gflops_useful",
               "dense_gflops", "x_vs_dense", "x_vs_torch_csr", "min_x_vs_dense", "min_x_vs_torch_csr",
               "min_gflops_useful"]
    suffix = "cpu_sparse" + ("-quick" if args.quick else "") + ("-mklavx2" if args.mkl_avx2 else "")
    suffix += f"-t{args.threads}" if args.threads != 2 else ""
    print(f"wrote {write_results(suffix, rows, env, columns)} (+ .md)")
    for r in rows:
        if r["sparsity"] in (0.9, 0.99):
            print(f"{r['shape']:>20} B={r['batch']:<3} s={r['sparsity']:.2f}  x dense {r['x_vs_dense']:6.2f} "
                  f"(min {r['min_x_vs_dense']:6.2f})  x torch_csr {r['x_vs_torch_csr']:6.2f} "
                  f"(min {r['min_x_vs_torch_csr']:5.2f})  {r['gflops_useful']:6.1f} GFLOP/s")
    if args.mkl_avx2 or args.no_table or args.quick:
        return 0
    entries = []
    for name, k, n in shapes:
        for b in BATCHES:
            # From the minima: steadier than medians on a shared machine (see measure).
            pts = [(r["sparsity"], r["min_x_vs_dense"]) for r in rows if r["shape"] == name and r["batch"] == b]
            entries.append({"shape": name, "batch": b, "in_features": k, "out_features": n,
                            "crossover": crossover_of(pts)})
    table = {"machine": machine, "torch": torch.__version__, "commit": env["commit"], "date": env["date"],
             "method": "crossover sparsity above which cpu_sparse_linear beats dense F.linear fp32 "
                       f"(min of {args.reps} interleaved reps x {args.rounds} rounds, {args.threads} threads)",
             "entries": entries}
    atomic_write_text(TABLE_PATH, json.dumps(table, indent=1) + "\n")
    print(f"wrote {TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
