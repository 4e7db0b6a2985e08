"""``prune(model, strategy, fraction, ...) -> Ticket``: one pruning step with any registered strategy."""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from lth_kernels.tickets.prunable import canonical_name, iter_maskable, model_name, prunable_parameters
from lth_kernels.tickets.strategies.base import PruneContext, Strategy, get_strategy
from lth_kernels.tickets.strategies.structure import BLOCK_NORMS, RULES, fraction_count, parse_structure
from lth_kernels.tickets.ticket import Ticket

SCOPES = ("global", "layerwise")


def _check_fraction(fraction: Any, required: bool, name: str = "fraction") -> float | None:
    if fraction is None and not required:
        return None
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0.0 < fraction < 1.0 \
            or math.isnan(fraction):
        raise ValueError(f"{name}: expected a number in (0, 1) (the share of the remaining weights to remove), "
                         f"got {fraction!r}")
    return float(fraction)


def fractions_by_layer(names: Iterable[str], fraction_by: Mapping[str, float]) -> dict[str, float]:
    """``{name: fraction}`` for the names a ``fraction_by`` glob matches (the parameter's or its module's name);
    the most specific glob wins: an exact name, else the glob with the most literal characters. Unmatched names
    are left out."""
    for glob, f in fraction_by.items():
        if not isinstance(glob, str) or not glob:
            raise ValueError(f"fraction_by: every key must be a non-empty glob, got {glob!r}")
        _check_fraction(f, required=True, name=f"fraction_by[{glob!r}]")
    out = {}
    for name in names:
        module = name.rsplit(".", 1)[0] if "." in name else ""
        hits = [g for g in fraction_by if fnmatch.fnmatchcase(name, g) or (module and fnmatch.fnmatchcase(module, g))]
        if not hits:
            continue
        exact = [g for g in hits if g in (name, module)]
        if exact:
            out[name] = float(fraction_by[exact[0]])
            continue
        literal = lambda g: sum(c not in "*?[]" for c in g)
        most = max(map(literal, hits))
        best = [g for g in hits if literal(g) == most]
        if len({fraction_by[g] for g in best}) > 1:
            raise ValueError(f"fraction_by: {name!r} matches {' and '.join(map(repr, best))} equally well with "
                             "different fractions; name it exactly")
        out[name] = float(fraction_by[best[0]])
    return out


