"""Structured sparse attention: kept-token attention, block masks and varlen packing, forward and backward.

``sparse_attention(q, k, v, ...)`` computes softmax(q k^T * scale) v per (sample, head) with one of:

* nothing: dense attention over (B, H, N, d);
* ``keep_index`` (B, K): attention among each sample's kept tokens. Q/K/V stay full length (B, H, N, d) and
  are read through the index (no gather pass); the output is compact (B, H, K, d), or (B, H, N, d) with
  zero rows for the dropped tokens when ``compact=False``. The gradients are full length, zero on the
  dropped rows. Indices of a row must be unique (checked unless ``checked=False``);
* ``block_mask`` (:class:`BlockMask`, FlexAttention layout): over the dense or the kept sequence;
* ``cu_seqlens`` (B + 1,) int32 with packed (T, H, d) tensors: varlen attention, sequence b being rows
  ``cu_seqlens[b]:cu_seqlens[b+1]``. ``max_seqlen`` must be a Python int from the caller (no device sync).

Query rows with no visible key output 0 (and get zero gradient), unlike SDPA's NaN.
Backends: ``reference`` (torch, fp32 math, any device; the oracle) and ``triton`` (flash-style online
softmax, fp16/bf16/fp32; on CPU only under TRITON_INTERPRET=1).
"""

from __future__ import annotations

import math

import torch

from lth_kernels.ops import _registry
from lth_kernels.ops._sparse_attention_mask import (  # noqa: F401  (re-exported)
    BlockMask,
    block_mask_from_dense,
    block_mask_from_mask_mod,
    local_window_block_mask,
    strided_block_mask,
    swin_window_block_mask,
)
from lth_kernels.ops._triton import HAS_TRITON
from lth_kernels.ops.token_gather import check_index

# --------------------------------------------------------------------------------------------- reference


