"""Token gather and scatter for token-pruned ViTs (EViT keep/restore, data-level tickets).

``gather_tokens(x, index)``: x (B, N, C), index (B, K) -> (B, K, C) with ``out[b, k] = x[b, index[b, k]]``.
``scatter_tokens(base, index, src)``: a copy of ``base`` (B, N, C) whose rows ``index[b, k]`` are replaced
by ``src[b, k]`` (out of place).

The indices of one row are unique (tokens are kept, not duplicated), so both backwards are plain row
copies: no atomics, deterministic. Both directions run through one "place" kernel that walks the *output*
rows and reads ``inverse[b, n]`` (the slot k of token n, or -1): each output row is written exactly once,
so the gather backward needs no zero-fill followed by a scatter, and the restore needs no clone followed by
a scatter.

``checked=True`` (default) validates range and uniqueness with one device->host sync per call; the
check runs inside the registered op, so it also holds under ``torch.compile``. ``checked=False`` skips
it: out-of-range indices are then undefined behaviour (the CUDA and Triton kernels read out of bounds)
and duplicate indices make the backward keep one of the duplicates' gradients instead of their sum.
"""

from __future__ import annotations

import torch

from lth_kernels.ops import _registry
from lth_kernels.ops._triton import HAS_TRITON, launch, tl, triton

# --------------------------------------------------------------------------------------------- helpers


