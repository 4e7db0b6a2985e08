"""Masked matmul: linear and conv2d layers whose weight is multiplied by a fixed bool mask.

Contract (every backend): ``y = x · (W ⊙ M)ᵀ (+ b)`` with *where* semantics: pruned entries contribute exactly 0,
even when the stored weight there is non-finite. Backward:

* ``dX = dY · (W ⊙ M)``
* ``dW = (dYᵀ · X) ⊙ M``: the masked weight gradient, exactly 0 at pruned entries. Any optimizer that moves a
  weight only through its gradient, its own state and weight decay (SGD, Adam, AdamW, ...) therefore keeps pruned
  weights at exactly 0: this is what the masked layers rely on instead of re-masking after every step.
* ``db = Σ dY``
* score variant (:func:`masked_linear_scores`, lottery jackpots / edge-popup): the bool mask is chosen by the caller
  from float scores; the scores receive the straight-through gradient ``(dYᵀ · X) ⊙ W`` over *all* entries, pruned
  ones included.

``weight_is_masked=True`` is a promise by the caller that ``W`` is already 0 wherever ``M`` is False (the masked
layers keep that invariant). The reference then skips its ``torch.where(M, W, 0)`` pass in forward and in dX; dW
is masked either way. Fast kernels apply the mask while loading the weight tile, so it costs them nothing.

Backends: each of the ops below is a registry entry (``masked_linear``, ``masked_linear_grad_input``, ...). A
backend module registers any subset of them under its name and is imported at the end of this file; a backward
op the chosen backend lacks runs on the reference. Every ``lth_kernels::`` op takes the resolved backend name.
The reference is torch's own GEMM/convolution (cuBLAS, cuDNN, MKL) on the weight as given: with
``weight_is_masked=True`` it is the vendor library on the pre-masked weight, with dW masked in place. On CUDA the
linear ops resolve to ``"auto"``: each call picks ``triton`` (tile skipping) or ``reference`` from the mask's
tile occupancy and a measured crossover (:mod:`lth_kernels.ops._masked_matmul_dispatch`). Plain eager calls run
the same functions and autograd formulas without the custom-op dispatch (:mod:`lth_kernels.ops._eager_op`).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from lth_kernels.ops import _eager_op, _mask_cache, _registry
from lth_kernels.ops.mask_meta import _check_mask

# --------------------------------------------------------------------------------------------- reference


def _masked(weight: torch.Tensor, mask: torch.Tensor, weight_is_masked: bool) -> torch.Tensor:
    # torch.where, not weight * mask: a pruned entry must contribute 0 even if it holds inf/nan.
    return weight if weight_is_masked else torch.where(mask, weight, 0)


_INT_OF_SIZE = {2: torch.int16, 4: torch.int32, 8: torch.int64}


def _mask_grad_(grad: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``grad`` set to +0.0 where ``mask`` is False, in place, whatever it holds there (inf/nan included).

    On CPU, ``masked_fill_`` with a bool mask runs a slow scalar loop (measured at 16x the time of the integer AND
    below on a 300 x 784 fp32 gradient); an AND of the float bits with a remembered all-ones / all-zeros integer
    mask of the same width gives the same result bit for bit. On CUDA ``masked_fill_`` is already memory-bound."""
    if grad.device.type == "cpu" and grad.element_size() in _INT_OF_SIZE and grad.shape == mask.shape:
        int_dtype = _INT_OF_SIZE[grad.element_size()]
        keep = _mask_cache.remember(mask, ("keep_bits", int_dtype), lambda: mask.to(int_dtype).neg_())
        grad.view(int_dtype).bitwise_and_(keep)
        return grad
    return grad.masked_fill_(~mask, 0)


@_registry.register("masked_linear", "reference")
def masked_linear_reference(x, weight, mask, bias, weight_is_masked):
    w = _masked(weight, mask, weight_is_masked)
    x2 = x.reshape(-1, x.shape[-1])
    y = x2 @ w.t() if bias is None else torch.addmm(bias, x2, w.t())
    return y.reshape(*x.shape[:-1], w.shape[0])


