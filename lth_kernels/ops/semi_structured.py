"""2:4 semi-structured sparsity: the mask builder and a linear layer path on cuSPARSELt through torch.

``semi_structured_linear(x, weight, mask, bias)`` computes x . (W * M)^T + bias. The forward runs on the
sparse tensor cores (``torch.sparse.to_sparse_semi_structured``: cuSPARSELt, or CUTLASS on sm80 without it)
only when all of these hold, else it is the masked dense reference (cuBLAS on the GPU):

* CUDA, compute capability >= 8.0, fp16/bf16, weight shape within the backend's alignment, mask really 2:4;
* a one-time measurement for this (device, dtype, M bucket, N, K, bias) found 2:4 faster than dense by a
  margin. The table lives in memory and, unless ``LTH_KERNELS_CACHE_DIR`` is set to an empty string, in
  ``$LTH_KERNELS_CACHE_DIR`` (default ``~/.cache/lth_kernels``) so later processes skip the measurement.

So the path is never slower than dense by construction (up to timing noise at the margin). Training:
the forward compresses W * M once per weight version (in-place optimizer steps bump it; in inference the
compressed weight is reused); dX = dY . (W * M) runs dense, because W^T is not 2:4 along its rows
(cuSPARSELt would need a transposable mask); dW = (dY^T . X) * M, so pruned weights stay zero.
"""

from __future__ import annotations

import json
import logging
import os
import threading

import torch
import torch.nn.functional as F

from lth_kernels._io import atomic_write_json
from lth_kernels._util import cuda_time_ms
from lth_kernels.ops import _registry

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------- mask


