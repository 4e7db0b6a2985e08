"""End to end: a DeiT-S training step on a data-level ticket (keep 0.5/0.7/0.9) vs dense DeiT-S.

Both use SDPA attention; the ticket model is ``ticketize_vit`` (kept patches embedded, K+1 tokens).
Usage: python bench/ticket_vit.py [--quick] [--out-dir DIR]   (needs CUDA; writes
<date>-<device>-ticket_vit.* under bench/results/ or DIR; --quick: batch 64, keep 0.5 vs dense)
"""

from __future__ import annotations

import copy
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench._cli import finish, parser, start  # noqa: E402
from bench.common import cuda_time, env_info  # noqa: E402


def main(argv=None) -> int:
    args = parser(__doc__).parse_args(argv)
    if not start(args, "ticket_vit"):
        return 0
    import timm

    from lth_kernels.nn.sparse_attention import ticketize_vit

    batch = 64 if args.quick else 128
    dense = timm.create_model("deit_small_patch16_224", pretrained=False).cuda()
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    labels = torch.randint(0, 1000, (batch,), device="cuda")
    rows = []
    for keep in (None, 0.5) if args.quick else (None, 0.5, 0.7, 0.9):
        model = dense if keep is None else ticketize_vit(copy.deepcopy(dense))
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        index = None if keep is None else torch.rand(batch, 196, device="cuda").argsort(1)[:, : int(196 * keep)]
        args = (images,) if keep is None else (images, index.int())

        def step(model=model, opt=opt, args=args):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(model(*args), labels)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        torch.cuda.reset_peak_memory_stats()
        ms = cuda_time(step, warmup=5, reps=20)
        rows.append(dict(model="deit_small", keep=keep or 1.0, tokens=1 + (196 if keep is None else int(196 * keep)),
                         batch=batch, step_ms=ms, images_per_s=batch / ms * 1e3,
                         peak_mem_GiB=torch.cuda.max_memory_allocated() / 2**30))
    base = rows[0]["images_per_s"]
    for r in rows:
        r["speedup_vs_dense"] = r["images_per_s"] / base
    finish(args, "ticket_vit", rows, env_info())
    return 0


if __name__ == "__main__":
    sys.exit(main())