@_registry.register("masked_linear_grad_input", "reference")
def masked_linear_grad_input_reference(grad_out, weight, mask, weight_is_masked):
    w = _masked(weight, mask, weight_is_masked)
    return (grad_out.reshape(-1, w.shape[0]) @ w).reshape(*grad_out.shape[:-1], w.shape[1])


def _weight_grad_dense(grad_out, x):
    return grad_out.reshape(-1, grad_out.shape[-1]).t() @ x.reshape(-1, x.shape[-1])


@_registry.register("masked_linear_grad_weight", "reference")
def masked_linear_grad_weight_reference(grad_out, x, mask):
    return _mask_grad_(_weight_grad_dense(grad_out, x), mask)


@_registry.register("masked_linear_grad_scores", "reference")
def masked_linear_grad_scores_reference(grad_out, x, weight):
    return _weight_grad_dense(grad_out, x).mul_(weight)


@_registry.register("masked_linear_grad_weight_and_scores", "reference")
def masked_linear_grad_weight_and_scores_reference(grad_out, x, weight, mask):
    # One dYᵀX GEMM for both: the score gradient first, then the same buffer masked in place is dW.
    full = _weight_grad_dense(grad_out, x)
    scores = full * weight
    return _mask_grad_(full, mask), scores


@_registry.register("masked_conv2d", "reference")
def masked_conv2d_reference(x, weight, mask, bias, stride, padding, dilation, groups, weight_is_masked):
    w = _masked(weight, mask, weight_is_masked)
    # contiguous: the fake promises contiguous outputs whatever the input's memory format
    return F.conv2d(x, w, bias, stride, padding, dilation, groups).contiguous()


@_registry.register("masked_conv2d_grad_input", "reference")
def masked_conv2d_grad_input_reference(grad_out, x_shape, weight, mask, stride, padding, dilation, groups,
                                       weight_is_masked):
    w = _masked(weight, mask, weight_is_masked)
    return torch.nn.grad.conv2d_input(x_shape, w, grad_out, stride, padding, dilation, groups).contiguous()


@_registry.register("masked_conv2d_grad_weight", "reference")
def masked_conv2d_grad_weight_reference(grad_out, x, mask, stride, padding, dilation, groups):
    dw = torch.nn.grad.conv2d_weight(x, mask.shape, grad_out, stride, padding, dilation, groups)
    return _mask_grad_(dw.contiguous(), mask)


def _impl(op: str, backend: str):
    """The ``backend`` implementation of ``op``, or the reference where that backend does not provide it."""
    impls = _registry.ops()[op].impls
    return impls.get(backend, impls["reference"])


def _linear_impl(op: str, backend: str, mask: torch.Tensor, tokens: int, dtype: torch.dtype):
    """As :func:`_impl`; ``"auto"`` is decided here, at run time, from the mask (see the dispatch module)."""
    if backend == _registry.AUTO:
        backend = _masked_matmul_dispatch.choose(mask, tokens, dtype)
    return _impl(op, backend)


def _tokens(t: torch.Tensor) -> int:
    return t.numel() // t.shape[-1] if t.shape[-1] else 0


# --------------------------------------------------------------------------------------------- ops: linear


@_eager_op.custom_op("lth_kernels::masked_linear")
def _masked_linear_op(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None,
                      weight_is_masked: bool, backend: str) -> torch.Tensor:
    return _linear_impl("masked_linear", backend, mask, _tokens(x), x.dtype)(x, weight, mask, bias, weight_is_masked)


