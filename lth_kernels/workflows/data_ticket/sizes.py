"""Ticket sizes without torch: keep rates, per-stage token counts and drop blocks (so that hparams
validation and ``lth data-ticket --help`` stay instant)."""

from __future__ import annotations

import math


def check_keep_rate(keep_rate, name: str = "keep_rate") -> float:
    """A keep rate as a float in (0, 1]; one-line error otherwise."""
    try:
        r = float(keep_rate)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in (0, 1], got {keep_rate!r}") from None
    if not 0.0 < r <= 1.0 or math.isnan(r):
        raise ValueError(f"{name}: expected a number in (0, 1], got {keep_rate!r}")
    return r


def stage_counts(num_patches: int, keep_rate: float, num_stages: int) -> list[int]:
    """Surviving patch tokens after each stage: ``n_i = ceil(r * n_{i-1})`` from ``n_0 = num_patches``.

    ``ceil`` of a product that is an integer up to rounding (0.75 * 16) must not round up to the next one,
    hence the small tolerance.
    """
    r = check_keep_rate(keep_rate)
    counts, n = [], int(num_patches)
    for _ in range(num_stages):
        n = max(1, math.ceil(round(r * n, 9)))
        counts.append(n)
    return counts


def scheduled_keep_rate(step: int, steps_per_epoch: int, keep_rate: float, start_epoch: int, epochs: int) -> float:
    """The keep rate of training step ``step`` under the reference's cosine ramp (EViT's ``adjust_keep_rate``,
    which DynamicViT-style token dropping uses): 1 during the first ``start_epoch`` epochs, then
    ``r + (1 - r) * (1 + cos(pi * t)) / 2`` with ``t`` the fraction of the ``epochs`` ramp epochs done (per step),
    ``r`` from epoch ``start_epoch + epochs`` on."""
    r = check_keep_rate(keep_rate)
    epoch = step // steps_per_epoch
    if epoch < start_epoch:
        return 1.0
    if epoch >= start_epoch + epochs:
        return r
    t = (step - start_epoch * steps_per_epoch) / (epochs * steps_per_epoch)
    return r + (1.0 - r) * 0.5 * (1.0 + math.cos(math.pi * t))


def default_drop_blocks(depth: int) -> tuple[int, ...]:
    """Blocks 3, 6, 9 of 12 (the reference's ``drop_loc``) scaled to ``depth``: ``floor(i * depth / 4)``,
    i = 1, 2, 3 (depth 4 -> 1, 2, 3; depth 6 -> 1, 3, 4), duplicates removed."""
    if depth < 2:
        raise ValueError(f"depth: a selector needs at least 2 blocks to drop tokens in, got {depth}")
    return tuple(sorted({max(1, i * depth // 4) for i in (1, 2, 3)}))


def parse_drop_blocks(text: str, depth: int) -> tuple[int, ...]:
    """``"3,6,9"`` -> (3, 6, 9), checked against ``depth``; ``""`` -> ``default_drop_blocks(depth)``."""
    if not str(text).strip():
        return default_drop_blocks(depth)
    try:
        blocks = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise ValueError(f"drop_blocks: expected block indices like '3,6,9', got {text!r}") from None
    if not blocks or list(blocks) != sorted(set(blocks)) or blocks[0] < 0 or blocks[-1] >= depth:
        raise ValueError(f"drop_blocks: expected increasing block indices in [0, {depth}), got {text!r}")
    return blocks