def inverse_index(index: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """(B, N) int32 map token -> its slot k in ``index`` (B, K), -1 where the token is not kept."""
    b, k = index.shape
    inv = torch.full((b, n_tokens), -1, dtype=torch.int32, device=index.device)
    if k:
        slots = torch.arange(k, dtype=torch.int32, device=index.device).expand(b, k)
        inv.scatter_(1, index.long(), slots)  # unique indices: plain writes, deterministic
    return inv


def check_index(index: torch.Tensor, n_tokens: int, name: str = "index") -> None:
    """Range and per-row uniqueness of a (B, K) index; one device->host sync."""
    if index.numel() == 0:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= n_tokens:
        bad = lo if lo < 0 else hi
        raise ValueError(f"{name}: values must lie in [0, {n_tokens}), got {bad}")
    srt = index.sort(dim=1).values
    dup = (srt[:, 1:] == srt[:, :-1]).any(dim=1)
    if bool(dup.any()):
        row = int(dup.nonzero()[0, 0])
        raise ValueError(f"{name}: indices of a row must be unique, row {row} repeats a value "
                         f"(pass checked=False only for indices known to be unique)")


# --------------------------------------------------------------------------------------------- reference


@_registry.register("gather_tokens", "reference")
def gather_tokens_reference(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    idx = index.long().unsqueeze(-1).expand(-1, -1, x.shape[-1])
    return torch.gather(x, 1, idx)


@_registry.register("place_tokens", "reference")
def place_tokens_reference(base: torch.Tensor | None, inverse: torch.Tensor, src: torch.Tensor | None,
                           like: torch.Tensor) -> torch.Tensor:
    """out[b, n] = src[b, inverse[b, n]] if inverse >= 0 else base[b, n]; a missing operand reads as 0."""
    b, n = inverse.shape
    c = like.shape[-1]
    kept = (inverse >= 0).unsqueeze(-1)
    out = base.clone() if base is not None else like.new_zeros(b, n, c)
    if src is not None and src.shape[1]:
        picked = torch.gather(src, 1, inverse.clamp(min=0).long().unsqueeze(-1).expand(-1, -1, c))
        out = torch.where(kept, picked, out)
    else:
        out = out.masked_fill(kept, 0)
    return out


# --------------------------------------------------------------------------------------------- compiled

_registry.register("gather_tokens", "cuda", needs="gather_tokens")(
    lambda x, index: torch.ops.lth_kernels_C.gather_tokens(x, index))
_registry.register("place_tokens", "cuda", needs="place_tokens")(
    lambda base, inverse, src, like: torch.ops.lth_kernels_C.place_tokens(base, inverse, src, like.shape[-1]))

# --------------------------------------------------------------------------------------------- triton

if HAS_TRITON:

    @triton.jit
    def _gather_tokens_kernel(x_ptr, idx_ptr, out_ptr, K, C, sxb, sxn, sxc, sib, sik,
                              BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
        # One program per (sample, chunk of BLOCK_K kept tokens); rows copied in BLOCK_C-wide strips.
        b = tl.program_id(0).to(tl.int64)
        ks = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
        kmask = ks < K
        rows = tl.load(idx_ptr + b * sib + ks * sik, mask=kmask, other=0).to(tl.int64)
        src = x_ptr + b * sxb + rows[:, None] * sxn
        dst = out_ptr + (b * K + ks[:, None].to(tl.int64)) * C
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)[None, :]
            m = kmask[:, None] & (cs < C)
            tl.store(dst + cs, tl.load(src + cs * sxc, mask=m), mask=m)

    @triton.jit
    def _place_tokens_kernel(base_ptr, inv_ptr, src_ptr, out_ptr, N, K, C, sbb, sbn, sbc, ssb, ssk, ssc,
                             HAS_BASE: tl.constexpr, HAS_SRC: tl.constexpr, BLOCK_N: tl.constexpr,
                             BLOCK_C: tl.constexpr):
        # One program per (sample, chunk of BLOCK_N output tokens): each output row is written once.
        b = tl.program_id(0).to(tl.int64)
        ns = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        nmask = ns < N
        slot = tl.load(inv_ptr + b * N + ns, mask=nmask, other=-1).to(tl.int64)
        kept = slot >= 0
        dst = out_ptr + (b * N + ns[:, None].to(tl.int64)) * C
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)[None, :]
            inside = nmask[:, None] & (cs < C)
            if HAS_SRC:
                val = tl.load(src_ptr + b * ssb + slot[:, None] * ssk + cs * ssc, mask=inside & kept[:, None],
                              other=0)
            else:
                val = tl.zeros((BLOCK_N, BLOCK_C), dtype=out_ptr.dtype.element_ty)
            if HAS_BASE:
                old = tl.load(base_ptr + b * sbb + ns[:, None] * sbn + cs * sbc, mask=inside & ~kept[:, None],
                              other=0)
                val = tl.where(kept[:, None], val, old)
            tl.store(dst + cs, val, mask=inside)

    def _blocks(c: int) -> tuple[int, int]:
        # ~4K elements per strip: wide rows copy in one pass, narrow rows take more tokens per program.
        block_c = min(triton.next_power_of_2(max(c, 1)), 1024)
        return max(1, min(64, 4096 // block_c)), block_c

    @_registry.register("gather_tokens", "triton")
    def gather_tokens_triton(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        b, _, c = x.shape
        k = index.shape[1]
        out = torch.empty(b, k, c, dtype=x.dtype, device=x.device)
        if out.numel():
            block_k, block_c = _blocks(c)
            launch(_gather_tokens_kernel, (b, triton.cdiv(k, block_k)),
                x, index, out, k, c, *x.stride(), *index.stride(), BLOCK_K=block_k, BLOCK_C=block_c)
        return out

    @_registry.register("place_tokens", "triton")
    def place_tokens_triton(base, inverse, src, like):
        b, n = inverse.shape
        c = like.shape[-1]
        out = torch.empty(b, n, c, dtype=like.dtype, device=like.device)
        if out.numel():
            block_n, block_c = _blocks(c)
            k = src.shape[1] if src is not None else 0
            bs = base.stride() if base is not None else (0, 0, 0)
            ss = src.stride() if src is not None else (0, 0, 0)
            launch(_place_tokens_kernel, (b, triton.cdiv(n, block_n)),
                base if base is not None else out, inverse, src if src is not None else out, out, n, k, c, *bs, *ss,
                HAS_BASE=base is not None, HAS_SRC=src is not None and k > 0, BLOCK_N=block_n, BLOCK_C=block_c)
        return out


# --------------------------------------------------------------------------------------------- ops


@torch.library.custom_op("lth_kernels::gather_tokens", mutates_args=())
def _gather_tokens_op(x: torch.Tensor, index: torch.Tensor, checked: bool, backend: str) -> torch.Tensor:
    if checked:
        check_index(index, x.shape[1])
    return _registry.implementation("gather_tokens", backend)(x, index)


@_gather_tokens_op.register_fake
def _(x, index, checked, backend):
    return x.new_empty(x.shape[0], index.shape[1], x.shape[2])


@torch.library.custom_op("lth_kernels::place_tokens", mutates_args=())
def _place_tokens_op(base: torch.Tensor | None, index: torch.Tensor, src: torch.Tensor | None, like: torch.Tensor,
                     n_tokens: int, checked: bool, backend: str) -> torch.Tensor:
    # The inverse map is built here, after the check, so that an out-of-range index never reaches the
    # scatter; `like` carries C, dtype and device when base or src is absent.
    if checked:
        check_index(index, n_tokens)
    return _registry.implementation("place_tokens", backend)(base, inverse_index(index, n_tokens), src, like)


@_place_tokens_op.register_fake
def _(base, index, src, like, n_tokens, checked, backend):
    return like.new_empty(index.shape[0], n_tokens, like.shape[-1])


def _gather_setup(ctx, inputs, output):
    x, index, _, backend = inputs
    ctx.save_for_backward(index)
    ctx.n_tokens, ctx.backend = x.shape[1], backend


def _gather_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    grad = _prep(grad)  # autograd may hand an expanded (stride-0) gradient, e.g. from .sum()
    return _place_tokens_op(None, index, grad, grad, ctx.n_tokens, False, ctx.backend), None, None, None


_gather_tokens_op.register_autograd(_gather_backward, setup_context=_gather_setup)


def _place_setup(ctx, inputs, output):
    base, index, src, _, n_tokens, _, backend = inputs
    ctx.save_for_backward(index)
    ctx.has_base, ctx.has_src, ctx.n_tokens, ctx.backend = base is not None, src is not None, n_tokens, backend


def _place_backward(ctx, grad):
    (index,) = ctx.saved_tensors
    grad = _prep(grad)
    g_base = _place_tokens_op(grad, index, None, grad, ctx.n_tokens, False, ctx.backend) if ctx.has_base else None
    g_src = _gather_tokens_op(grad, index, False, ctx.backend) if ctx.has_src else None
    return g_base, None, g_src, None, None, None, None


_place_tokens_op.register_autograd(_place_backward, setup_context=_place_setup)


# --------------------------------------------------------------------------------------------- public

_FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def _check_tokens(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != 3:
        raise ValueError(f"{name}: expected shape (B, N, C), got {tuple(t.shape)}")
    if t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a floating dtype (fp32/fp16/bf16/fp64), got {t.dtype}")


def _check_index_arg(index, x: torch.Tensor, name: str = "index") -> None:
    if not isinstance(index, torch.Tensor) or index.dtype not in (torch.int32, torch.int64):
        got = index.dtype if isinstance(index, torch.Tensor) else type(index).__name__
        raise TypeError(f"{name}: expected an int32 or int64 tensor, got {got}")
    if index.dim() != 2 or index.shape[0] != x.shape[0]:
        raise ValueError(f"{name}: expected shape (B={x.shape[0]}, K), got {tuple(index.shape)}")
    if index.device != x.device:
        raise ValueError(f"{name}: expected device {x.device}, got {index.device}")


def _prep(t: torch.Tensor) -> torch.Tensor:
    # The Triton kernels take any strides; the CUDA kernel copies contiguous rows, so make the channel
    # dim unit-stride (a no-op for the usual layouts).
    return t if t.stride(-1) == 1 else t.contiguous()


def gather_tokens(x: torch.Tensor, index: torch.Tensor, *, checked: bool = True,
                  backend: str | None = None) -> torch.Tensor:
    """Rows of x (B, N, C) at index (B, K) -> (B, K, C); differentiable with an atomic-free backward.

    ``checked=True`` validates that every row of ``index`` holds unique values in [0, N) (one host sync);
    ``checked=False`` skips that for hot loops whose indices come from ``topk``/``argsort`` (unique by
    construction): an invalid index is then undefined behaviour.
    """
    _check_tokens(x, "x")
    _check_index_arg(index, x)
    name = _registry.resolve("gather_tokens", x.device, backend)
    return _gather_tokens_op(_prep(x), index if index.stride(-1) == 1 else index.contiguous(), bool(checked), name)


def scatter_tokens(base: torch.Tensor, index: torch.Tensor, src: torch.Tensor, *, checked: bool = True,
                   backend: str | None = None) -> torch.Tensor:
    """Copy of base (B, N, C) with rows index[b, k] replaced by src[b, k] (B, K, C): EViT-style restore.

    Out of place. Backward: grad to base with the kept rows zeroed, grad to src gathered. ``checked`` as in
    :func:`gather_tokens`. For a zero background pass ``torch.zeros(B, N, C)`` as base.
    """
    _check_tokens(base, "base")
    _check_tokens(src, "src")
    if base.shape[0] != src.shape[0] or base.shape[2] != src.shape[2] or base.dtype != src.dtype:
        raise ValueError(f"src: expected (B={base.shape[0]}, K, C={base.shape[2]}) of dtype {base.dtype}, got "
                         f"{tuple(src.shape)} {src.dtype}")
    if base.device != src.device:
        raise ValueError(f"src: expected device {base.device}, got {src.device}")
    _check_index_arg(index, src)
    if index.shape[1] != src.shape[1]:
        raise ValueError(f"index: expected K = src.shape[1] = {src.shape[1]}, got shape {tuple(index.shape)}")
    name = _registry.resolve("place_tokens", src.device, backend)
    return _place_tokens_op(_prep(base), index, _prep(src), src, base.shape[1], bool(checked), name)