@_masked_linear_op.register_fake
def _(x, weight, mask, bias, weight_is_masked, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


@_eager_op.custom_op("lth_kernels::masked_linear_grad_input")
def _grad_input_op(grad_out: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, weight_is_masked: bool,
                   backend: str) -> torch.Tensor:
    impl = _linear_impl("masked_linear_grad_input", backend, mask, _tokens(grad_out), weight.dtype)
    return impl(grad_out, weight, mask, weight_is_masked)


@_grad_input_op.register_fake
def _(grad_out, weight, mask, weight_is_masked, backend):
    return grad_out.new_empty((*grad_out.shape[:-1], weight.shape[1]))


@_eager_op.custom_op("lth_kernels::masked_linear_grad_weight")
def _grad_weight_op(grad_out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, backend: str) -> torch.Tensor:
    return _linear_impl("masked_linear_grad_weight", backend, mask, _tokens(x), x.dtype)(grad_out, x, mask)


@_grad_weight_op.register_fake
def _(grad_out, x, mask, backend):
    return x.new_empty(mask.shape)


@_eager_op.custom_op("lth_kernels::masked_linear_grad_scores")
def _grad_scores_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, backend: str) -> torch.Tensor:
    # "auto": the score gradient covers every entry, so no tile can be skipped: the library GEMM.
    return _impl("masked_linear_grad_scores", "reference" if backend == _registry.AUTO else backend)(grad_out, x,
                                                                                                     weight)


@_grad_scores_op.register_fake
def _(grad_out, x, weight, backend):
    return x.new_empty(weight.shape)


