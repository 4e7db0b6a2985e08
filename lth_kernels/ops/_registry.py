"""Backend registry: which implementations of each op exist, which are live, and which one a call gets.

Every op has a plain-PyTorch ``reference`` backend (any device, the test oracle) and optionally ``cpu``
(compiled C++/OpenMP), ``cuda`` (compiled CUDA) and ``triton`` backends. Selection, in order: the
per-call ``backend=`` argument, the ``LTH_KERNELS_BACKEND`` environment variable (a backend name, for every op
that implements it, or ``op=backend,op=backend``, strict), then the first live backend in the op's preference
order for the device.

An op may instead have a per-call *rule* on a device type (:func:`set_rule`): when more than one of the rule's
candidate backends is live, :func:`resolve` returns ``"auto"`` and the op itself picks, call by call, from the
data (e.g. the mask's tile occupancy), so a compiled graph keeps one opaque call.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lth_kernels import _ext

BACKENDS = ("reference", "cpu", "cuda", "triton")
AUTO = "auto"  # resolved backend name of a call whose op chooses from its data (see set_rule)

# Default preference per device type; an op may override it (e.g. when Triton beats the CUDA kernel).
DEFAULT_PREFERENCE = {"cuda": ("cuda", "triton", "reference"), "cpu": ("cpu", "reference")}


def _triton_status(device: torch.device) -> tuple[bool, str]:
    try:
        import triton  # noqa: F401
    except ImportError as e:  # pragma: no cover - triton ships with CUDA builds of torch
        return False, f"triton not importable ({e})"
    if device.type == "cuda":
        return (True, "ok") if torch.cuda.is_available() else (False, "no CUDA device")
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True, "ok (TRITON_INTERPRET=1: interpreter on CPU tensors)"
    return False, "Triton runs on CUDA tensors (or on CPU with TRITON_INTERPRET=1)"


def backend_status(backend: str, device: torch.device | str, needs: str | None = None) -> tuple[bool, str]:
    """(live, reason) for a backend on a device. ``needs`` names the compiled symbol the op requires."""
    device = torch.device(device)
    if backend == "reference":
        return True, "ok"
    if backend == "triton":
        return _triton_status(device)
    if backend in ("cpu", "cuda"):
        if device.type != backend:
            return False, f"{backend} backend runs on {backend} tensors, not {device.type}"
        if _ext.C is None:
            return False, f"lth_kernels._C not built ({_ext.load_error})"
        if backend == "cuda" and not _ext.has_cuda():
            return False, "lth_kernels._C built without CUDA sources"
        if backend == "cuda" and not torch.cuda.is_available():
            return False, "no CUDA device"
        if needs is not None and not _ext.has_op(needs):
            return False, f"_C has no {needs}"
        return True, "ok"
    raise ValueError(f"backend: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")


@dataclass(frozen=True)
class Rule:
    """A per-call choice among ``candidates`` (backend names) that the op makes from its data; ``text`` says how
    (printed by ``lth info``)."""

    candidates: tuple[str, ...]
    text: str


@dataclass
class OpBackends:
    """The implementations of one public op, keyed by backend name."""

    name: str
    impls: dict[str, Callable] = field(default_factory=dict)
    needs: dict[str, str] = field(default_factory=dict)  # backend -> compiled op it calls
    preference: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_PREFERENCE))
    rules: dict[str, Rule] = field(default_factory=dict)  # device type -> per-call rule

    def status(self, backend: str, device: torch.device | str) -> tuple[bool, str]:
        if backend not in self.impls:
            return False, "not implemented for this op"
        return backend_status(backend, device, self.needs.get(backend))


_OPS: dict[str, OpBackends] = {}


def register(op: str, backend: str, *, needs: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register ``fn`` as the ``backend`` implementation of ``op``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")

    def deco(fn: Callable) -> Callable:
        _RESOLVED.clear()
        entry = _OPS.setdefault(op, OpBackends(op))
        entry.impls[backend] = fn
        if needs is not None:
            entry.needs[backend] = needs
        return fn

    return deco


def set_preference(op: str, device_type: str, order: tuple[str, ...]) -> None:
    """Override the automatic backend order of ``op`` on ``device_type`` (from measured dispatch tables)."""
    _RESOLVED.clear()
    _OPS.setdefault(op, OpBackends(op)).preference[device_type] = tuple(order)


def set_rule(op: str, device_type: str, candidates: tuple[str, ...], text: str) -> None:
    """On ``device_type``, let ``op`` choose among ``candidates`` per call (``resolve`` answers ``"auto"``)."""
    _OPS.setdefault(op, OpBackends(op)).rules[device_type] = Rule(tuple(candidates), text)
    _RESOLVED.clear()


def ops() -> dict[str, OpBackends]:
    return dict(_OPS)


def _env_choice(op: str) -> str | None:
    value = os.environ.get("LTH_KERNELS_BACKEND", "").strip()
    if not value:
        return None
    if "=" not in value:
        return value
    for item in value.split(","):
        name, _, backend = item.partition("=")
        if name.strip() == op:
            return backend.strip()
    return None


# resolve() answers per (op, device, backend, LTH_KERNELS_BACKEND): the liveness checks behind it cost ~10 us, more
# than a small CPU kernel. Registering or re-ordering backends clears it (never rebinds it: cached_default hands out
# its bound get).
_RESOLVED: dict[tuple, str] = {}
# The variable is read on every call from os.environ's own backing dict, which its setters keep in step:
# ``os.environ.get`` is four Python-level calls, ~2 us each time a large layer has just evicted the interpreter's
# caches (measured beside a 768 x 768 F.linear), a tenth of a sparse layer's call at one row.
_ENV = getattr(os.environ, "_data", None)
_ENV_GET, _ENV_KEY = ((_ENV.get, os.environ.encodekey("LTH_KERNELS_BACKEND")) if _ENV is not None
                      else (os.environ.get, "LTH_KERNELS_BACKEND"))


def cached_default(op: str, device: str):
    """``(env_get, env_key, cache_get, key)`` for a caller's own fast path: while ``env_get(env_key)`` is None
    (LTH_KERNELS_BACKEND unset), ``cache_get(key)`` is what ``resolve(op, device)`` last answered, or None before
    its first call and after a change of backends. Inline lookups, no Python call: each call costs ~1 us of a
    small layer's time where a large layer before it evicted the interpreter's caches."""
    return _ENV_GET, _ENV_KEY, _RESOLVED.get, (op, device, None, None)  # resolve()'s key, no backend, no env


def resolve(op: str, device: torch.device | str, backend: str | None = None) -> str:
    """The backend name a call of ``op`` on ``device`` runs with, or ``"auto"`` where the op's rule chooses per call."""
    key = (op, device, backend, _ENV_GET(_ENV_KEY))  # as cached_default builds it
    chosen = _RESOLVED.get(key)
    if chosen is None:
        chosen = _RESOLVED[key] = _resolve(op, torch.device(device), backend)
    return chosen


def _resolve(op: str, device: torch.device, backend: str | None) -> str:
    entry = _OPS[op]
    choice = backend or _env_choice(op)
    env_all = not backend and "=" not in os.environ.get("LTH_KERNELS_BACKEND", "")
    if env_all and choice in BACKENDS and choice not in entry.impls:
        # LTH_KERNELS_BACKEND=triton asks for that backend wherever an op has it; an op without one (the masked
        # convolution has no Triton kernel) keeps its automatic choice instead of failing the whole model
        choice = None
    if choice and choice != AUTO:
        if choice not in BACKENDS:
            raise ValueError(f"backend: unknown backend {choice!r} for {op}; valid: {', '.join(BACKENDS)}")
        live, why = entry.status(choice, device)
        if not live:
            raise RuntimeError(f"backend: {choice!r} is not available for {op} on {device}: {why}")
        return choice
    rule = entry.rules.get(device.type)
    if rule is not None:
        live = [name for name in rule.candidates if entry.status(name, device)[0]]
        if len(live) > 1:
            return AUTO
    for name in entry.preference.get(device.type, ("reference",)):
        if entry.status(name, device)[0]:
            return name
    return "reference"


def implementation(op: str, backend: str) -> Callable:
    return _OPS[op].impls[backend]