def prune(model: nn.Module, strategy: str, fraction: float | None = None, *,
          current: Mapping[str, torch.Tensor] | None = None, scope: str = "global", structure: str = "unstructured",
          exclude: Iterable[str] = (), use_default_exclude: bool = True, data: Iterable[Any] | None = None,
          loss_fn: Callable[..., torch.Tensor] | None = None, generator: torch.Generator | None = None,
          block_norm: str = "l2", rule: str = "exact", allow_empty: bool = False,
          metadata: Mapping[str, Any] | None = None, fraction_by: Mapping[str, float] | None = None,
          **options: Any) -> Ticket:
    """Remove ``fraction`` of the remaining prunable weights of ``model`` by ``strategy``; return the new ticket.

    Args:
        model: any ``nn.Module``; its ``nn.Linear`` / ``nn.Conv2d`` weights (masked layers included) are
            maskable; the prunable ones are those not excluded (see ``prunable_parameters``).
        strategy: a registered name (``strategy_names()``): ``magnitude``, ``random``, ``snip``, ``grasp``,
            ``synflow``, ...
        fraction: share of the *remaining* weights to remove, in (0, 1); open_lth removes
            ``ceil(fraction * remaining)``, ties at the threshold included; block structures remove whole
            blocks until at least that many weights are gone (see ``structure.py``). Ignored for N:M
            structures (fixed density), where it may be ``None``.
        current: the ticket pruned further (default: ``Ticket.from_model(model)``, i.e. the masks of the
            model's masked layers). Weights it prunes stay pruned.
        scope: ``"global"`` (one ranking over all prunable weights) or ``"layerwise"`` (``fraction`` of
            each layer).
        structure: ``"unstructured"``, ``"block<b>"`` / ``"block<r>x<c>"``, ``"N:M"`` (``"2:4"``).
        exclude / use_default_exclude: globs of weights not to prune (they keep their current mask, and
            appear in the ticket all-ones when new); the model's ``default_prune_exclude`` applies unless
            ``use_default_exclude=False``.
        data, loss_fn: an iterable of ``(x, y)`` batches and ``loss_fn(output, y)``, for the strategies that
            need them (snip, grasp; synflow takes only the input shape from ``data``).
        generator: ``torch.Generator`` for the random strategy (seeded runs).
        block_norm: ``"l2"`` or ``"l1"``: block score = root mean square or mean absolute value of the
            element scores over the block's alive weights (per weight, so edge blocks compete fairly).
        rule: ``"exact"`` (threshold = the ``n``-th smallest score) or ``"open_lth"`` (open_lth's index
            ``sorted[n]``, one more weight removed when scores are distinct).
        allow_empty: block structures keep each layer's best block unless ``True`` (then a layer may lose
            all its weights).
        metadata: extra ticket metadata (``source_run``, ``level``, ...), overriding the defaults.
        fraction_by: ``{glob: fraction}`` per layer group, e.g. ``{"convs.*": 0.1, "fc_layers.*": 0.2,
            "fc.weight": 0.1}`` (the LTH paper's Conv-4 rates): each layer a glob matches loses that fraction
            of its own remaining weights (layerwise; the most specific glob wins, see
            ``fractions_by_layer``), also when only the model's ``default_prune_exclude`` excluded it; the
            other prunable layers lose ``fraction`` under ``scope``. One-shot strategies only.
        **options: strategy options (``input_shape``, ``iterations``, ``num_batches``, ``temperature``, ...).

    The ticket covers every maskable weight of the model, in model order; ``level`` is the current
    ticket's level + 1 (1 when it has none).
    """
    strat = get_strategy(strategy)
    st = parse_structure(structure)
    if scope not in SCOPES:
        raise ValueError(f"scope: expected one of {SCOPES}, got {scope!r}")
    if rule not in RULES:
        raise ValueError(f"rule: expected one of {RULES}, got {rule!r}")
    if block_norm not in BLOCK_NORMS:
        raise ValueError(f"block_norm: expected one of {BLOCK_NORMS}, got {block_norm!r}")
    fraction_by = dict(fraction_by or {})
    if fraction_by and (st.fixed_density or type(strat).prune is not Strategy.prune):
        raise ValueError(f"fraction_by: per-layer fractions need a one-shot strategy and a structure of free density, "
                         f"not {strategy!r} with {structure!r}")
    fraction = _check_fraction(fraction, required=not st.fixed_density and not fraction_by)
    unknown = sorted(set(options) - set(strat.options))
    if unknown:
        valid = ", ".join(sorted(strat.options)) or "none"
        raise TypeError(f"strategy {strategy!r} takes no option {unknown[0]!r} (its options: {valid})")
    if strat.needs_data and data is None:
        raise ValueError(f"data: strategy {strategy!r} needs data=<iterable of (x, y) batches>")
    if strat.needs_loss and loss_fn is None:
        raise ValueError(f"loss_fn: strategy {strategy!r} needs loss_fn=<callable(output, y)>, e.g. "
                         "torch.nn.functional.cross_entropy")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator: expected a torch.Generator, got {type(generator).__name__}")

    include = tuple(fraction_by)
    params = prunable_parameters(model, exclude, use_default_exclude=use_default_exclude, include=include)
    by_layer = fractions_by_layer(params, fraction_by)
    if fraction is None and not st.fixed_density and set(by_layer) != set(params):
        rest = [n for n in params if n not in by_layer]
        raise ValueError(f"fraction: needed for the layers no fraction_by glob matches ({', '.join(rest)})")
    if current is None:
        base = Ticket.from_model(model)
    else:
        base = current if isinstance(current, Ticket) else Ticket(current)
        base.match(model)  # names and shapes, one-line errors
    base_masks = {canonical_name(k): m for k, m in base.items()}
    cur = {name: (base_masks[name] if name in base_masks else torch.ones(p.shape, dtype=torch.bool)).to(p.device)
           for name, p in params.items()}

    ctx = PruneContext(model=model, params=params, current=cur, structure=st, scope=scope, rule=rule,
                       block_norm=block_norm, allow_empty=bool(allow_empty), data=data, loss_fn=loss_fn,
                       generator=generator,
                       options={**strat.options, **options})
    count = fraction_count(fraction) if fraction is not None else (lambda unit, remaining: 0)
    new = strat.prune(ctx, count) if not by_layer else _prune_by_layer(strat, ctx, count, by_layer)

    masks = {}
    for name, module, _ in iter_maskable(model):
        if name in new:
            masks[name] = new[name].to("cpu")
        elif name in base_masks:
            masks[name] = base_masks[name]
        else:
            masks[name] = torch.ones(module.weight.shape, dtype=torch.bool)
    try:
        level = str(int(base.metadata.get("level", "0")) + 1)
    except ValueError:
        level = "1"
    meta = {"strategy": strat.name, "structure": str(st), "level": level,
            "model": base.metadata.get("model", model_name(model)),
            "excluded": ",".join(n for n in masks if n not in params)}
    if not st.fixed_density:
        meta.update(scope=scope, fraction=repr(fraction))
    if by_layer:
        meta["fraction_by"] = json.dumps(fraction_by, sort_keys=True)
    if rule != "exact":
        meta["rule"] = rule
    for key in ("source_run",):
        if key in base.metadata:
            meta[key] = base.metadata[key]
    return Ticket(masks, {**meta, **(metadata or {})})


def _prune_by_layer(strat: Strategy, ctx: PruneContext, count, by_layer: dict[str, float]) -> dict[str, torch.Tensor]:
    """Score once; the ``by_layer`` layers each lose their own fraction, the others ``count`` under ctx.scope."""
    groups, alive = strat.group_scores(ctx)
    part = lambda names: ({n: groups[n] for n in names}, {n: alive[n] for n in names})
    rest = [n for n in groups if n not in by_layer]
    new = strat.select(ctx, *part(rest), count) if rest else {}
    per_layer = {f: fraction_count(f) for f in set(by_layer.values())}
    new.update(strat.select(dataclasses.replace(ctx, scope="layerwise"), *part(list(by_layer)),
                            lambda unit, remaining: per_layer[by_layer[unit]](unit, remaining)))
    return {n: new[n] for n in groups}  # model order