def mask_2to4(weight: torch.Tensor) -> torch.Tensor:
    """Bool mask keeping the 2 largest-magnitude entries of every 4 consecutive along the last (input) dim.

    Ties go to the lower index. A trailing group of r < 4 entries keeps min(2, r) of them.
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() < 1 or not weight.is_floating_point():
        got = f"{weight.dtype} shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor) else type(weight)
        raise ValueError(f"weight: expected a floating-point tensor with at least 1 dim, got {got}")
    k = weight.shape[-1]
    mag = F.pad(weight.detach().abs().float(), (0, -k % 4), value=-float("inf"))
    groups = mag.reshape(*mag.shape[:-1], -1, 4)
    top2 = torch.argsort(groups, dim=-1, descending=True, stable=True)[..., :2]
    mask = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, top2, True)
    return mask.reshape(mag.shape)[..., :k]


def is_2to4(mask: torch.Tensor) -> bool:
    """True when the last dim is a multiple of 4 and every group of 4 keeps at most 2 entries."""
    if mask.shape[-1] % 4:
        return False
    return bool((mask.reshape(*mask.shape[:-1], -1, 4).sum(-1) <= 2).all())


# --------------------------------------------------------------------------------------------- sparse path


def _sparse_class():
    """The torch 2:4 subclass this build uses, or None (no CUDA build / no sparse kernels)."""
    sp = torch.sparse
    if not hasattr(sp, "SparseSemiStructuredTensorCUSPARSELT"):  # pragma: no cover
        return None
    if sp.SparseSemiStructuredTensor._FORCE_CUTLASS or not torch.backends.cusparselt.is_available():
        return sp.SparseSemiStructuredTensorCUTLASS
    return sp.SparseSemiStructuredTensorCUSPARSELT


def sparse_supported(x: torch.Tensor, weight: torch.Tensor) -> tuple[bool, str]:
    """(supported, why not) for the sparse tensor-core forward on these operands."""
    if not (x.is_cuda and weight.is_cuda):
        return False, "needs CUDA tensors"
    if weight.dtype not in (torch.float16, torch.bfloat16) or x.dtype != weight.dtype:
        return False, f"needs fp16/bf16 (got {x.dtype}, {weight.dtype})"
    major, _ = torch.cuda.get_device_capability(weight.device)
    cls = _sparse_class()
    if major < 8 or cls is None:
        return False, f"needs sm80+ with torch's 2:4 kernels (sm{major}x)"
    if cls.BACKEND == "cutlass" and major != 8:
        return False, "torch's CUTLASS 2:4 kernels run on sm80 only and cuSPARSELt is unavailable"
    c = cls._DTYPE_SHAPE_CONSTRAINTS[weight.dtype]
    n, k = weight.shape
    if n < c.sparse_min_rows or n % c.sparse_min_rows or k < c.sparse_min_cols or k % c.sparse_min_cols:
        return False, f"weight {tuple(weight.shape)} not a multiple of ({c.sparse_min_rows}, {c.sparse_min_cols})"
    return True, "ok"


_COMPRESSED = None  # weight -> (weight._version, mask, mask._version, compressed); weak on the weight
_MASK_OK = None  # mask -> (mask._version, is_2to4)


def _weak_dicts():
    global _COMPRESSED, _MASK_OK
    if _COMPRESSED is None:
        from torch.utils.weak import WeakIdKeyDictionary

        _COMPRESSED, _MASK_OK = WeakIdKeyDictionary(), WeakIdKeyDictionary()
    return _COMPRESSED, _MASK_OK


def _mask_is_2to4(mask: torch.Tensor) -> bool:
    cache = _weak_dicts()[1]
    hit = cache.get(mask)
    if hit is not None and hit[0] == mask._version:
        return hit[1]
    ok = is_2to4(mask)
    cache[mask] = (mask._version, ok)
    return ok


def _compressed(weight: torch.Tensor, mask: torch.Tensor):
    cache = _weak_dicts()[0]
    hit = cache.get(weight)
    if hit is not None and hit[0] == weight._version and hit[1] is mask and hit[2] == mask._version:
        return hit[3]
    ws = torch.sparse.to_sparse_semi_structured((weight * mask).detach().contiguous())
    cache[weight] = (weight._version, mask, mask._version, ws)
    return ws


# --------------------------------------------------------------------------------------------- dispatch table

_MARGIN = 0.95  # 2:4 must beat dense by 5 % to be chosen: the noise of one short measurement
_TABLE: dict[str, bool] = {}
_TABLE_LOADED = False
_LOCK = threading.Lock()


def _cache_path() -> str | None:
    root = os.environ.get("LTH_KERNELS_CACHE_DIR")
    if root == "":
        return None
    root = root or os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lth_kernels")
    return os.path.join(root, "semi_structured_dispatch.json")


def _m_bucket(m: int) -> int:
    return max(16, 1 << (max(m, 1) - 1).bit_length())


def _table_key(device, dtype, m, n, k, has_bias) -> str:
    name = torch.cuda.get_device_name(device).replace(" ", "_")
    dtype = str(dtype).removeprefix("torch.")
    return f"{name}|torch{torch.__version__}|{dtype}|m{_m_bucket(m)}|n{n}|k{k}|b{int(has_bias)}"


def _load_table() -> None:
    global _TABLE_LOADED
    _TABLE_LOADED = True
    path = _cache_path()
    if path and os.path.exists(path):
        try:
            with open(path) as f:
                _TABLE.update({k: bool(v) for k, v in json.load(f).items()})
        except (OSError, ValueError) as e:
            log.warning("semi_structured: ignoring unreadable dispatch table %s (%s)", path, e)


def _save_table() -> None:
    path = _cache_path()
    if not path:
        return
    try:
        atomic_write_json(path, _TABLE, indent=1)
    except OSError as e:
        log.warning("semi_structured: could not write the dispatch table %s (%s)", path, e)


def measure(m: int, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None) -> tuple[float, float]:
    """(dense ms, 2:4 ms) of one forward at M = bucket(m) for this weight's shape and dtype."""
    x = torch.randn(_m_bucket(m), weight.shape[1], dtype=weight.dtype, device=weight.device)
    w = (weight * mask).detach().contiguous()
    ws = torch.sparse.to_sparse_semi_structured(w)
    with torch.no_grad():
        dense = cuda_time_ms(lambda: F.linear(x, w, bias), warmup=3, reps=15)
        sparse = cuda_time_ms(lambda: F.linear(x, ws, bias), warmup=3, reps=15)
    return dense, sparse


