"""Masked linear (Triton, design A1) vs dense cuBLAS, F.linear(x, W*M) and torch CSR (cuSPARSE): fwd and fwd+bwd.

    python bench/masked_matmul.py                      # ViT-B, DeiT-S, ResNet-50 1x1 shapes, bf16 -> bench/results/
    python bench/masked_matmul.py --quick --out-dir OUT   # batch 64 ViT-B only, three sparsities
    python bench/masked_matmul.py --smoke              # CPU: tiny shape through the Triton interpreter
    python bench/masked_matmul.py --table PATH         # write the dispatch table elsewhere (or from a --quick run)

Per row: median ms per call (CUDA events over back-to-back calls, >= 20 interleaved repetitions after warm-up) of
each provider (ours_cold_ms: the first call of ours, compile and autotuning included), TFLOP/s at the
dense FLOP count (2MNK per GEMM: 1 GEMM forward, 3 for fwd+bwd), % of the device's bf16 roof measured in the same
run (an 8192^3 cuBLAS matmul), ratios against dense and against F.linear(x, W*M) (what users run today: the
masking pass in forward and, through autograd, on dW), and the roofline cap of the kernel reference, section 1.
"ours" is the Triton kernel on the MaskedLinear contract (weight stored with zeros, ``weight_is_masked=True``);
"ours_mask" applies the mask in the kernel to an unmasked weight; "library" is the library path on the same
contract (torch's GEMM on the weight as stored, dW masked in place); "auto" is what MaskedLinear runs by default
(the dispatch's per-call choice, named in auto_backend). occupied is the mask's ``MaskMeta.occupied_fraction`` at the
kernels' tile, the statistic the dispatch reads. Metadata (bits, occupancy, tile lists) is built once per mask, as in
training; its build time is reported as meta_ms.

A full run (not ``--quick``, ``--no-write`` or ``--no-table``) also regenerates the dispatch's crossover table
``lth_kernels/ops/masked_matmul_table.json`` from its fwd+bwd rows (``--table [PATH]``: write it, there, from any run):
per shape, the skipped-tile fraction (1 - occupied) from which "ours" beats "library" at every more-skipping mask
measured (``crossover_of`` of bench/cpu_sparse.py, on library_ms / ours_ms); entries of other dtypes already in the
table are kept.
"""

from __future__ import annotations

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# (model, layer, tokens M, in K, out N)
VIT = [("qkv", 768, 2304), ("proj", 768, 768), ("fc1", 768, 3072), ("fc2", 3072, 768)]
DEIT_S = [("qkv", 384, 1152), ("proj", 384, 384), ("fc1", 384, 1536), ("fc2", 1536, 384)]
SHAPES = ([("vit_b_bs64", layer, 64 * 197, k, n) for layer, k, n in VIT]
          + [("vit_b_bs256", layer, 256 * 197, k, n) for layer, k, n in VIT]
          + [("deit_s_bs256", layer, 256 * 197, k, n) for layer, k, n in DEIT_S]
          + [("resnet50_bs64", layer, 64 * hw * hw, k, n)  # 1x1 convs as GEMMs (M = batch x H x W)
             for layer, hw, k, n in [("l1_conv3", 56, 64, 256), ("l2_conv1", 28, 512, 128), ("l3_conv1", 14, 1024, 256),
                                     ("l4_conv3", 7, 512, 2048)]])
SPARSITIES = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
COLUMNS = ["model", "layer", "M", "K", "N", "pattern", "sparsity", "occupied", "mode", "dense_ms", "masked_dense_ms",
           "library_ms", "auto_ms", "auto_backend", "ours_ms", "ours_mask_ms", "csr_ms", "meta_ms", "ours_cold_ms",
           "ours_tflops", "ours_pct_roof", "vs_dense", "vs_masked_dense", "vs_library", "speedup_cap"]