@_eager_op.custom_op("lth_kernels::masked_linear_grad_weight_and_scores")
def _grad_weight_and_scores_op(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                               backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    impl = _linear_impl("masked_linear_grad_weight_and_scores", backend, mask, _tokens(x), x.dtype)
    return tuple(impl(grad_out, x, weight, mask))


@_grad_weight_and_scores_op.register_fake
def _(grad_out, x, weight, mask, backend):
    return x.new_empty(weight.shape), x.new_empty(weight.shape)


def _setup_linear(ctx, inputs, output):
    x, weight, mask, _bias, weight_is_masked, backend = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.weight_is_masked, ctx.backend = weight_is_masked, backend


def _backward_linear(ctx, grad):
    x, weight, mask = ctx.saved_tensors
    need_x, need_w, _, need_b = ctx.needs_input_grad[:4]
    call = _eager_op.call
    dx = call(ctx, _grad_input_op, grad, weight, mask, ctx.weight_is_masked, ctx.backend) if need_x else None
    dw = call(ctx, _grad_weight_op, grad, x, mask, ctx.backend) if need_w else None
    db = grad.reshape(-1, grad.shape[-1]).sum(0) if need_b else None
    return dx, dw, None, db, None, None


_eager_op.register_autograd(_masked_linear_op, _backward_linear, _setup_linear)


@_eager_op.custom_op("lth_kernels::masked_linear_scores")
def _masked_linear_scores_op(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor,
                             bias: torch.Tensor | None, backend: str) -> torch.Tensor:
    # scores do not enter the forward: they only receive the straight-through gradient
    return _linear_impl("masked_linear", backend, mask, _tokens(x), x.dtype)(x, weight, mask, bias, False)


@_masked_linear_scores_op.register_fake
def _(x, weight, mask, scores, bias, backend):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_scores(ctx, inputs, output):
    x, weight, mask, scores, _bias, backend = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.backend, ctx.scores_dtype = backend, scores.dtype


def _backward_scores(ctx, grad):
    x, weight, mask = ctx.saved_tensors
    need_x, need_w, _, need_s, need_b = ctx.needs_input_grad[:5]
    call = _eager_op.call
    dx = call(ctx, _grad_input_op, grad, weight, mask, False, ctx.backend) if need_x else None
    dw = ds = None
    if need_w and need_s:  # one pass over dY and X for both (fused kernel on Triton, one GEMM on the library)
        dw, ds = call(ctx, _grad_weight_and_scores_op, grad, x, weight, mask, ctx.backend)
    elif need_w:
        dw = call(ctx, _grad_weight_op, grad, x, mask, ctx.backend)
    elif need_s:
        ds = call(ctx, _grad_scores_op, grad, x, weight, ctx.backend)
    ds = ds.to(ctx.scores_dtype) if ds is not None else None
    db = grad.reshape(-1, grad.shape[-1]).sum(0) if need_b else None
    return dx, dw, None, ds, db, None


_eager_op.register_autograd(_masked_linear_scores_op, _backward_scores, _setup_scores)

# --------------------------------------------------------------------------------------------- ops: conv2d


def _conv_out(size, k, s, p, d):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


@_eager_op.custom_op("lth_kernels::masked_conv2d")
def _masked_conv2d_op(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None,
                      stride: list[int], padding: list[int], dilation: list[int], groups: int, weight_is_masked: bool,
                      backend: str) -> torch.Tensor:
    return _impl("masked_conv2d", backend)(x, weight, mask, bias, stride, padding, dilation, groups, weight_is_masked)


@_masked_conv2d_op.register_fake
def _(x, weight, mask, bias, stride, padding, dilation, groups, weight_is_masked, backend):
    hw = [_conv_out(x.shape[2 + i], weight.shape[2 + i], stride[i], padding[i], dilation[i]) for i in range(2)]
    return x.new_empty((x.shape[0], weight.shape[0], *hw))


@_eager_op.custom_op("lth_kernels::masked_conv2d_grad_input")
def _conv_grad_input_op(grad_out: torch.Tensor, x_shape: list[int], weight: torch.Tensor, mask: torch.Tensor,
                        stride: list[int], padding: list[int], dilation: list[int], groups: int,
                        weight_is_masked: bool, backend: str) -> torch.Tensor:
    return _impl("masked_conv2d_grad_input", backend)(grad_out, x_shape, weight, mask, stride, padding, dilation,
                                                      groups, weight_is_masked)


@_conv_grad_input_op.register_fake
def _(grad_out, x_shape, weight, mask, stride, padding, dilation, groups, weight_is_masked, backend):
    return grad_out.new_empty(x_shape)


@_eager_op.custom_op("lth_kernels::masked_conv2d_grad_weight")
def _conv_grad_weight_op(grad_out: torch.Tensor, x: torch.Tensor, mask: torch.Tensor, stride: list[int],
                         padding: list[int], dilation: list[int], groups: int, backend: str) -> torch.Tensor:
    return _impl("masked_conv2d_grad_weight", backend)(grad_out, x, mask, stride, padding, dilation, groups)


@_conv_grad_weight_op.register_fake
def _(grad_out, x, mask, stride, padding, dilation, groups, backend):
    return x.new_empty(mask.shape)


def _setup_conv(ctx, inputs, output):
    x, weight, mask, _bias, stride, padding, dilation, groups, weight_is_masked, backend = inputs
    ctx.save_for_backward(x, weight, mask)
    ctx.conv = (stride, padding, dilation, groups)
    ctx.weight_is_masked, ctx.backend = weight_is_masked, backend


def _backward_conv(ctx, grad):
    x, weight, mask = ctx.saved_tensors
    need_x, need_w, _, need_b = ctx.needs_input_grad[:4]
    dx = dw = db = None
    if need_x:
        dx = _eager_op.call(ctx, _conv_grad_input_op, grad, list(x.shape), weight, mask, *ctx.conv,
                            ctx.weight_is_masked, ctx.backend)
    if need_w:
        dw = _eager_op.call(ctx, _conv_grad_weight_op, grad, x, mask, *ctx.conv, ctx.backend)
    if need_b:
        db = grad.sum((0, 2, 3))
    return dx, dw, None, db, None, None, None, None, None, None


_eager_op.register_autograd(_masked_conv2d_op, _backward_conv, _setup_conv)

# --------------------------------------------------------------------------------------------- public


def _describe(t) -> str:
    if isinstance(t, torch.Tensor):
        return f"{t.dtype} tensor of shape {tuple(t.shape)} on {t.device}"
    return type(t).__name__


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_float(name: str, t, dims: int | None, like: torch.Tensor | None = None) -> None:
    if not isinstance(t, torch.Tensor) or t.dtype not in _FLOATS:
        raise TypeError(f"{name}: expected a float16/bfloat16/float32/float64 tensor, got {_describe(t)}")
    if dims is not None and t.dim() != dims:
        raise ValueError(f"{name}: expected {dims} dims, got shape {tuple(t.shape)}")
    if like is not None and (t.dtype != like.dtype or t.device != like.device):
        raise ValueError(f"{name}: expected dtype {like.dtype} on {like.device} (as x), got {_describe(t)}")


def _check_weight_mask_bias(x, weight, mask, bias, dims: int) -> None:
    _check_float("weight", weight, dims, like=x)
    _check_mask(mask)
    if mask.shape != weight.shape or mask.device != weight.device:
        raise ValueError(f"mask: expected shape {tuple(weight.shape)} on {weight.device} (as weight), got "
                         f"{tuple(mask.shape)} on {mask.device}")
    if bias is not None:
        _check_float("bias", bias, 1, like=x)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias: expected shape ({weight.shape[0]},) (weight.shape[0]), got {tuple(bias.shape)}")


def _autocast(x, *tensors):
    """Under autocast, cast float operands to the autocast dtype as F.linear/F.conv2d would (custom ops are not
    autocast by the dispatcher)."""
    device_type = x.device.type
    if not torch.amp.is_autocast_available(device_type) or not torch.is_autocast_enabled(device_type):  # meta: none
        return (x, *tensors)
    dtype = torch.get_autocast_dtype(device_type)
    cast = lambda t: t.to(dtype) if t is not None and t.dtype in (torch.float32, torch.float16, torch.bfloat16) else t
    return tuple(cast(t) for t in (x, *tensors))


def _linear_inputs(x, weight, mask, bias):
    """Checks of the linear forms (x: (..., K) against weight (N, K)); returns x, weight, bias after autocast."""
    _check_float("x", x, None)
    if x.dim() == 0:
        raise ValueError("x: expected at least 1 dim, got a 0-dim tensor")
    x, weight, bias = _autocast(x, weight, bias)
    _check_weight_mask_bias(x, weight, mask, bias, 2)
    if x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x: expected last dim {weight.shape[1]} (weight.shape[1]), got shape {tuple(x.shape)}")
    return x, weight, bias


def masked_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None, *,
                  backend: str | None = None, weight_is_masked: bool = False) -> torch.Tensor:
    """``x · (weight ⊙ mask)ᵀ + bias`` with the masked weight gradient (see the module docstring).

    x: (..., K) float16/bfloat16/float32/float64; weight: (N, K) same dtype and device; mask: (N, K) bool;
    bias: (N,) or None. Returns (..., N). ``weight_is_masked=True`` promises ``weight`` is 0 wherever ``mask`` is
    False (lets the reference skip a pass). ``backend`` overrides the automatic choice.
    """
    x, weight, bias = _linear_inputs(x, weight, mask, bias)
    return _eager_op.apply(_masked_linear_op, x, weight, mask, bias, bool(weight_is_masked),
                           _registry.resolve("masked_linear", x.device, backend))