def _core(q, k, v, mask, scale):
    """Explicit softmax attention on (B, H, L, d) in fp32 (fp64 for fp64 inputs); returns (out, lse)."""
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    s = torch.matmul(q.to(ct), k.to(ct).transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    empty = torch.isneginf(lse)
    lse = lse.masked_fill(empty, float("inf"))  # fully masked rows: P = 0, output 0
    p = torch.exp(s - lse.unsqueeze(-1))
    return torch.matmul(p, v.to(ct)).to(q.dtype), lse.float()


def _take_rows(t, index):
    # (B, H, N, d) -> (B, H, K, d) rows index[b]
    return torch.gather(t, 2, index.long()[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))


def _reference_forward(q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale, compact):
    mask = block_mask[8] if block_mask else None
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        out = torch.zeros_like(q)
        lse = torch.full((len(bounds) - 1, q.shape[1], max_seqlen), float("inf"), device=q.device)
        for b in range(len(bounds) - 1):
            s, e = bounds[b], bounds[b + 1]
            o, ls = _core(*(t[s:e].transpose(0, 1)[None] for t in (q, k, v)), None, scale)
            out[s:e] = o[0].transpose(0, 1)
            lse[b, :, : e - s] = ls[0]
        return out, lse
    if keep_index is None:
        return _core(q, k, v, mask, scale)
    out, lse = _core(_take_rows(q, keep_index), _take_rows(k, keep_index), _take_rows(v, keep_index), mask, scale)
    if not compact:
        full = torch.zeros_like(q)
        full.scatter_(2, keep_index.long()[:, None, :, None].expand_as(out), out)
        out = full
    return out, lse


@_registry.register("sparse_attention", "reference")
def sparse_attention_reference_forward(q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale,
                                       compact):
    return _reference_forward(q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, block_size, scale, compact)


def _core_backward(dout, q, k, v, mask, scale):
    """Analytic softmax-attention backward on (B, H, L, d) (recomputes P); returns (dq, dk, dv)."""
    ct = torch.float64 if q.dtype == torch.float64 else torch.float32
    q, k, v, dout = (t.to(ct) for t in (q, k, v, dout))
    s = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    p = torch.exp(s - lse.masked_fill(torch.isneginf(lse), float("inf")))
    dv = torch.matmul(p.transpose(-1, -2), dout)
    dp = torch.matmul(dout, v.transpose(-1, -2))
    ds = p * (dp - (dp * p).sum(-1, keepdim=True))
    return torch.matmul(ds, k) * scale, torch.matmul(ds.transpose(-1, -2), q) * scale, dv


def sparse_attention_reference_backward(dout, q, k, v, out, lse, keep_index, cu_seqlens, max_seqlen, block_mask,
                                        block_size, scale, compact):
    mask = block_mask[8] if block_mask else None
    grads = [torch.zeros(t.shape, dtype=t.dtype, device=t.device) for t in (q, k, v)]
    if cu_seqlens is not None:
        bounds = cu_seqlens.tolist()
        for b in range(len(bounds) - 1):
            s, e = bounds[b], bounds[b + 1]
            part = _core_backward(*(t[s:e].transpose(0, 1)[None] for t in (dout, q, k, v)), None, scale)
            for g, p in zip(grads, part):
                g[s:e] = p[0].transpose(0, 1).to(g.dtype)
        return tuple(grads)
    if keep_index is None:
        return tuple(g.to(q.dtype) for g in _core_backward(dout, q, k, v, mask, scale))
    d_c = dout if compact else _take_rows(dout, keep_index)
    part = _core_backward(d_c, _take_rows(q, keep_index), _take_rows(k, keep_index), _take_rows(v, keep_index),
                          mask, scale)
    where = keep_index.long()[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[3])
    for g, p in zip(grads, part):
        g.scatter_(2, where, p.to(g.dtype))
    return tuple(grads)


_BACKWARD = {"reference": sparse_attention_reference_backward}

if HAS_TRITON:
    from lth_kernels.ops import _sparse_attention_triton as _tri

    _registry.register("sparse_attention", "triton")(_tri.attention_forward)
    _BACKWARD["triton"] = _tri.attention_backward

# --------------------------------------------------------------------------------------------- ops


def _lse_shape(q, keep_index, cu_seqlens, max_seqlen):
    if cu_seqlens is not None:
        return (cu_seqlens.shape[0] - 1, q.shape[1], max_seqlen)
    return (q.shape[0], q.shape[1], keep_index.shape[1] if keep_index is not None else q.shape[2])


@torch.library.custom_op("lth_kernels::sparse_attention", mutates_args=())
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep_index: torch.Tensor | None,
                  cu_seqlens: torch.Tensor | None, max_seqlen: int, block_mask: list[torch.Tensor],
                  block_q: int, block_kv: int, scale: float, compact: bool, checked: bool,
                  backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    if checked and keep_index is not None:
        check_index(keep_index, q.shape[2], "keep_index")  # inside the op: also holds under torch.compile
    impl = _registry.implementation("sparse_attention", backend)
    return impl(q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, (block_q, block_kv), scale, compact)


@_attention_op.register_fake
def _(q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, block_q, block_kv, scale, compact, checked, backend):
    if keep_index is not None and compact:
        out = q.new_empty(q.shape[0], q.shape[1], keep_index.shape[1], q.shape[3])
    else:
        out = q.new_empty(q.shape)
    return out, q.new_empty(_lse_shape(q, keep_index, cu_seqlens, max_seqlen), dtype=torch.float32)


@torch.library.custom_op("lth_kernels::sparse_attention_backward", mutates_args=())
def _attention_backward_op(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           out: torch.Tensor, lse: torch.Tensor, keep_index: torch.Tensor | None,
                           cu_seqlens: torch.Tensor | None, max_seqlen: int, block_mask: list[torch.Tensor],
                           block_q: int, block_kv: int, scale: float, compact: bool,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dq, dk, dv = _BACKWARD[backend](dout, q, k, v, out, lse, keep_index, cu_seqlens, max_seqlen, block_mask,
                                    (block_q, block_kv), scale, compact)
    return dq.contiguous(), dk.contiguous(), dv.contiguous()


@_attention_backward_op.register_fake
def _(dout, q, k, v, out, lse, keep_index, cu_seqlens, max_seqlen, block_mask, block_q, block_kv, scale, compact,
      backend):
    return (torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device),
            torch.empty(v.shape, dtype=v.dtype, device=v.device))


def _setup(ctx, inputs, output):
    q, k, v, keep_index, cu_seqlens, max_seqlen, block_mask, block_q, block_kv, scale, compact, _, backend = inputs
    out, lse = output
    ctx.mark_non_differentiable(lse)
    ctx.n_bm = len(block_mask)
    ctx.has_keep, ctx.has_cu = keep_index is not None, cu_seqlens is not None
    extra = [t for t in (keep_index, cu_seqlens) if t is not None]
    ctx.save_for_backward(q, k, v, out, lse, *extra, *block_mask)
    ctx.args = (max_seqlen, block_q, block_kv, scale, compact, backend)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, *rest = ctx.saved_tensors
    keep_index = rest.pop(0) if ctx.has_keep else None
    cu_seqlens = rest.pop(0) if ctx.has_cu else None
    max_seqlen, block_q, block_kv, scale, compact, backend = ctx.args
    nones = (None, None, None, [None] * ctx.n_bm, None, None, None, None, None, None)
    if dout is None:
        return (None, None, None) + nones
    dq, dk, dv = _attention_backward_op(dout.contiguous(), q, k, v, out, lse, keep_index, cu_seqlens, max_seqlen,
                                        rest, block_q, block_kv, scale, compact, backend)
    return (dq, dk, dv) + nones


_attention_op.register_autograd(_backward, setup_context=_setup)

# --------------------------------------------------------------------------------------------- public

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_qkv(q, k, v, dims: int) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating dtype, got {t.dtype}")
    layout = "(B, H, N, d)" if dims == 4 else "packed (T, H, d)"
    if q.dim() != dims:
        raise ValueError(f"q: expected shape {layout}, got {tuple(q.shape)}")
    for name, t in (("k", k), ("v", v)):
        if t.shape != q.shape or t.dtype != q.dtype or t.device != q.device:
            raise ValueError(f"{name}: expected shape {tuple(q.shape)}, dtype {q.dtype}, device {q.device} like q, "
                             f"got {tuple(t.shape)} {t.dtype} {t.device}")


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, keep_index: torch.Tensor | None = None,
                     block_mask: BlockMask | None = None, cu_seqlens: torch.Tensor | None = None,
                     max_seqlen: int | None = None, scale: float | None = None, compact: bool = True,
                     checked: bool = True, backend: str | None = None) -> torch.Tensor:
    """Attention over kept tokens / a block mask / packed sequences (see the module docstring)."""
    varlen = cu_seqlens is not None
    _check_qkv(q, k, v, 3 if varlen else 4)
    if varlen:
        if keep_index is not None or block_mask is not None:
            raise ValueError("cu_seqlens: cannot be combined with keep_index or block_mask")
        if cu_seqlens.dtype != torch.int32 or cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
            raise ValueError(f"cu_seqlens: expected a 1-D int32 tensor of length B+1 >= 2, got {cu_seqlens.dtype} "
                             f"shape {tuple(cu_seqlens.shape)}")
        if cu_seqlens.device != q.device:
            raise ValueError(f"cu_seqlens: expected device {q.device}, got {cu_seqlens.device}")
        if not isinstance(max_seqlen, int) or isinstance(max_seqlen, bool) or max_seqlen < 0:
            raise ValueError(f"max_seqlen: expected a Python int >= the longest sequence (no device sync), "
                             f"got {max_seqlen!r}")
    else:
        max_seqlen = 0
    seq = q.shape[2] if not varlen else None
    if keep_index is not None:
        if not isinstance(keep_index, torch.Tensor) or keep_index.dtype not in (torch.int32, torch.int64):
            got = keep_index.dtype if isinstance(keep_index, torch.Tensor) else type(keep_index).__name__
            raise TypeError(f"keep_index: expected an int32 or int64 tensor, got {got}")
        if keep_index.dim() != 2 or keep_index.shape[0] != q.shape[0] or keep_index.device != q.device:
            raise ValueError(f"keep_index: expected shape (B={q.shape[0]}, K) on {q.device}, got "
                             f"{tuple(keep_index.shape)} on {keep_index.device}")
        keep_index = keep_index.contiguous()
        seq = keep_index.shape[1]
    tensors, block_size = [], (0, 0)
    if block_mask is not None:
        if not isinstance(block_mask, BlockMask):
            raise TypeError(f"block_mask: expected a BlockMask, got {type(block_mask).__name__}")
        if block_mask.seq_len != (seq, seq):
            raise ValueError(f"block_mask: built for sequence lengths {block_mask.seq_len}, the attention runs over "
                             f"{seq} tokens")
        bm, hm = block_mask.mask.shape[:2]
        if bm not in (1, q.shape[0]) or hm not in (1, q.shape[1]):
            raise ValueError(f"block_mask: batch/head dims {(bm, hm)} do not broadcast to {(q.shape[0], q.shape[1])}")
        if block_mask.mask.device != q.device:
            raise ValueError(f"block_mask: expected device {q.device}, got {block_mask.mask.device}")
        tensors, block_size = block_mask.tensors(), block_mask.block_size
    if scale is None:
        scale = 1.0 / math.sqrt(q.shape[-1])
    name = _registry.resolve("sparse_attention", q.device, backend)
    if name == "triton" and q.dtype not in _KERNEL_DTYPES:
        raise TypeError(f"q: the triton backend takes fp16/bf16/fp32, got {q.dtype} (use backend='reference')")
    out, _ = _attention_op(q, k, v, keep_index, cu_seqlens, max_seqlen, tensors, *block_size, float(scale),
                           bool(compact), bool(checked), name)
    return out


_registry.set_preference("sparse_attention", "cuda", ("triton", "reference"))