def sparse_is_faster(m: int, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """The dispatch table's answer for this shape, measured once per (device, dtype, M bucket, N, K, bias)."""
    key = _table_key(weight.device, weight.dtype, m, *weight.shape, bias is not None)
    with _LOCK:
        if not _TABLE_LOADED:
            _load_table()
        if key not in _TABLE:
            dense, sparse = measure(m, weight, mask, bias)
            _TABLE[key] = sparse < _MARGIN * dense
            log.info("semi_structured: %s dense %.4f ms, 2:4 %.4f ms -> %s", key, dense, sparse,
                     "2:4" if _TABLE[key] else "dense")
            _save_table()
        return _TABLE[key]


# --------------------------------------------------------------------------------------------- op


def _dense_linear(x2d, w_masked, bias):
    if x2d.device.type == "cpu" and x2d.dtype in (torch.float16, torch.bfloat16):
        b = bias.float() if bias is not None else None
        return F.linear(x2d.float(), w_masked.float(), b).to(x2d.dtype)
    return F.linear(x2d, w_masked, bias)


@_registry.register("semi_structured_linear", "reference")
def semi_structured_linear_reference(x2d, weight, mask, bias):
    return _dense_linear(x2d, weight * mask, bias)


def _use_sparse(x2d, weight, mask, bias, backend: str) -> bool:
    if backend == "reference":
        return False
    ok, why = sparse_supported(x2d, weight)
    if ok and not _mask_is_2to4(mask):
        ok, why = False, "mask is not 2:4 along the input dim"
    if backend == "cusparselt" and not ok:
        raise RuntimeError(f"backend: 'cusparselt' unavailable here: {why}")
    return ok and (backend == "cusparselt" or sparse_is_faster(x2d.shape[0], weight, mask, bias))


def sparse_applies(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`semi_structured_linear` with the automatic backend runs this call on the 2:4 tensor cores
    (supported operands, a 2:4 mask, measured faster); host syncs the first time per mask and shape."""
    return x.numel() > 0 and _use_sparse(x.reshape(-1, x.shape[-1]), weight, mask, bias, "auto")


# The path is chosen inside the op, at run time, so that compiled graphs keep one opaque call and the
# mask check and the one-time measurement never run under tracing.
@torch.library.custom_op("lth_kernels::semi_structured_linear", mutates_args=())
def _semi_structured_op(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None,
                        backend: str) -> torch.Tensor:
    x2d = x.reshape(-1, x.shape[-1])
    if x2d.numel() and _use_sparse(x2d, weight, mask, bias, backend):
        out = F.linear(x2d, _compressed(weight, mask), bias)
    else:
        out = semi_structured_linear_reference(x2d, weight, mask, bias)
    return out.reshape(*x.shape[:-1], weight.shape[0])


@_semi_structured_op.register_fake
def _(x, weight, mask, bias, backend):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


def _setup(ctx, inputs, output):
    x, weight, mask, bias, _ = inputs
    ctx.save_for_backward(x, weight, mask)


def _backward(ctx, grad):
    x, weight, mask = ctx.saved_tensors
    g2d = grad.reshape(-1, grad.shape[-1])
    dx = dw = db = None
    if ctx.needs_input_grad[0]:
        dx = _dense_linear(g2d, (weight * mask).t(), None).reshape(x.shape)
    if ctx.needs_input_grad[1]:
        dw = _dense_linear(g2d.t(), x.reshape(-1, x.shape[-1]).t(), None) * mask
    if ctx.needs_input_grad[3]:
        db = g2d.sum(0)
    return dx, dw, None, db, None


torch.library.register_autograd("lth_kernels::semi_structured_linear", _backward, setup_context=_setup)


def semi_structured_linear(x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor,
                           bias: torch.Tensor | None = None, *, backend: str | None = None) -> torch.Tensor:
    """x (..., K) . (weight * mask)^T + bias -> (..., N); weight (N, K), mask (N, K) bool (2:4 for the fast path).

    ``backend``: None / "auto" (2:4 tensor cores where supported and measured faster, else dense masked),
    "reference" (always dense masked) or "cusparselt" (2:4 tensor cores; an error where unsupported).
    Differentiable in x, weight and bias; the weight gradient is zero where ``mask`` is False.
    """
    for name, t in (("x", x), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got {getattr(t, 'dtype', type(t).__name__)}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected 2 dims (N, K), got shape {tuple(weight.shape)}")
    if x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"x: expected (..., {weight.shape[1]}) to match weight (N, K), got {tuple(x.shape)}")
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.shape != weight.shape:
        got = f"{mask.dtype} shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a bool tensor of weight's shape {tuple(weight.shape)}, got {got}")
    if bias is not None and (not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (weight.shape[0],)):
        got = tuple(bias.shape) if isinstance(bias, torch.Tensor) else type(bias).__name__
        raise ValueError(f"bias: expected shape ({weight.shape[0]},), got {got}")
    if backend not in (None, "auto", "reference", "cusparselt"):
        raise ValueError(f"backend: expected None, 'auto', 'reference' or 'cusparselt', got {backend!r}")
    if torch.is_autocast_enabled(x.device.type):
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if x.dtype != weight.dtype or (bias is not None and bias.dtype != x.dtype):
        raise TypeError(f"weight: dtype {weight.dtype} (bias {getattr(bias, 'dtype', None)}) must match x's {x.dtype}")
    return _semi_structured_op(x, weight, mask, bias, backend or "auto")
