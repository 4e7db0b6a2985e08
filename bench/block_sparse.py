"""Block-sparse linear vs dense cuBLAS, torch BSR, stk (b = 128, if installed): forward and forward+backward.

    python bench/block_sparse.py                       # ViT-B + ResNet-50 shapes, bf16, writes bench/results/
    python bench/block_sparse.py --blocks 64 --densities 0.1 --dtype fp16 --no-write
    python bench/block_sparse.py --quick --out-dir OUT   # ViT-B fc1/fc2, blocks 32/128, densities 0.1/0.5
    python bench/block_sparse.py --smoke               # CPU: tiny shape, reference vs Triton interpreter

Per row: median ms per call (CUDA events over back-to-back calls, >= 20 interleaved repetitions after warm-up;
ours_cold_ms: the first call, compile and autotuning included), useful TFLOP/s (the FLOPs of the
kept blocks only), % of cuBLAS per useful FLOP, speed-up vs dense and the roofline cap of section 1 of the
kernel reference (activations are streamed in full whatever the density).
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}
# (model, layer, tokens M, in K, out N): ViT-B/16 at batch 64 (64 * 197 tokens) and batch 1, ResNet-50 1x1 convs
# as GEMMs at batch 64 (M = 64 * H * W) and its classifier.
SHAPES = [
    ("vit_b", "qkv", 64 * 197, 768, 2304), ("vit_b", "proj", 64 * 197, 768, 768),
    ("vit_b", "fc1", 64 * 197, 768, 3072), ("vit_b", "fc2", 64 * 197, 3072, 768),
    ("vit_b_bs1", "fc1", 197, 768, 3072),
    ("resnet50", "l3_conv1x1", 64 * 196, 1024, 256), ("resnet50", "l4_conv1x1", 64 * 49, 512, 2048),
    ("resnet50", "fc", 64, 2048, 1000),
]
COLUMNS = ["model", "layer", "M", "K", "N", "block", "density", "mode", "dense_ms", "ours_ms", "masked_dense_ms",
           "torch_bsr_ms", "stk_ms", "ours_cold_ms", "useful_tflops", "pct_cublas_per_useful_flop", "speedup_vs_dense",
           "speedup_cap"]


def _baselines(F, stk, x, wm, b) -> dict:
    """torch BSR (forward only; dims multiple of the block) and stk (b = 128 only), when they can be built."""
    fns = {}
    n, k = wm.shape
    if n % b == 0 and k % b == 0:
        try:
            bsr = wm.to_sparse_bsr((b, b))
            fns["torch_bsr"] = lambda: F.linear(x, bsr)
        except (RuntimeError, TypeError) as e:
            print(f"  torch_bsr: unavailable ({e})")
        if stk is not None and b == 128:
            try:
                wt_sparse = stk.ops.to_sparse(wm.t().contiguous(), 128)
                fns["stk"] = lambda: stk.ops.dds(x, wt_sparse)
            except Exception as e:  # noqa: BLE001 - stk versions differ; a missing baseline is reported, not fatal
                print(f"  stk: unavailable ({type(e).__name__}: {e})")
    return fns


def main(argv=None) -> int:
    from bench._cli import finish, parser, start

    p = parser(__doc__, smoke=True)
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--densities", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.2621, 0.5])
    p.add_argument("--dtype", choices=DTYPES, default="bf16")
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    if not start(args, "block_sparse"):
        return 0
    import torch
    import torch.nn.functional as F

    from bench.common import environment, gemm_cap, percent, ratio, show, tflops, time_interleaved
    from lth_kernels.ops.block_sparse import BlockSparseLayout, block_sparse_linear

    device = torch.device("cpu" if args.smoke else "cuda")
    dtype = getattr(torch, DTYPES[args.dtype]) if not args.smoke else torch.float32
    env = environment(device)
    shapes = [("smoke", "tiny", 64, 128, 128)] if args.smoke else SHAPES[2:4] if args.quick else SHAPES
    blocks = [32, 64] if args.smoke else [32, 128] if args.quick else args.blocks
    densities = [0.25] if args.smoke else [0.1, 0.5] if args.quick else args.densities
    reps = 2 if args.smoke else args.reps
    backend = "triton"
    try:
        import stk
    except ImportError:
        stk = None
    print(f"{env}\nstk: {'found' if stk else 'not installed'}")

    rows = []
    for model, layer, M, K, N in shapes:
        x = torch.randn(M, K, device=device, dtype=dtype)
        w = torch.randn(N, K, device=device, dtype=dtype) / K**0.5
        gy = torch.randn(M, N, device=device, dtype=dtype)
        for b in blocks:
            for d in densities:
                gen = torch.Generator(device=device).manual_seed(0)
                bmap = torch.rand(-(-N // b), -(-K // b), device=device, generator=gen) < d
                lay = BlockSparseLayout.from_block_map(bmap, (N, K), (b, b))
                wm = w * lay.element_mask().to(dtype)
                kept = float(lay.element_mask().float().mean())
                fwd = {"dense": lambda: F.linear(x, w),  # noqa: B023
                       "ours": lambda: block_sparse_linear(x, wm, lay, backend=backend),  # noqa: B023
                       "masked_dense": lambda: F.linear(x, wm)}  # noqa: B023
                if device.type == "cuda" and dtype != torch.float32:
                    fwd.update(_baselines(F, stk, x, wm, b))
                xg, wg, wmg = (t.clone().requires_grad_() for t in (x, w, wm))

                def fb(fn):
                    def run():
                        fn().backward(gy)  # noqa: B023
                    return run

                train = {"dense": fb(lambda: F.linear(xg, wg)),  # noqa: B023
                         "ours": fb(lambda: block_sparse_linear(xg, wmg, lay, backend=backend)),  # noqa: B023
                         "masked_dense": fb(lambda: F.linear(xg, wmg * lay.element_mask()))}  # noqa: B023
                for mode, fns, flops_per in (("fwd", fwd, 1), ("fwd+bwd", train, 3)):
                    cold = {}
                    t = time_interleaved(fns, device, reps=reps, cold=cold)
                    dense_tflops = tflops(2.0 * M * N * K * flops_per, t["dense"])
                    ours_tflops = tflops(2.0 * M * N * K * kept * flops_per, t["ours"])  # useful FLOPs only
                    row = {"model": model, "layer": layer, "M": M, "K": K, "N": N, "block": b, "density": kept,
                           "mode": mode, "dense_ms": t["dense"], "ours_ms": t["ours"],
                           "masked_dense_ms": t.get("masked_dense"), "torch_bsr_ms": t.get("torch_bsr"),
                           "stk_ms": t.get("stk"), "ours_cold_ms": cold.get("ours"), "useful_tflops": ours_tflops,
                           "pct_cublas_per_useful_flop": percent(ours_tflops, dense_tflops),
                           "speedup_vs_dense": ratio(t["dense"], t["ours"]),
                           "speedup_cap": gemm_cap(M, N, K, kept, x.element_size(), env["device"])}
                    rows.append(show(row))
    finish(args, "block_sparse", rows, env, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