def _mask(torch, pattern: str, sparsity: float, n: int, k: int, device):
    gen = torch.Generator(device=device).manual_seed(0)
    if pattern == "block64":
        blocks = torch.rand(-(-n // 64), -(-k // 64), device=device, generator=gen) >= sparsity
        return blocks.repeat_interleave(64, 0)[:n].repeat_interleave(64, 1)[:, :k].contiguous()
    return torch.rand(n, k, device=device, generator=gen) >= sparsity


def _measure_roof(torch, time_interleaved, device, dtype) -> float | None:
    if device.type != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=dtype)
    b = torch.randn(8192, 8192, device=device, dtype=dtype)
    ms = time_interleaved({"mm": lambda: a @ b}, device, reps=20, warmup=5)["mm"]
    return 2 * 8192**3 / (ms * 1e-3)


def main(argv=None) -> int:
    from bench._cli import finish, parser, start

    p = parser(__doc__, smoke=True)
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--sparsities", type=float, nargs="+", default=SPARSITIES)
    p.add_argument("--patterns", nargs="+", choices=["unstructured", "block64"], default=["unstructured", "block64"])
    p.add_argument("--reps", type=int, default=30)
    p.add_argument("--table", nargs="?", const="", default=None, metavar="PATH",
                   help="write the dispatch crossover table from this run (default path: "
                        "lth_kernels/ops/masked_matmul_table.json)")
    p.add_argument("--no-table", action="store_true", help="do not rewrite the dispatch table after a full run")
    args = p.parse_args(argv)  # --quick: ViT-B batch 64 shapes, sparsities 0 / 0.9 / 0.99
    if not start(args, "masked_matmul"):
        return 0
    import torch
    import torch.nn.functional as F

    from bench.common import env_info, gemm_cap, percent, ratio, show, tflops, time_interleaved
    from lth_kernels.ops import _mask_cache, _masked_matmul_dispatch, _masked_matmul_triton, masked_matmul

    masked_linear, MaskMeta = masked_matmul.masked_linear, _mask_cache.MaskMeta

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = torch.float32 if args.smoke else getattr(torch, DTYPES[args.dtype])
    env = env_info(device)
    roof = _measure_roof(torch, time_interleaved, device, dtype)
    env["measured_roof_tflops"] = None if roof is None else round(roof / 1e12, 1)
    shapes = SHAPES[:4] if args.quick else SHAPES
    sparsities = [0.0, 0.9, 0.99] if args.quick else args.sparsities
    if args.smoke:
        shapes, sparsities = [("smoke", "tiny", 64, 96, 64)], [0.5]
    reps, warmup = (2, 1) if args.smoke else (max(args.reps, 20), 10)
    print(env)

    rows = []
    for model, layer, M, K, N in shapes:
        x = torch.randn(M, K, device=device, dtype=dtype)
        w = torch.randn(N, K, device=device, dtype=dtype) / K**0.5
        b = torch.randn(N, device=device, dtype=dtype)
        gy = torch.randn(M, N, device=device, dtype=dtype)
        for pattern in args.patterns:
            for s in sparsities:
                m = _mask(torch, pattern, s, N, K, device)
                mf = m.to(dtype)
                wm = torch.where(m, w, 0)
                density = float(m.float().mean())
                occupied = _masked_matmul_triton.mask_meta(m).occupied_fraction
                auto_backend = _masked_matmul_dispatch.choose(m, M, dtype)
                meta_ms = time_interleaved({"meta": lambda: MaskMeta.from_mask(m, (64, 64))},  # noqa: B023
                                           device, reps=reps, warmup=1)["meta"]
                fwd = {"dense": lambda: F.linear(x, w, b),  # noqa: B023
                       "masked_dense": lambda: F.linear(x, w * mf, b),  # noqa: B023
                       "library": lambda: masked_linear(x, wm, m, b, backend="reference",  # noqa: B023
                                                        weight_is_masked=True),  # noqa: B023
                       "auto": lambda: masked_linear(x, wm, m, b, weight_is_masked=True),  # noqa: B023
                       "ours": lambda: masked_linear(x, wm, m, b, backend="triton", weight_is_masked=True),  # noqa: B023
                       "ours_mask": lambda: masked_linear(x, w, m, b, backend="triton")}  # noqa: B023
                if device.type == "cuda":
                    try:
                        csr = wm.to_sparse_csr()
                        fwd["csr"] = lambda: torch.addmm(b[:, None], csr, x.t()).t()  # noqa: B023
                    except (RuntimeError, TypeError) as e:
                        print(f"  csr: unavailable ({str(e).splitlines()[0][:120]})")
                xg, wg, wmg, bg = (t.clone().requires_grad_() for t in (x, w, wm, b))

                def fb(fn, leaves):
                    def run():
                        for t in leaves:
                            t.grad = None
                        fn().backward(gy)  # noqa: B023
                    return run

                train = {"dense": fb(lambda: F.linear(xg, wg, bg), (xg, wg, bg)),  # noqa: B023
                         "masked_dense": fb(lambda: F.linear(xg, wg * mf, bg), (xg, wg, bg)),  # noqa: B023
                         "library": fb(lambda: masked_linear(xg, wmg, m, bg, backend="reference",  # noqa: B023
                                                             weight_is_masked=True), (xg, wmg, bg)),  # noqa: B023
                         "auto": fb(lambda: masked_linear(xg, wmg, m, bg, weight_is_masked=True),  # noqa: B023
                                    (xg, wmg, bg)),  # noqa: B023
                         "ours": fb(lambda: masked_linear(xg, wmg, m, bg, backend="triton",  # noqa: B023
                                                          weight_is_masked=True), (xg, wmg, bg)),  # noqa: B023
                         "ours_mask": fb(lambda: masked_linear(xg, wg, m, bg, backend="triton"),  # noqa: B023
                                         (xg, wg, bg))}  # noqa: B023
                for mode, fns, gemms in (("fwd", fwd, 1), ("fwd+bwd", train, 3)):
                    cold = {}
                    t = time_interleaved(fns, device, reps=reps, warmup=warmup, cold=cold)
                    ours_tflops = tflops(2.0 * M * N * K * gemms, t["ours"])
                    row = {"model": model, "layer": layer, "M": M, "K": K, "N": N, "pattern": pattern,
                           "sparsity": round(1 - density, 4), "occupied": round(occupied, 4), "mode": mode,
                           "dense_ms": t["dense"], "masked_dense_ms": t["masked_dense"], "library_ms": t["library"],
                           "auto_ms": t["auto"], "auto_backend": auto_backend, "ours_ms": t["ours"],
                           "ours_mask_ms": t["ours_mask"], "csr_ms": t.get("csr"), "meta_ms": meta_ms,
                           "ours_cold_ms": cold.get("ours"), "ours_tflops": ours_tflops,
                           "ours_pct_roof": percent(ours_tflops and ours_tflops * 1e12, roof),
                           "vs_dense": ratio(t["dense"], t["ours"]),
                           "vs_masked_dense": ratio(t["masked_dense"], t["ours"]),
                           "vs_library": ratio(t["library"], t["ours"]),
                           "speedup_cap": gemm_cap(M, N, K, density, x.element_size(), env["device"])}
                    rows.append(show(row))
    finish(args, "masked_matmul", rows, env, COLUMNS)
    if args.table is not None or not (args.quick or args.smoke or args.no_write or args.no_table):
        path = args.table or _masked_matmul_dispatch.TABLE_PATH
        write_table(path, rows, env, str(dtype).removeprefix("torch."), _masked_matmul_dispatch.DEFAULT_CROSSOVER)
        print("wrote", path)
    return 0


def write_table(path: str, rows: list[dict], env: dict, dtype: str, default_crossover: float) -> dict:
    """The dispatch table from the fwd+bwd rows of one run (see the module doc), written atomically."""
    from bench.common import atomic_write_text
    from bench.cpu_sparse import crossover_of

    points: dict[tuple, list] = {}
    for r in rows:
        if r["mode"] == "fwd+bwd" and r["ours_ms"] and r["library_ms"]:
            key = (f"{r['model']}.{r['layer']}", r["M"], r["K"], r["N"])
            points.setdefault(key, []).append((round(1 - r["occupied"], 4), r["library_ms"] / r["ours_ms"]))
    entries = [{"shape": shape, "dtype": dtype, "batch": m, "in_features": k, "out_features": n,
                "crossover": crossover_of(pts)} for (shape, m, k, n), pts in points.items()]
    try:
        with open(path) as f:
            kept = [e for e in json.load(f).get("entries", []) if e.get("dtype") != dtype]
    except (FileNotFoundError, ValueError):
        kept = []
    table = {"machine": {key: env.get(key) for key in ("device", "capability", "driver")},
             "torch": env.get("torch"), "triton": env.get("triton"), "commit": env.get("commit"),
             "date": env.get("date"),
             "method": "per shape and dtype: the skipped-tile fraction (1 - MaskMeta.occupied_fraction) from which the "
                       "Triton masked matmul beats the library path (torch GEMM on the weight as stored) in fwd+bwd at "
                       "every more-skipping mask measured (median of interleaved CUDA-event timings); batch = tokens",
             "default_crossover": default_crossover, "entries": kept + entries}
    atomic_write_text(path, json.dumps(table, indent=1) + "\n")
    return table


if __name__ == "__main__":
    sys.exit(main())
