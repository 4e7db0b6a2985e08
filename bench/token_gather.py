"""Token gather/scatter vs torch.gather (expanded index), flattened index_select and x[idx], fwd and fwd+bwd.

Usage: python bench/token_gather.py [--quick] [--out-dir DIR]   (needs CUDA; writes
<date>-<device>-token_gather.* under bench/results/ or DIR; --quick: bf16, two shapes, keep 0.7)
"""

from __future__ import annotations

import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._cli import finish, parser, start  # noqa: E402
from bench.common import copy_bandwidth_gbs, cuda_time, env_info  # noqa: E402


def baselines(x, index):
    b, n, c = x.shape
    k = index.shape[1]
    idx64 = index.long()
    flat = (idx64 + torch.arange(b, device=x.device)[:, None] * n).flatten()
    rows = torch.arange(b, device=x.device)[:, None]
    return {
        "torch.gather": lambda t: torch.gather(t, 1, idx64.unsqueeze(-1).expand(-1, -1, c)),
        "index_select": lambda t: t.reshape(b * n, c).index_select(0, flat).view(b, k, c),
        "x[idx]": lambda t: t[rows, idx64],
    }


def bench_shape(b, n, c, k, dtype, roof) -> list[dict]:
    from lth_kernels.ops import _registry
    from lth_kernels.ops.token_gather import gather_tokens, scatter_tokens

    rows = []
    x = torch.randn(b, n, c, device="cuda", dtype=dtype, requires_grad=True)
    index = torch.rand(b, n, device="cuda").argsort(1)[:, :k].int()
    grad = torch.randn(b, k, c, device="cuda", dtype=dtype)
    tag = dict(dtype=str(dtype).split(".")[1], B=b, N=n, C=c, K=k)
    moved = 2 * b * k * c * x.element_size()  # read K rows + write K rows
    cands = dict(baselines(x, index))
    for backend in ("triton", "cuda"):
        if _registry.ops()["gather_tokens"].status(backend, "cuda")[0]:
            cands[f"lth:{backend}"] = lambda t, be=backend: gather_tokens(t, index, checked=False, backend=be)
    for name, fn in cands.items():
        fwd = cuda_time(lambda fn=fn: fn(x.detach()))
        fb = cuda_time(lambda fn=fn: torch.autograd.grad(fn(x), x, grad))
        rows.append(dict(op="gather", impl=name, **tag, fwd_ms=fwd, fwd_bwd_ms=fb, fwd_GBs=moved / fwd / 1e6,
                         fwd_roof_frac=moved / fwd / 1e6 / roof))
    src = torch.randn(b, k, c, device="cuda", dtype=dtype)
    base = x.detach()
    rows_b = torch.arange(b, device="cuda")[:, None]
    restore = {"clone+index_put": lambda: base.clone().index_put_((rows_b, index.long()), src)}
    for backend in ("triton", "cuda"):
        if _registry.ops()["place_tokens"].status(backend, "cuda")[0]:
            restore[f"lth:{backend}"] = lambda be=backend: scatter_tokens(base, index, src, checked=False, backend=be)
    moved_s = 2 * b * n * c * x.element_size()
    for name, fn in restore.items():
        ms = cuda_time(fn)
        rows.append(dict(op="scatter", impl=name, **tag, fwd_ms=ms, fwd_GBs=moved_s / ms / 1e6,
                         fwd_roof_frac=moved_s / ms / 1e6 / roof))
    return rows


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    if not start(args, "token_gather"):
        return 0
    roof = copy_bandwidth_gbs()
    rows = []
    shapes = ((256, 197, 384), (256, 197, 768), (64, 577, 1024), (256, 197, 7))
    for dtype in (torch.bfloat16,) if args.quick else (torch.bfloat16, torch.float16, torch.float32):
        for b, n, c in shapes[:2] if args.quick else shapes:
            for keep in (0.7,) if args.quick else (0.5, 0.7, 0.9):
                rows += bench_shape(b, n, c, int(n * keep), dtype, roof)
    env = env_info()
    env["copy_GBs"] = roof
    finish(args, "token_gather", rows, env)
    return 0


if __name__ == "__main__":
    sys.exit(main())
