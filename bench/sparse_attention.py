"""sparse_attention vs SDPA on the full sequence, SDPA on pre-gathered tokens and FlexAttention (same mask).

Usage: python bench/sparse_attention.py [--quick] [--out-dir DIR]   (needs CUDA; writes
<date>-<device>-sparse_attention.* under bench/results/ or DIR; --quick: ViT-B at batch 64 only)
"""

from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._cli import finish, parser, start  # noqa: E402
from bench.common import cuda_time, env_info  # noqa: E402


def _fb(fn, leaves):
    def run():
        out = fn(*leaves)
        torch.autograd.grad(out, leaves, torch.ones_like(out))
    return run


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    if not start(args, "sparse_attention"):
        return 0
    from lth_kernels.ops.sparse_attention import local_window_block_mask, sparse_attention, swin_window_block_mask

    try:
        from torch.nn.attention.flex_attention import flex_attention
        flex = torch.compile(flex_attention)
    except ImportError:
        flex = None
    rows = []
    dt = torch.bfloat16
    shapes = ((256, 6, 197, 64), (64, 12, 197, 64), (16, 16, 577, 64), (4, 16, 1025, 64))
    for b, h, n, d in shapes[1:2] if args.quick else shapes:
        qkv = [torch.randn(b, h, n, d, device="cuda", dtype=dt, requires_grad=True) for _ in range(3)]
        flops = 4 * b * h * n * n * d
        cases = {"sdpa_full": lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                 "lth_dense": lambda q, k, v: sparse_attention(q, k, v)}
        for keep in (0.5, 0.7, 0.9):
            kk = int(n * keep)
            index = torch.rand(b, n, device="cuda").argsort(1)[:, :kk].int()
            rows_idx = index.long()[:, None, :, None].expand(-1, h, -1, d)
            cases[f"sdpa_pregathered_k{keep}"] = (
                lambda q, k, v, ri=rows_idx: F.scaled_dot_product_attention(*(t.gather(2, ri) for t in (q, k, v))))
            cases[f"lth_keep_k{keep}"] = (
                lambda q, k, v, ix=index: sparse_attention(q, k, v, keep_index=ix, checked=False))
        masks = {"local": local_window_block_mask((14, 14), 3, block=64, prefix=1) if n == 197
                 else local_window_block_mask(n, 64, block=64)}
        if n == 197:
            masks["swin7_shift3"] = swin_window_block_mask((14, 14), 7, shift=3, block=64, prefix=1)
        for mname, bm in masks.items():
            bm = bm.to("cuda")
            cases[f"lth_block_{mname}"] = lambda q, k, v, bm=bm: sparse_attention(q, k, v, block_mask=bm)
            if flex is not None:
                fbm = bm.to_flex()
                cases[f"flex_block_{mname}"] = lambda q, k, v, fbm=fbm: flex(q, k, v, block_mask=fbm)
        rows += _run_cases(cases, qkv, dict(B=b, H=h, N=n, d=d), flops)
    finish(args, "sparse_attention", rows, env_info())
    return 0


def _run_cases(cases, qkv, tag, flops) -> list[dict]:
    rows = []
    for name, fn in cases.items():
        try:
            fwd = cuda_time(lambda fn=fn: fn(*(t.detach() for t in qkv)))
            fb = cuda_time(_fb(fn, qkv))
        except Exception as e:  # a baseline that cannot run here is reported, not fatal
            rows.append(dict(**tag, impl=name, error=f"{type(e).__name__}: {e}"[:120]))
            continue
        rows.append(dict(**tag, impl=name, fwd_ms=fwd, fwd_bwd_ms=fb, dense_equiv_fwd_TFLOPs=flops / fwd / 1e9))
    return rows


if __name__ == "__main__":
    sys.exit(main())
