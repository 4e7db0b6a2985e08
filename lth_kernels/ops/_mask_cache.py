"""Per-mask metadata of the masked-matmul kernels, built on the mask's device and cached per mask state.

A (N, K) weight mask becomes, once per mask change:

* ``bits``: the packed mask (:func:`lth_kernels.ops.pack_mask`), 1 bit per weight, expanded in registers while a
  kernel loads a W tile;
* ``occupancy``: the (tn x tk) tile map (:func:`lth_kernels.ops.tile_occupancy`);
* ``fwd_table``: for the forward pass (output columns = N, reduction = K), per group of ``r`` consecutive
  N-tiles (``r`` in :data:`FANOUT`, so one table serves kernels whose output tile is 1, 2 or 4 base tiles wide),
  a row ``[count, k_tile, k_tile, ...]`` listing the K-tiles holding any kept weight of the group, in order;
* ``bwd_table``: the same for dX (output columns = K, reduction = N): per group of K-tiles, the occupied N-tiles.

Everything is built with sync-free torch ops on the mask's device (no host round trip), so a mask change in the
middle of training costs a few tiny kernels. The tables of the three fan-outs are stacked along rows;
``fwd_rows[i]`` is the first row of fan-out ``FANOUT[i]``.

:func:`get` caches the metadata per mask tensor: keyed on its identity (a weak reference, so a freed mask whose
address gets reused never hits), ``data_ptr``, shape, strides and ``_version``. Every in-place write through the
tensor or its views (``copy_``, ``masked_fill_``, ``MaskedLinear.set_mask``) bumps ``_version`` and so
invalidates; writes through ``mask.data`` do not, so call :func:`clear` after those.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass

import torch

from lth_kernels.ops.mask_meta import pack_mask, tile_occupancy

FANOUT = (1, 2, 4)  # output-tile widths, in base tiles, that the tables serve
CACHE_SIZE = 256


def _group_rows(occ: torch.Tensor, r: int) -> torch.Tensor:
    """OR of every ``r`` consecutive rows (the last group padded with empty rows)."""
    rows, cols = occ.shape
    groups = -(-rows // r)
    padded = torch.nn.functional.pad(occ, (0, 0, 0, groups * r - rows))
    return padded.view(groups, r, cols).any(dim=1)


def _compact(occ: torch.Tensor) -> torch.Tensor:
    """(rows, cols) bool -> (rows, 1 + cols) int32 rows ``[count, occupied column indices in order, filler]``."""
    count = occ.sum(dim=1, dtype=torch.int32)
    # A stable sort of "not occupied" puts the occupied columns first, in order, with no host sync.
    order = torch.argsort((~occ).to(torch.int8), dim=1, stable=True).to(torch.int32)
    return torch.cat([count[:, None], order], dim=1).contiguous()


def _stack_tables(occ: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    tables, starts, row = [], [], 0
    for r in FANOUT:
        t = _compact(_group_rows(occ, r))
        tables.append(t)
        starts.append(row)
        row += t.shape[0]
    return torch.cat(tables, dim=0), tuple(starts)


@dataclass(frozen=True)
class MaskMeta:
    """Kernel metadata of one (N, K) bool mask at base tile ``tile = (tn, tk)``; see the module docstring."""

    shape: tuple[int, int]
    tile: tuple[int, int]
    bits: torch.Tensor  # (N, ceil(K/32)) int32
    occupancy: torch.Tensor  # (ceil(N/tn), ceil(K/tk)) bool
    fwd_table: torch.Tensor  # int32, rows per fan-out group of N-tiles: [count, k-tiles...]
    fwd_rows: tuple[int, ...]
    bwd_table: torch.Tensor  # int32, rows per fan-out group of K-tiles: [count, n-tiles...]
    bwd_rows: tuple[int, ...]

    @classmethod
    def from_mask(cls, mask: torch.Tensor, block: tuple[int, int] = (64, 64)) -> MaskMeta:
        """Builds the metadata of a 2-D bool ``mask`` on its device. ``block``: base tile (tn, tk), tk % 32 == 0."""
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool or mask.dim() != 2:
            got = f"{mask.dtype} shape {tuple(mask.shape)}" if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise TypeError(f"mask: expected a 2-D torch.bool tensor, got {got}")
        if (not isinstance(block, tuple | list) or len(block) != 2
                or not all(isinstance(b, int) and b > 0 for b in block) or block[1] % 32):
            raise ValueError(f"block: expected two positive ints (tn, tk) with tk a multiple of 32, got {block!r}")
        block = (int(block[0]), int(block[1]))
        occ = tile_occupancy(mask, block)
        fwd, fwd_rows = _stack_tables(occ)
        bwd, bwd_rows = _stack_tables(occ.t())
        return cls(tuple(mask.shape), block, pack_mask(mask), occ, fwd, fwd_rows, bwd, bwd_rows)

    @functools.cached_property
    def occupied_fraction(self) -> float:
        """Share of the W-tile steps the kernels still run: per table (forward, dX), the listed reduction tiles over
        all tiles at the widest output groups (fan-out ``FANOUT[-1]``, where the OR over the group skips least, so
        the figure holds whatever tile the autotuner picks), averaged over the two tables.

        1.0 for an unstructured mask (no group of tiles is empty unless the mask is almost empty); the dispatch
        compares 1 minus it with the crossover table. One host sync, once per mask state (cached with the metadata).
        """
        listed, steps = [], []
        for table, rows in ((self.fwd_table, self.fwd_rows), (self.bwd_table, self.bwd_rows)):
            widest = table[rows[-1]:]
            listed.append(widest[:, 0].sum(dtype=torch.int64))
            steps.append(widest.shape[0] * (widest.shape[1] - 1))
        counts = torch.stack(listed).tolist()
        return sum(c / s if s else 1.0 for c, s in zip(counts, steps, strict=True)) / len(steps)

    def tiles(self, orientation: str, r: int = 1) -> list[list[int]]:
        """Host-side view of a table (tests, debugging): per output-tile group, the listed reduction tiles."""
        table, rows = (self.fwd_table, self.fwd_rows) if orientation == "fwd" else (self.bwd_table, self.bwd_rows)
        i = FANOUT.index(r)
        end = rows[i + 1] if i + 1 < len(rows) else table.shape[0]
        return [row[1:1 + row[0]] for row in table[rows[i]:end].tolist()]


_lock = threading.Lock()
_cache: OrderedDict[tuple, tuple[weakref.ref, MaskMeta, int]] = OrderedDict()
stats = {"hits": 0, "builds": 0}


def _version(mask: torch.Tensor) -> int | None:
    try:
        return mask._version
    except RuntimeError:  # inference tensors carry no version counter: never cache them
        return None


def get(mask: torch.Tensor, block: tuple[int, int] = (64, 64)) -> MaskMeta:
    """The cached :class:`MaskMeta` of ``mask`` at ``block``, rebuilt when the mask was written since."""
    version = _version(mask)
    if version is None:
        stats["builds"] += 1
        return MaskMeta.from_mask(mask, block)
    key = (id(mask), mask.data_ptr(), mask.device, tuple(mask.shape), mask.stride(), tuple(block))
    with _lock:
        hit = _cache.get(key)
        if hit is not None and hit[0]() is mask and hit[2] == version:
            _cache.move_to_end(key)
            stats["hits"] += 1
            return hit[1]
    meta = MaskMeta.from_mask(mask, block)
    with _lock:
        stats["builds"] += 1
        _cache[key] = (weakref.ref(mask), meta, version)
        _cache.move_to_end(key)
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return meta


# id(mask) -> (weak reference, (version, data_ptr), {key: value}): values derived from one mask state, kept while
# the mask lives. A plain dict on the id (the reference confirms identity; its callback drops the slot with the
# mask), so a hit costs well under a microsecond: these run on every call of a masked layer.
_remembered: dict[int, tuple] = {}


def remember(mask: torch.Tensor, key, build):
    """``build()`` once per state of ``mask`` (rebuilt after an in-place write or a new allocation) and ``key``.

    Unbounded in the number of masks but weak on each: unlike :func:`get`'s bounded cache, a model with many
    masked layers never rebuilds (and host syncs) on every call."""
    version = _version(mask)
    if version is None:
        return build()
    ident, state = id(mask), (version, mask.data_ptr())
    slot = _remembered.get(ident)
    if slot is None or slot[0]() is not mask or slot[1] != state:
        ref = weakref.ref(mask, lambda _, ident=ident: _remembered.pop(ident, None))
        slot = _remembered[ident] = (ref, state, {})
    values = slot[2]
    if key not in values:
        values[key] = build()
    return values[key]


def clear() -> None:
    """Drops every cached entry (after writing a mask through ``.data``, which does not bump its version)."""
    with _lock:
        _cache.clear()
    _remembered.clear()
