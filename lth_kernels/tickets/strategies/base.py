"""The strategy base class and registry.

A strategy scores weights (higher = more worth keeping); ``prune`` turns scores into masks with the
shared structure/selection code. Adding one = a file with a ``Strategy`` subclass decorated with
``@register_strategy("name")`` + its import line in ``strategies/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from lth_kernels.tickets.strategies.structure import Count, Structure, block_select, nm_select, threshold_select


@dataclass
class PruneContext:
    """Everything a strategy sees. ``params`` and ``current`` are keyed by canonical parameter name;
    ``current`` masks are bool tensors on their parameter's device (``True`` = alive)."""

    model: nn.Module
    params: dict[str, nn.Parameter]
    current: dict[str, torch.Tensor]
    structure: Structure
    scope: str
    rule: str = "exact"
    block_norm: str = "l2"
    allow_empty: bool = False
    data: Iterable[Any] | None = None
    loss_fn: Callable[..., torch.Tensor] | None = None
    generator: torch.Generator | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Strategy:
    """Base class. Subclasses implement ``scores`` (or override ``group_scores`` / ``prune``).

    Class attributes: ``name`` (set by the registry), ``options`` (option name -> default; ``prune``
    rejects others), ``signed`` (scores may be negative: blocks sum them instead of taking a norm),
    ``needs_data`` / ``needs_loss`` (``prune`` checks ``data=`` / ``loss_fn=`` are given).
    """

    name: ClassVar[str] = ""
    options: ClassVar[dict[str, Any]] = {}
    signed: ClassVar[bool] = False
    needs_data: ClassVar[bool] = False
    needs_loss: ClassVar[bool] = False

    def scores(self, ctx: PruneContext) -> dict[str, torch.Tensor]:
        """Element scores per prunable weight (same shape, on the weight's device)."""
        raise NotImplementedError(f"strategy {self.name!r} implements no scores()")

    def group_scores(self, ctx: PruneContext) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Group scores and group-alive flags per weight, for ``ctx.structure``."""
        return self.reduce(ctx, self.scores(ctx))

    def reduce(self, ctx: PruneContext, scores: dict[str, torch.Tensor]
               ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        groups, alive = {}, {}
        for name, s in scores.items():
            a = ctx.current[name].to(s.device)
            if not bool(torch.isfinite(s).logical_or_(~a).all()):
                raise FloatingPointError(f"strategy {self.name!r} produced non-finite scores for {name!r}")
            groups[name], alive[name] = ctx.structure.reduce(s, a, norm=ctx.block_norm, signed=self.signed)
        return groups, alive

    def select(self, ctx: PruneContext, groups: dict[str, torch.Tensor], alive: dict[str, torch.Tensor],
               count: Count, rule: str | None = None) -> dict[str, torch.Tensor]:
        """Group scores -> new element masks (``current & keep``)."""
        st = ctx.structure
        if st.kind == "nm":
            keep = {n: nm_select(groups[n], alive[n], st.n, st.m) for n in groups}
        elif st.kind == "block":
            weights = {n: st.group_weights(ctx.current[n]) for n in groups}
            keep = block_select(groups, alive, weights, ctx.scope, count, rule or ctx.rule, ctx.allow_empty)
        else:
            keep = threshold_select(groups, alive, ctx.scope, count, rule or ctx.rule)
        return {n: ctx.current[n] & st.expand(keep[n], ctx.current[n].shape).to(ctx.current[n].device)
                for n in groups}

    def prune(self, ctx: PruneContext, count: Count) -> dict[str, torch.Tensor]:
        """New masks for ``ctx.params``: score once, select once."""
        groups, alive = self.group_scores(ctx)
        return self.select(ctx, groups, alive, count)


_REGISTRY: dict[str, type[Strategy]] = {}


def register_strategy(name: str) -> Callable[[type[Strategy]], type[Strategy]]:
    """Class decorator: make a ``Strategy`` subclass available as ``prune(model, name, ...)``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty string, got {name!r}")

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise TypeError(f"register_strategy({name!r}): expected a Strategy subclass, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"register_strategy: a strategy named {name!r} exists already ({_REGISTRY[name]!r})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def strategy_names() -> list[str]:
    return sorted(_REGISTRY)


def get_strategy(name: str) -> Strategy:
    """A fresh instance of the registered strategy ``name``."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"strategy: unknown pruning strategy {name!r}; valid: {', '.join(strategy_names())}")
    return _REGISTRY[name]()
