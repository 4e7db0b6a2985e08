"""2:4 semi-structured linear (cuSPARSELt through torch) vs dense cuBLAS: forward and forward+backward.

    python bench/semi_structured.py            # ViT-B + ResNet-50 shapes, bf16 and fp16, writes bench/results/
    python bench/semi_structured.py --no-write
    python bench/semi_structured.py --quick --out-dir OUT   # ViT-B fc1/fc2, bf16

Providers: dense ``F.linear``; raw ``to_sparse_semi_structured`` weight (compressed once, inference);
``semi_structured_linear`` with the measured dispatch (auto) and forced 2:4 (cusparselt), which in training
compresses the weight every step and runs the backward dense. Median of >= 20 interleaved CUDA-event timings.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from block_sparse import SHAPES  # noqa: E402

COLUMNS = ["model", "layer", "M", "K", "N", "dtype", "mode", "dense_ms", "cusparselt_raw_ms", "ours_auto_ms",
           "ours_2to4_ms", "speedup_raw", "speedup_auto", "speedup_2to4", "dense_tflops", "speedup_cap"]


def main(argv=None) -> int:
    from bench._cli import finish, parser, start

    p = parser(__doc__)
    p.add_argument("--dtypes", nargs="+", choices=["bf16", "fp16"], default=["bf16", "fp16"])
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args(argv)
    if not start(args, "semi_structured"):  # (sm80+; on CPU the op is the masked dense reference)
        return 0
    import torch
    import torch.nn.functional as F

    from bench.common import environment, gemm_cap, ratio, show, tflops, time_interleaved
    from lth_kernels.ops.semi_structured import mask_2to4, semi_structured_linear, sparse_supported

    env = environment("cuda")
    print(env)
    rows = []
    for dname in ["bf16"] if args.quick else args.dtypes:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[dname]
        for model, layer, M, K, N in SHAPES[2:4] if args.quick else SHAPES:
            x = torch.randn(M, K, device="cuda", dtype=dtype)
            w = torch.randn(N, K, device="cuda", dtype=dtype) / K**0.5
            mask = mask_2to4(w)
            wm = w * mask
            ok, why = sparse_supported(x, w)
            if not ok:
                print(f"{model}.{layer} {dname}: 2:4 not supported ({why}); skipped")
                continue
            ws = torch.sparse.to_sparse_semi_structured(wm)
            fwd = {"dense": lambda: F.linear(x, w),  # noqa: B023
                   "cusparselt_raw": lambda: F.linear(x, ws),  # noqa: B023
                   "ours_auto": lambda: semi_structured_linear(x, wm, mask),  # noqa: B023
                   "ours_2to4": lambda: semi_structured_linear(x, wm, mask, backend="cusparselt")}  # noqa: B023
            xg, wg = x.clone().requires_grad_(), wm.clone().requires_grad_()
            gy = torch.randn(M, N, device="cuda", dtype=dtype)
            train = {"dense": lambda: F.linear(xg, wg).backward(gy),  # noqa: B023
                     "ours_auto": lambda: semi_structured_linear(xg, wg, mask).backward(gy),  # noqa: B023
                     "ours_2to4": lambda: semi_structured_linear(xg, wg, mask,  # noqa: B023
                                                                 backend="cusparselt").backward(gy)}  # noqa: B023
            for mode, fns, flops_per in (("fwd", fwd, 1), ("fwd+bwd", train, 3)):
                with torch.no_grad() if mode == "fwd" else torch.enable_grad():
                    t = time_interleaved(fns, "cuda", reps=args.reps)

                row = {"model": model, "layer": layer, "M": M, "K": K, "N": N, "dtype": dname, "mode": mode,
                       "dense_ms": t["dense"], "cusparselt_raw_ms": t.get("cusparselt_raw"),
                       "ours_auto_ms": t["ours_auto"], "ours_2to4_ms": t["ours_2to4"],
                       "speedup_raw": ratio(t["dense"], t.get("cusparselt_raw")),
                       "speedup_auto": ratio(t["dense"], t["ours_auto"]),
                       "speedup_2to4": ratio(t["dense"], t["ours_2to4"]),
                       "dense_tflops": tflops(2.0 * M * N * K * flops_per, t["dense"]),
                       "speedup_cap": gemm_cap(M, N, K, 0.5, x.element_size(), env["device"])}
                rows.append(show(row))
    finish(args, "semi_structured", rows, env, COLUMNS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
