"""Mask structures and the selection rule shared by every strategy.

Structures (the ``structure=`` argument of ``prune``):

* ``"unstructured"``: every weight is its own group.
* ``"block<b>"`` / ``"block<r>x<c>"``: the 2-D view of a weight (``(out, in)`` for linear,
  ``(out, in*kh*kw)`` for conv) is tiled into ``r x c`` blocks (``block16`` = 16x16; ``r`` runs over
  output rows, ``c`` over input columns); edge blocks are smaller. A block's score is *per weight*, so
  that a small edge block competes fairly with a full one: the root mean square (``block_norm="l2"``,
  default) or the mean absolute value (``"l1"``) of its element scores over the weights still alive in
  it (a signed score, GraSP's, is averaged). Whole blocks are pruned, but counts and ``fraction`` are in
  *weights*, as for unstructured: see the block selection below.
* ``"N:M"`` (``"2:4"``): in every group of ``M`` consecutive weights along the input dimension of the
  2-D view, the ``N`` best alive weights are kept; a last partial group of length ``L`` keeps
  ``min(N, L)``. The density is fixed, so ``fraction`` and ``scope`` are ignored.

Selection (unstructured and block), the open_lth rule: of the ``R`` groups still alive in a unit (all
layers for ``scope="global"``, each layer for ``"layerwise"``), ``n = ceil(fraction * R)`` are removed:
the threshold is the ``n``-th smallest alive score and a group is kept iff its score is strictly
above it, so ties at the threshold are removed too. ``rule="open_lth"`` reproduces open_lth's index
exactly (threshold = ``sorted(scores)[n]``, 0-based, i.e. one more weight removed when scores are
distinct). Groups pruned before stay pruned.

Block selection: of the ``R`` weights still alive in a unit, ``n = ceil(fraction * R)`` are removed by
removing whole blocks in ascending score order (ties: the earlier block in model order, then row-major,
goes first) until at least ``n`` weights are gone, so a level removes the fraction it names, overshooting
by less than one block. Each layer's last block in that order (its best) is never removed (no layer is emptied by a
fraction < 1) unless ``allow_empty=True``; when only protected blocks are left, fewer than ``n`` go.
``rule="open_lth"`` removes ``n + 1`` weights' worth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

STRUCTURE_FORMS = "'unstructured', 'block<b>' (e.g. 'block16'), 'block<r>x<c>' (e.g. 'block4x8'), 'N:M' (e.g. '2:4')"
RULES = ("exact", "open_lth")
BLOCK_NORMS = ("l2", "l1")

# count(unit, remaining) -> number to remove: groups (unstructured) or weights (blocks, removed in whole blocks);
# unit is a layer name, or None for the global unit.
Count = Callable[[str | None, int], int]


@dataclass(frozen=True)
class Structure:
    kind: str  # "unstructured" | "block" | "nm"
    rows: int = 1
    cols: int = 1
    n: int = 0
    m: int = 0

    def __str__(self) -> str:
        if self.kind == "block":
            return f"block{self.rows}x{self.cols}"
        if self.kind == "nm":
            return f"{self.n}:{self.m}"
        return "unstructured"

    @property
    def fixed_density(self) -> bool:
        return self.kind == "nm"

    def grid_shape(self, shape: torch.Size) -> tuple[int, ...]:
        """Shape of the group-score tensor for a weight of ``shape``."""
        if self.kind == "block":
            out, k = _shape_2d(shape)
            return (-(-out // self.rows), -(-k // self.cols))
        return tuple(shape)

    def reduce(self, scores: torch.Tensor, alive: torch.Tensor, *, norm: str = "l2", signed: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """Element scores and alive flags -> group scores and group-alive flags."""
        if self.kind != "block":
            return scores, alive
        s = _pad_blocks(torch.where(alive, scores, torch.zeros((), dtype=scores.dtype, device=scores.device)),
                        self.rows, self.cols)
        a = _pad_blocks(alive, self.rows, self.cols)
        # Per-weight scores: a norm summed over a block grows with its size, so partial edge blocks would
        # always go first. Dead blocks (no alive weight) divide by 1 and score 0; they are not alive anyway.
        size = a.sum(dim=(1, 3)).clamp_min(1).to(s.dtype)
        if signed:
            g = s.sum(dim=(1, 3)) / size
        elif norm == "l2":
            g = (s.square().sum(dim=(1, 3)) / size).sqrt()
        else:
            g = s.abs().sum(dim=(1, 3)) / size
        return g, a.any(dim=3).any(dim=1)

    def group_weights(self, alive: torch.Tensor) -> torch.Tensor:
        """Element alive flags -> number of alive weights per group (int64, the group-score shape)."""
        if self.kind != "block":
            return alive.long()
        return _pad_blocks(alive, self.rows, self.cols).sum(dim=(1, 3))

    def expand(self, keep: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """Group keep flags -> element keep flags of ``shape``."""
        if self.kind != "block":
            return keep.reshape(shape)
        out, k = _shape_2d(shape)
        full = keep.repeat_interleave(self.rows, dim=0).repeat_interleave(self.cols, dim=1)
        return full[:out, :k].reshape(shape)


def _shape_2d(shape: torch.Size) -> tuple[int, int]:
    return (shape[0], math.prod(shape[1:])) if len(shape) >= 2 else (1, math.prod(shape))


def _pad_blocks(t: torch.Tensor, r: int, c: int) -> torch.Tensor:
    out, k = _shape_2d(t.shape)
    t2 = t.reshape(out, k)
    pad_r, pad_c = (-out) % r, (-k) % c
    if pad_r or pad_c:
        t2 = F.pad(t2.to(torch.uint8), (0, pad_c, 0, pad_r)).bool() if t2.dtype == torch.bool \
            else F.pad(t2, (0, pad_c, 0, pad_r))
    return t2.view((out + pad_r) // r, r, (k + pad_c) // c, c)


def parse_structure(structure: str | Structure) -> Structure:
    if isinstance(structure, Structure):
        return structure
    if not isinstance(structure, str):
        raise ValueError(f"structure: expected one of {STRUCTURE_FORMS}, got {structure!r}")
    s = structure.strip().lower()
    if s == "unstructured":
        return Structure("unstructured")
    if m := re.fullmatch(r"block(\d+)(?:x(\d+))?", s):
        r = int(m.group(1))
        c = int(m.group(2)) if m.group(2) else r
        if r < 1 or c < 1:
            raise ValueError(f"structure: block sizes must be >= 1, got {structure!r}")
        return Structure("block", rows=r, cols=c)
    if m := re.fullmatch(r"(\d+):(\d+)", s):
        n, mm = int(m.group(1)), int(m.group(2))
        if not 0 < n < mm:
            raise ValueError(f"structure: N:M needs 0 < N < M, got {structure!r}")
        return Structure("nm", n=n, m=mm)
    raise ValueError(f"structure: expected one of {STRUCTURE_FORMS}, got {structure!r}")


def fraction_count(fraction: float) -> Count:
    """open_lth's count: ``ceil(fraction * remaining)``; the product is rounded to 9 decimals first so that
    float noise (0.1 * 30 = 3.0000000000000004) does not remove one weight more."""

    def count(unit: str | None, remaining: int) -> int:
        return min(remaining, math.ceil(round(fraction * remaining, 9)))

    return count


def _threshold(scores: torch.Tensor, remaining: int, n: int, rule: str) -> torch.Tensor | None | bool:
    """The keep threshold of one unit: ``scores`` flat with dead groups at +inf, ``remaining`` alive ones.

    Returns ``None`` (remove nothing), ``False`` (remove every alive group) or the threshold value.
    """
    k = n if rule == "exact" else n + 1  # open_lth: threshold = sorted(scores)[n] (0-based)
    if n <= 0 or remaining == 0:
        return None
    if k > remaining:
        return False
    return torch.kthvalue(scores, k).values  # dead groups (+inf) sort last: the k-th is an alive one


def _keep(scores: torch.Tensor, alive: torch.Tensor, threshold: torch.Tensor | None | bool) -> torch.Tensor:
    if threshold is None:
        return alive.clone()
    if threshold is False:
        return torch.zeros_like(alive)
    return alive & (scores > threshold.to(scores.device, scores.dtype))


def threshold_select(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], scope: str, count: Count,
                     rule: str = "exact") -> dict[str, torch.Tensor]:
    """Group scores + alive flags -> keep flags (per name), removing ``count(unit, remaining)`` per unit."""
    # Dead groups become +inf instead of being dropped: a boolean gather of every score costs more than kthvalue.
    inf = math.inf
    if scope == "layerwise":
        keep = {}
        for name, s in scores.items():
            a = alive[name]
            remaining = int(a.sum())
            flat = torch.where(a, s, torch.full((), inf, dtype=s.dtype, device=s.device)).flatten()
            keep[name] = _keep(s, a, _threshold(flat, remaining, count(name, remaining), rule))
        return keep
    names = list(scores)
    device = scores[names[0]].device
    # One dtype for the global ranking: float32 holds fp32/fp16/bf16 scores exactly; float64 if any is float64.
    dtype = torch.float64 if any(s.dtype == torch.float64 for s in scores.values()) else torch.float32
    vec = torch.cat([torch.where(alive[n], scores[n], torch.full((), inf, dtype=scores[n].dtype,
                                                                 device=scores[n].device)).flatten().to(device, dtype)
                     for n in names])
    remaining = sum(int(a.sum()) for a in alive.values())
    threshold = _threshold(vec, remaining, count(None, remaining), rule)
    return {n: _keep(scores[n].to(dtype), alive[n], threshold) for n in names}


def block_select(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], weights: dict[str, torch.Tensor],
                 scope: str, count: Count, rule: str = "exact", allow_empty: bool = False) -> dict[str, torch.Tensor]:
    """Block scores, alive flags and alive-weight counts per block -> keep flags, removing at least
    ``count(unit, alive weights)`` weights per unit in whole blocks (lowest score first)."""
    units = [[n] for n in scores] if scope == "layerwise" else [list(scores)]
    keep = {}
    for names in units:
        remaining = sum(int(weights[n][alive[n]].sum()) for n in names)
        n_remove = count(names[0] if scope == "layerwise" else None, remaining) if remaining else 0
        if n_remove > 0 and rule == "open_lth":
            n_remove += 1
        dtype = torch.float64 if any(scores[n].dtype == torch.float64 for n in names) else torch.float32
        flat_s, flat_w, flat_a = [], [], []
        for n in names:
            a = alive[n].flatten()
            if not allow_empty and bool(a.any()):
                # Protect the layer's block that would go last (best score, the later one on ties) so that no
                # layer is emptied.
                s = torch.where(a, scores[n].flatten().to(dtype), torch.full((), -math.inf, dtype=dtype,
                                                                              device=a.device))
                a = a.clone()
                a[a.numel() - 1 - int(torch.argmax(s.flip(0)))] = False
            flat_s.append(scores[n].flatten().to(dtype).cpu())
            flat_w.append(weights[n].flatten().cpu())
            flat_a.append(a.cpu())
        s, w, a = torch.cat(flat_s), torch.cat(flat_w), torch.cat(flat_a)
        remove = torch.zeros_like(a)
        if n_remove > 0 and bool(a.any()):
            cand = a.nonzero().flatten()  # ascending index: the stable sort breaks score ties by position
            order = cand[torch.sort(s[cand], stable=True).indices]
            cum = torch.cumsum(w[order], 0)
            # The shortest prefix that removes >= n_remove weights (all candidates when they hold fewer).
            take = min(int(torch.searchsorted(cum, torch.tensor(n_remove, dtype=cum.dtype))) + 1, len(order))
            remove[order[:take]] = True
        offset = 0
        for n in names:
            size = alive[n].numel()
            keep[n] = alive[n] & ~remove[offset:offset + size].reshape(alive[n].shape).to(alive[n].device)
            offset += size
    return keep


def nm_select(scores: torch.Tensor, alive: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` best alive weights of every ``m`` consecutive ones along the input dim of the 2-D view.

    Ties inside a group go to the lower index (stable sort), so the result is deterministic.
    """
    out, k = _shape_2d(scores.shape)
    s = torch.where(alive, scores, torch.full((), -math.inf, dtype=scores.dtype, device=scores.device))
    s = s.reshape(out, k)
    a = alive.reshape(out, k)
    pad = (-k) % m
    if pad:
        s = F.pad(s, (0, pad), value=-math.inf)
        a = F.pad(a.to(torch.uint8), (0, pad)).bool()
    groups = s.view(out, -1, m)
    order = torch.sort(groups, dim=-1, descending=True, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(m, device=order.device).expand_as(order))
    keep = (rank < n) & a.view(out, -1, m)
    return keep.view(out, -1)[:, :k].reshape(scores.shape)
