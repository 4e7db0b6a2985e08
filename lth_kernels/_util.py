"""Small helpers shared across subpackages (registries, parameter names)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable


def check_kwargs(what: str, builder: Callable, kwargs: dict, fixed: Iterable[str], extra: Iterable[str] = ()) -> None:
    """One-line error for keyword arguments ``builder`` does not take, instead of a TypeError deep inside.

    ``fixed`` names the builder parameters the registry fills itself; ``extra`` names the ones the registry
    consumes before calling the builder (listed as accepted). Builders with ``**kwargs`` accept anything.
    """
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    fixed = set(fixed)
    known = [p for p in params if p not in fixed] + list(extra)
    bad = sorted(set(kwargs) - set(known))
    if bad:
        raise ValueError(f"{', '.join(bad)}: {what} takes no such argument; it takes: {', '.join(known) or 'none'}")


def canonical_name(name: str) -> str:
    """``name`` without DDP's leading ``module.`` and torch.compile's ``_orig_mod`` segments (anywhere: compiling
    a submodule leaves one in the middle; no user module is named that)."""
    parts = [p for p in name.split(".") if p != "_orig_mod"]
    while parts and parts[0] == "module":
        parts = parts[1:]
    return ".".join(parts)
