"""The automatic backend of the masked linear ops: the vendor library on the weight as it is stored, or the Triton
tile-skipping kernels where the mask leaves enough W tiles empty.

Why: an unstructured lottery-ticket mask leaves essentially no 64x64 tile empty even at 99 % sparsity (a tile is
empty with probability s^4096), so the Triton kernel would skip nothing and at best match cuBLAS. The masked
layers store their weights with exact zeros, so the library GEMM on the weight as it is (``weight_is_masked=True``:
no masking pass over W) plus the weight gradient masked in place is the fastest correct path for them. Masks that
empty whole tiles (block-like or channel-like structure, very sparse small layers) let the Triton kernels skip work.

Rule, per call and inside the op (a compiled graph keeps one opaque call; the first call of a mask state pays one
host sync): ``triton`` when the skipped fraction ``1 - MaskMeta.occupied_fraction`` of the mask's kernel metadata
reaches the crossover that ``masked_matmul_table.json`` gives for the call's dtype and nearest measured
(tokens, K, N); else ``reference``, which is torch's GEMM (cuBLAS, MKL) on the weight as stored. The backward ops
apply the same rule to the same mask and token count, so a call's forward and backward agree. The score-only
gradient has no tile to skip (it covers every entry) and always takes the library GEMM.

The table is regenerated on a GPU by ``bench/masked_matmul.py --table``. Without entries for a dtype the default
crossover applies: Triton only where at least half the tiles are skipped, since at full occupancy the Triton kernel
runs at some fraction of cuBLAS's speed, and that fraction is the break-even occupancy.
"""

from __future__ import annotations

import functools
import os

import torch

from lth_kernels.ops import _mask_cache, _masked_matmul_triton, cpu_sparse

TABLE_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "masked_matmul_table.json")
DEFAULT_CROSSOVER = 0.5  # skipped-tile fraction from which Triton runs, where the table has no entry
CANDIDATES = ("triton", "reference")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def crossover(tokens: int, k: int, n: int, dtype: torch.dtype, table: dict | None = None) -> float:
    """The skipped-tile fraction from which the Triton kernels beat the library for a (tokens x K) · (N x K)ᵀ call:
    the table entry of this dtype nearest in (log tokens, then log K, log N), else the table's default."""
    table = table if table is not None else cpu_sparse.dispatch_table(TABLE_PATH)
    same = [e for e in table.get("entries", []) if e.get("dtype") == _dtype_name(dtype)]
    if not same:
        return float(table.get("default_crossover", DEFAULT_CROSSOVER))
    # The entries use cpu_sparse's keys (batch = tokens, in_features = K, out_features = N): one lookup for both.
    return cpu_sparse.crossover(tokens, k, n, {"entries": same})


@functools.lru_cache(maxsize=4096)
def _table_crossover(tokens: int, k: int, n: int, dtype: torch.dtype) -> float:
    return crossover(tokens, k, n, dtype)


def _library_anyway(tokens: int, numel: int, dtype: torch.dtype) -> bool:
    # float64 runs the reference on every backend; an empty GEMM has nothing to skip
    return dtype == torch.float64 or tokens == 0 or numel == 0


def _pick(skipped: float, tokens: int, k: int, n: int, dtype: torch.dtype) -> str:
    return "triton" if skipped >= _table_crossover(tokens, k, n, dtype) else "reference"


def choose_for(meta: _mask_cache.MaskMeta, tokens: int, dtype: torch.dtype) -> str:
    """``"triton"`` or ``"reference"`` for a call over ``tokens`` rows with the mask ``meta`` describes."""
    n, k = meta.shape
    if _library_anyway(tokens, n * k, dtype):
        return "reference"
    return _pick(1.0 - meta.occupied_fraction, tokens, k, n, dtype)


_FRACTIONS = None  # mask -> (mask._version, data_ptr, occupied fraction); weak on the mask


def _occupied_fraction(mask: torch.Tensor) -> float:
    # Kept apart from the metadata cache, which holds a bounded number of masks: a model with more masked layers
    # than that must not rebuild metadata (and sync) on every library-path call just to decide again.
    global _FRACTIONS
    if _FRACTIONS is None:
        from torch.utils.weak import WeakIdKeyDictionary

        _FRACTIONS = WeakIdKeyDictionary()
    version = _mask_cache._version(mask)
    hit = _FRACTIONS.get(mask) if version is not None else None
    if hit is not None and hit[:2] == (version, mask.data_ptr()):
        return hit[2]
    fraction = _masked_matmul_triton.mask_meta(mask).occupied_fraction
    if version is not None:
        _FRACTIONS[mask] = (version, mask.data_ptr(), fraction)
    return fraction


def choose(mask: torch.Tensor, tokens: int, dtype: torch.dtype) -> str:
    """:func:`choose_for` on the mask's metadata at the Triton kernels' tile (the metadata the kernels then use);
    the occupied fraction is remembered per mask state."""
    if _library_anyway(tokens, mask.numel(), dtype):
        return "reference"  # without building metadata for it
    n, k = mask.shape
    return _pick(1.0 - _occupied_fraction(mask), tokens, k, n, dtype)


def rule_text() -> str:
    """One line for ``lth info``: the rule and where its crossover comes from."""
    table = cpu_sparse.dispatch_table(TABLE_PATH)
    entries = table.get("entries", [])
    if entries:
        device = (table.get("machine") or {}).get("device", "?")
        source = f"{len(entries)} entries measured on {device}"
    else:
        source = f"default {float(table.get('default_crossover', DEFAULT_CROSSOVER)):.2f}, not measured"
    return (f"per call: triton where the mask's skipped-tile fraction reaches the crossover of "
            f"masked_matmul_table.json ({source}), else reference = torch's GEMM (cuBLAS/MKL) on the weight as "
            f"stored, dW masked in place")
