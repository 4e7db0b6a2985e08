"""The calls the static GPU proof (``bench/gpu_proof.py``) makes: every Triton launcher of ``lth_kernels.ops`` at the
benchmark shapes, on CPU tensors, under a compile-only target (so each call compiles every config its launcher or
autotuner may pick there, after pruning, and launches nothing).

Shapes: the layers of ``bench/masked_matmul.py`` (ViT-B and DeiT-S blocks at batch 64/256, ResNet-50 1x1 convs),
ViT attention (N = 197, d = 64 and 128, block masks 16-128), block-sparse blocks 16-128. Dtypes: bf16, fp16, fp32
with TF32 and without. Kernel variants differ by constexprs and by the alignment Triton sees (sizes divisible by
16 or not), not by the sizes themselves, so many shapes compile to the same variant; the proof counts each once.

Every dtype runs the training path of each op at every config (masked linear: forward with bias and dX on a
weight stored masked, dW; block-sparse: forward with bias, dX, dW); bf16 also runs the other flag variants
(mask applied in the kernel, no bias, score gradients), which add or drop load and epilogue work around the same
main loop, and all four block sizes, where the other dtypes run the extremes 16 and 128. This keeps a fresh CI
run near its time budget; every kernel and every config is still compiled at every dtype it accepts.
"""

from __future__ import annotations

import contextlib

import torch

from bench.masked_matmul import SHAPES as MM_SHAPES

DTYPES = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False), "fp32_tf32": (torch.float32, True),
          "fp32": (torch.float32, False)}
ATTN_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # attention fp32 is exact
BLOCKS = (16, 32, 64, 128)
ATTN = (8, 12, 197)  # batch, heads, tokens (ViT-B/16 at 224 px); d varies


@contextlib.contextmanager
def tf32(allowed: bool):
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def _mask(n: int, k: int, density: float = 0.5) -> torch.Tensor:
    return torch.rand(n, k, generator=torch.Generator().manual_seed(0)) < density


def _layer_shapes():
    # one (M, K, N) per distinct layer, the largest batch (the split count of dW depends on M)
    seen = {}
    for model, layer, m, k, n in MM_SHAPES:
        seen[(model.split("_bs")[0], layer, k, n, m)] = (m, k, n)
    return sorted(set(seen.values()))


def masked_matmul(dtype_name: str):
    from lth_kernels.ops import _masked_matmul_triton as mm

    dtype, allow = DTYPES[dtype_name]
    full = dtype_name == "bf16"
    with tf32(allow):
        for m, k, n in _layer_shapes():
            x, w, gy = torch.empty(m, k, dtype=dtype), torch.empty(n, k, dtype=dtype), torch.empty(m, n, dtype=dtype)
            bias = torch.empty(n, dtype=dtype)
            meta = mm.mask_meta(_mask(n, k))
            for apply_mask in (False, True) if full else (False,):  # MaskedLinear stores W masked
                mm.masked_matmul_forward(x, w, meta, bias, apply_mask=apply_mask)
                mm.masked_matmul_forward(gy, w, meta, apply_mask=apply_mask, grad_input=True)
            if full:
                mm.masked_matmul_forward(x, w, meta, None)
            mm.masked_matmul_grad_weight(gy, x, bits=meta.bits)
            if full:
                mm.masked_matmul_grad_weight(gy, x, weight=w)
                mm.masked_matmul_grad_weight(gy, x, bits=meta.bits, weight=w)