def masked_linear_scores(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, scores: torch.Tensor,
                         bias: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """Same forward as :func:`masked_linear`; ``scores`` (N, K) float gets the straight-through gradient
    ``(dYᵀ · X) ⊙ W`` over all entries (pruned ones included), as in edge-popup and lottery jackpots.

    ``mask`` is the bool mask the caller derived from ``scores`` (top-k, threshold, swaps: the caller's rule);
    ``weight`` is used unmasked as stored (it need not hold zeros), and gets the masked gradient if it requires one.
    """
    x, weight, bias = _linear_inputs(x, weight, mask, bias)
    _check_float("scores", scores, 2)
    if scores.shape != weight.shape or scores.device != weight.device:
        raise ValueError(f"scores: expected shape {tuple(weight.shape)} on {weight.device} (as weight), got "
                         f"{_describe(scores)}")
    return _eager_op.apply(_masked_linear_scores_op, x, weight, mask, scores, bias,
                           _registry.resolve("masked_linear", x.device, backend))


def _pair(name: str, v) -> list[int]:
    if isinstance(v, int) and not isinstance(v, bool):
        return [v, v]
    if isinstance(v, Sequence) and len(v) == 2 and all(isinstance(i, int) and not isinstance(i, bool) for i in v):
        return list(v)
    raise ValueError(f"{name}: expected an int or two ints, got {v!r}")


def masked_conv2d(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None,
                  stride=1, padding=0, dilation=1, groups: int = 1, *, backend: str | None = None,
                  weight_is_masked: bool = False) -> torch.Tensor:
    """``F.conv2d(x, weight ⊙ mask, bias, stride, padding, dilation, groups)`` with the masked weight gradient.

    x: (B, C, H, W) or unbatched (C, H, W); weight: (O, C/groups, kh, kw); mask: bool, weight's shape; padding: int,
    two ints, ``"valid"`` or ``"same"`` (stride 1), zero padding. Other arguments as in :func:`masked_linear`.
    """
    _check_float("x", x, None)
    if x.dim() not in (3, 4):
        raise ValueError(f"x: expected (B, C, H, W) or (C, H, W), got shape {tuple(x.shape)}")
    unbatched = x.dim() == 3
    if unbatched:
        x = x.unsqueeze(0)
    x, weight, bias = _autocast(x, weight, bias)
    _check_weight_mask_bias(x, weight, mask, bias, 4)
    stride, dilation = _pair("stride", stride), _pair("dilation", dilation)
    if not isinstance(groups, int) or groups < 1 or weight.shape[0] % groups or x.shape[1] != weight.shape[1] * groups:
        raise ValueError(f"groups: needs x.shape[1] == weight.shape[1] * groups and weight.shape[0] % groups == 0; "
                         f"got groups={groups!r}, x {tuple(x.shape)}, weight {tuple(weight.shape)}")
    if min(stride) < 1 or min(dilation) < 1:
        raise ValueError(f"stride/dilation: expected positive ints, got stride={stride}, dilation={dilation}")
    if padding == "valid":
        padding = [0, 0]
    elif padding == "same":
        if stride != [1, 1]:
            raise ValueError(f"padding: 'same' needs stride 1, got stride={stride}")
        total = [dilation[i] * (weight.shape[2 + i] - 1) for i in range(2)]
        padding = [t // 2 for t in total]
        if any(t % 2 for t in total):  # odd total: the extra row/column goes at the end, as F.conv2d does
            x = F.pad(x, [0, total[1] % 2, 0, total[0] % 2])
    else:
        padding = _pair("padding", padding)
        if min(padding) < 0:
            raise ValueError(f"padding: expected non-negative ints, got {padding}")
    for i in range(2):
        if x.shape[2 + i] + 2 * padding[i] < dilation[i] * (weight.shape[2 + i] - 1) + 1:
            raise ValueError(f"x: spatial size {tuple(x.shape[2:])} (padded by {padding}) is smaller than the "
                             f"dilated kernel {tuple(weight.shape[2:])} (dilation {dilation})")
    y = _eager_op.apply(_masked_conv2d_op, x, weight, mask, bias, stride, padding, dilation, groups,
                        bool(weight_is_masked), _registry.resolve("masked_conv2d", x.device, backend))
    return y.squeeze(0) if unbatched else y


# --------------------------------------------------------------------------------------------- fast backends

# A fast backend lives in its own module and registers the op names above under its backend name on import.
for _module in ("lth_kernels.ops._masked_matmul_triton",):
    if importlib.util.find_spec(_module) is not None:
        importlib.import_module(_module)

from lth_kernels.ops import _masked_matmul_dispatch  # noqa: E402 - after the backends it chooses among

# On CUDA the linear ops choose per call between the Triton kernels and the library (see the dispatch module);
# the score-only gradient always takes the library (nothing to skip), which lth info then shows.
for _op in ("masked_linear", "masked_linear_grad_input", "masked_linear_grad_weight",
            "masked_linear_grad_weight_and_scores"):
    _registry.set_rule(_op, "cuda", _masked_matmul_dispatch.CANDIDATES, _masked_matmul_dispatch.rule_text())
_registry.set_preference("masked_linear_grad_scores", "cuda", ("reference",))