def block_sparse(dtype_name: str):
    from lth_kernels.ops import block_sparse as bs

    dtype, allow = DTYPES[dtype_name]
    m, k, n = 64 * 197, 768, 3072  # ViT-B fc1 at batch 64: every block size divides both dims
    x, w, gy = torch.empty(m, k, dtype=dtype), torch.empty(n, k, dtype=dtype), torch.empty(m, n, dtype=dtype)
    with tf32(allow):
        for b in BLOCKS if dtype_name == "bf16" else (BLOCKS[0], BLOCKS[-1]):
            gen = torch.Generator().manual_seed(0)
            meta = bs.BlockSparseLayout.from_block_map(torch.rand(n // b, k // b, generator=gen) < 0.3, (n, k),
                                                       (b, b)).meta()
            bs.dds_triton(x, w, torch.empty(n, dtype=dtype), meta, b, b, True)  # Y = X W^T + bias
            if dtype_name == "bf16":
                bs.dds_triton(x, w, None, meta, b, b, True)
            bs.dds_triton(gy, w, None, meta, b, b, False)  # dX = dY W
            bs.sdd_triton(gy.t(), x, meta, b, b)  # dW = dY^T X at the kept blocks


def attention(dtype_name: str, head_dim: int, blocks=BLOCKS):
    from lth_kernels.ops import _sparse_attention_triton as sat
    from lth_kernels.ops._sparse_attention_mask import local_window_block_mask

    dtype = ATTN_DTYPES[dtype_name]
    b, h, n = ATTN
    q, k, v = (torch.empty(b, h, n, head_dim, dtype=dtype) for _ in range(3))
    scale = head_dim ** -0.5

    def run(q, k, v, keep=None, cu=None, max_len=0, bm=None, compact=True):
        tensors, size = (bm.tensors(), bm.block_size) if bm is not None else ([], (0, 0))
        out, lse = sat.attention_forward(q, k, v, keep, cu, max_len, tensors, size, scale, compact)
        sat.attention_backward(torch.empty_like(out), q, k, v, out, lse, keep, cu, max_len, tensors, size, scale,
                               compact)

    run(q, k, v)  # dense
    for blk in blocks:
        run(q, k, v, bm=local_window_block_mask(n, 48, block=blk))
    if dtype_name == "bf16" and head_dim == 64:  # the other row layouts, at the default tiles
        keep = torch.arange(0, n, 2, dtype=torch.int32).repeat(b, 1)
        run(q, k, v, keep=keep)
        run(q, k, v, keep=keep, compact=False)
        packed = torch.empty(b * n, h, head_dim, dtype=dtype)
        run(packed, packed, packed, cu=torch.arange(0, b * n + 1, n, dtype=torch.int32), max_len=n)


def tokens(dtype_name: str):
    from lth_kernels.ops import token_gather as tg

    dtype = ATTN_DTYPES[dtype_name]
    for b, n, c, kept in ((64, 197, 768, 128), (256, 197, 384, 99)):  # ViT-B and DeiT-S token pruning
        x = torch.empty(b, n, c, dtype=dtype)
        index = torch.arange(kept, dtype=torch.int32).repeat(b, 1)
        small = torch.empty(b, kept, c, dtype=dtype)
        tg.gather_tokens_triton(x, index)
        inverse = tg.inverse_index(index, n)
        tg.place_tokens_triton(x, inverse, small, x)
        tg.place_tokens_triton(None, inverse, small, x)
        tg.place_tokens_triton(x, inverse, None, x)


def mask_kernels():
    from lth_kernels.ops import mask_meta

    for n, k in ((3072, 768), (768, 3072), (1000, 2048)):
        m = _mask(n, k)
        packed = mask_meta.pack_mask_triton(m)
        mask_meta.unpack_mask_triton(packed, k)
        for tile in (16, 64, 128, 100):
            mask_meta.tile_occupancy_triton(m, tile, tile)


def cases(pinned: bool = False) -> dict:
    """name -> callable; each call is one unit of work for a compile process. ``pinned`` (the CI tier: tuned
    kernels compile their pinned config only) also keeps attention to the extreme block sizes 16 and 128."""
    attn_blocks = (BLOCKS[0], BLOCKS[-1]) if pinned else BLOCKS
    out = {}
    for d in DTYPES:
        out[f"masked_matmul/{d}"] = lambda d=d: masked_matmul(d)
        out[f"block_sparse/{d}"] = lambda d=d: block_sparse(d)
    for d in ATTN_DTYPES:
        for hd in (64, 128):
            out[f"attention/{d}/d{hd}"] = lambda d=d, hd=hd: attention(d, hd, attn_blocks)
        out[f"tokens/{d}"] = lambda d=d: tokens(d)
    out["mask_meta"] = mask_kernels
    return out
