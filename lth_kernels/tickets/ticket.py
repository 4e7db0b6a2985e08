"""``Ticket``: an ordered mapping parameter name -> bool mask (CPU), plus string metadata.

File format: safetensors, one bool tensor per parameter (keys = canonical parameter names as in
``model.state_dict()``), string metadata: ``format`` (``lth_kernels.ticket``), ``format_version``,
``lth_kernels_version``, ``torch_version``, ``created`` (ISO 8601, UTC), ``sparsity``, ``shapes_sha256``
(a hash of names and shapes, checked on load) and whatever the producer adds (``strategy``, ``level``,
``structure``, ``scope``, ``fraction``, ``model``, ``source_run``, ...). Masks carry no weights: a
ticket is shared without the model's values.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lth_kernels._io import atomic_save, atomic_write_text
from lth_kernels.tickets.prunable import canonical_name, iter_maskable, maskable_parameters, model_name

FORMAT = "lth_kernels.ticket"
FORMAT_VERSION = 1


class TicketError(ValueError):
    """A ticket that does not fit a model, or a ticket file that is corrupt or not a ticket."""


def _lth_version() -> str:
    import lth_kernels

    return getattr(lth_kernels, "__version__", "unknown")


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _as_mask(name: str, value: Any) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"masks[{name!r}]: expected a tensor, got {type(value).__name__}")
    if value.dtype != torch.bool:
        if not bool(((value == 0) | (value == 1)).all()):
            raise ValueError(f"masks[{name!r}]: a mask holds only 0 and 1, got values {value.unique()[:5].tolist()}")
        return (value != 0).to("cpu").contiguous()
    # Copy: a ticket must not alias a layer's mask buffer that set_mask later overwrites in place.
    return value.detach().to("cpu", copy=True).contiguous()


def shapes_hash(masks: Mapping[str, torch.Tensor]) -> str:
    # Order-independent: safetensors stores tensors sorted by name.
    h = hashlib.sha256()
    for name, m in sorted(masks.items()):
        h.update(f"{name}:{tuple(m.shape)};".encode())
    return h.hexdigest()[:16]


class Ticket(Mapping[str, torch.Tensor]):
    """Ordered mapping canonical parameter name -> bool mask (``True`` = kept), plus ``metadata``.

    ``masks`` values may be bool tensors or 0/1 tensors of any dtype and device; they are stored as
    contiguous CPU bool tensors. ``metadata`` is a ``dict[str, str]`` (values are converted with
    ``str``); ``created`` is filled in when absent. The masks are read-only by convention: derive a new
    ticket instead of editing one in place.
    """

    def __init__(self, masks: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None):
        if not isinstance(masks, Mapping):
            raise TypeError(f"masks: expected a mapping name -> tensor, got {type(masks).__name__}")
        self._masks: dict[str, torch.Tensor] = {}
        for name, value in masks.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"masks: every key must be a non-empty parameter name, got {name!r}")
            self._masks[name] = _as_mask(name, value)
        self.metadata: dict[str, str] = {}
        for key, value in (metadata or {}).items():
            if not isinstance(key, str):
                raise TypeError(f"metadata: keys must be strings, got {key!r}")
            self.metadata[key] = value if isinstance(value, str) else str(value)
        self.metadata.setdefault("created", _now())

    # ------------------------------------------------------------------------------------------ mapping

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def __repr__(self) -> str:
        meta = ", ".join(f"{k}={self.metadata[k]}" for k in ("strategy", "structure", "level") if k in self.metadata)
        return (f"Ticket({len(self)} tensors, density {self.density:.4f}, {self.num_kept}/{self.num_total} kept"
                + (f", {meta}" if meta else "") + ")")

    def to_dict(self) -> dict[str, torch.Tensor]:
        """A plain dict name -> bool mask (the tensors are shared, not copied)."""
        return dict(self._masks)

    def with_metadata(self, **metadata: Any) -> Ticket:
        """The same masks with ``metadata`` merged into a copy of this ticket's metadata."""
        return Ticket(self._masks, {**self.metadata, **metadata})

    # ------------------------------------------------------------------------------------------ counts

    @property
    def num_total(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    @property
    def num_kept(self) -> int:
        return sum(int(m.sum()) for m in self._masks.values())

    @property
    def density(self) -> float:
        """Kept fraction over all entries (1.0 for an empty ticket)."""
        total = self.num_total
        return self.num_kept / total if total else 1.0

    @property
    def sparsity(self) -> float:
        """Pruned fraction over *all* entries, excluded layers (kept whole, e.g. LeNet's output layer) included:
        open_lth's ``1 - unpruned / total``. See ``prunable_sparsity`` for the pruned layers only."""
        return 1.0 - self.density

    @property
    def excluded(self) -> tuple[str, ...]:
        """Entries that were not pruned by rule (metadata ``excluded``, written by ``prune``): kept whole."""
        names = [n for n in self.metadata.get("excluded", "").split(",") if n]
        return tuple(n for n in self._masks if n in set(names))

    @property
    def prunable_density(self) -> float:
        """Kept fraction over the prunable entries only (every entry not in ``excluded``): the density that
        ``lth``'s tables print as "weights %"."""
        skip = set(self.excluded)
        masks = [m for n, m in self._masks.items() if n not in skip]
        total = sum(m.numel() for m in masks)
        return sum(int(m.sum()) for m in masks) / total if total else 1.0

    @property
    def prunable_sparsity(self) -> float:
        return 1.0 - self.prunable_density

    def report(self) -> dict[str, Any]:
        """The content of ``sparsity_report.json``: open_lth's ``total`` / ``unpruned`` (all entries), the same
        counts over the prunable entries, the excluded names and per-layer counts."""
        layers = {}
        for name, m in self._masks.items():
            kept, total = int(m.sum()), m.numel()
            layers[name] = {"shape": list(m.shape), "kept": kept, "total": total,
                            "density": kept / total if total else 1.0}
        total, kept = self.num_total, self.num_kept
        excluded = self.excluded
        names = [n for n in self._masks if n not in set(excluded)]
        p_total = sum(layers[n]["total"] for n in names)
        p_kept = sum(layers[n]["kept"] for n in names)
        return {"total": total, "unpruned": kept, "density": kept / total if total else 1.0,
                "sparsity": 1.0 - (kept / total if total else 1.0),
                "prunable": {"kept": p_kept, "total": p_total, "density": self.prunable_density,
                             "sparsity": self.prunable_sparsity, "names": names},
                "excluded": list(excluded), "layers": layers}

    def save_report(self, path: str | os.PathLike) -> Path:
        """Write ``report()`` as JSON (``sparsity_report.json``), atomically."""
        path = Path(path)
        atomic_write_text(path, json.dumps(self.report(), indent=2) + "\n")
        return path

    # ------------------------------------------------------------------------------------------ comparisons

    def _check_same_layout(self, other: Mapping[str, torch.Tensor], what: str) -> None:
        if not isinstance(other, Mapping):
            raise TypeError(f"other: expected a Ticket or mapping name -> mask, got {type(other).__name__}")
        if set(self._masks) != set(other):
            missing = sorted(set(self._masks) - set(other))[:3]
            extra = sorted(set(other) - set(self._masks))[:3]
            raise TicketError(f"{what}: the tickets mask different parameters (only here: {missing}, "
                              f"only in other: {extra})")
        for name, m in self._masks.items():
            if tuple(other[name].shape) != tuple(m.shape):
                raise TicketError(f"{what}: shapes differ for {name!r}: {tuple(m.shape)} vs {tuple(other[name].shape)}")

    def _pairs(self, other: Mapping[str, torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for name, m in self._masks.items():
            yield m, _as_mask(name, other[name])

    def distance(self, other: Mapping[str, torch.Tensor]) -> float:
        """Normalised Hamming distance over all entries, ``1 - #equal/total`` (the early-bird metric)."""
        self._check_same_layout(other, "distance")
        total = self.num_total
        if total == 0:
            return 0.0
        differ = sum(int((a != b).sum()) for a, b in self._pairs(other))
        return differ / total

    def overlap(self, other: Mapping[str, torch.Tensor]) -> float:
        """Intersection over union of the kept weights (1.0 when both keep nothing)."""
        self._check_same_layout(other, "overlap")
        inter = union = 0
        for a, b in self._pairs(other):
            inter += int((a & b).sum())
            union += int((a | b).sum())
        return inter / union if union else 1.0

    def equal(self, other: Mapping[str, torch.Tensor], *, metadata: bool = False) -> bool:
        """Same parameter names, shapes and masks (order ignored); with ``metadata=True`` the metadata too."""
        if not isinstance(other, Mapping) or set(self._masks) != set(other):
            return False
        for name, m in self._masks.items():
            o = other[name]
            if not isinstance(o, torch.Tensor) or tuple(o.shape) != tuple(m.shape):
                return False
            if not torch.equal(m, o.detach().to("cpu") != 0):
                return False
        if metadata:
            mine = {k: v for k, v in self.metadata.items() if k != "created"}
            theirs = {k: v for k, v in getattr(other, "metadata", {}).items() if k != "created"}
            return mine == theirs
        return True

    # ------------------------------------------------------------------------------------------ models

    @classmethod
    def from_model(cls, model: nn.Module, *, exclude: Iterable[str] = (), metadata: Mapping[str, Any] | None = None
                   ) -> Ticket:
        """The masks a model carries: a masked layer's ``mask``, all-ones for the weight of a plain layer.

        Covers every maskable weight (``nn.Linear`` / ``nn.Conv2d`` and masked layers) except ``exclude``
        globs; a model's ``default_prune_exclude`` does not apply (those layers are maskable, only not
        pruned), as in open_lth, whose masks hold the output layer with all ones.
        """
        params = maskable_parameters(model, exclude)
        masks = {}
        for name, module, _ in iter_maskable(model):
            if name not in params:
                continue
            mask = getattr(module, "mask", None)
            if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(module.weight.shape):
                masks[name] = mask
            else:
                masks[name] = torch.ones(module.weight.shape, dtype=torch.bool)
        meta = {"model": model_name(model), "strategy": "from_model", "structure": "unstructured"}
        return cls(masks, {**meta, **(metadata or {})})

    @classmethod
    def ones(cls, model: nn.Module, exclude: Iterable[str] = (), *, metadata: Mapping[str, Any] | None = None
             ) -> Ticket:
        """The dense ticket: all-ones masks for every maskable weight except ``exclude`` globs."""
        masks = {name: torch.ones(p.shape, dtype=torch.bool) for name, p in maskable_parameters(model, exclude).items()}
        meta = {"model": model_name(model), "strategy": "dense", "structure": "unstructured",
                "level": "0"}
        return cls(masks, {**meta, **(metadata or {})})

    def match(self, model: nn.Module, *, strict: bool = False) -> dict[str, str]:
        """Map each ticket name to the model's actual parameter name, checking names and shapes.

        Wrapper prefixes (``module.``, ``_orig_mod.``) are ignored on both sides. Raises ``TicketError``
        when a ticket name is not a maskable weight of the model or a shape differs; with ``strict=True``
        also when a maskable weight of the model has no mask in the ticket.
        """
        maskable = {name: (module, actual) for name, module, actual in iter_maskable(model)}
        params = {canonical_name(n) for n, _ in model.named_parameters()}
        out = {}
        for key, mask in self._masks.items():
            name = canonical_name(key)
            if name not in maskable:
                why = ("is not the weight of a maskable layer (nn.Linear / nn.Conv2d)" if name in params
                       else "is not a parameter of the model")
                raise TicketError(f"ticket entry {key!r} {why}; maskable weights: {list(maskable)[:8]}")
            module, actual = maskable[name]
            if tuple(module.weight.shape) != tuple(mask.shape):
                raise TicketError(f"ticket entry {key!r}: mask shape {tuple(mask.shape)} != weight shape "
                                  f"{tuple(module.weight.shape)}")
            out[key] = actual
        if strict:
            missing = [n for n in maskable if n not in {canonical_name(k) for k in self._masks}]
            if missing:
                raise TicketError(f"ticket has no mask for {missing[:8]} (strict=True)")
        return out

    def apply(self, model: nn.Module, *, strict: bool = False, **sparsify_kwargs: Any) -> nn.Module:
        """Mask ``model`` in place with ``lth_kernels.nn.sparsify``: each ticket layer becomes a masked layer
        whose masked weights are zero. Names and shapes are checked first (see ``match``).

        Pass ``optimizer=opt`` when ``opt`` keeps training the model (e.g. train, prune, keep training): its
        momentum / Adam state at the pruned positions is zeroed and a post-step hook keeps the pruned weights
        exactly zero; without it, state from before the pruning moves them again.

        Returns what ``sparsify`` returns (the model).
        """
        actual = self.match(model, strict=strict)
        try:
            from lth_kernels.nn import sparsify
        except ImportError as e:
            raise ImportError(f"Ticket.apply needs lth_kernels.nn.sparsify, which is unavailable ({e})") from e
        ticket = Ticket({actual[k]: m for k, m in self._masks.items()}, self.metadata)
        return sparsify(model, ticket=ticket, **sparsify_kwargs)

    # ------------------------------------------------------------------------------------------ files

    def save(self, path: str | os.PathLike) -> Path:
        """Write the ticket as safetensors (atomically: a temp file next to ``path``, then ``os.replace``)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = dict(self.metadata)
        meta.update(format=FORMAT, format_version=str(FORMAT_VERSION), lth_kernels_version=_lth_version(),
                    torch_version=torch.__version__.split("+")[0], sparsity=f"{self.sparsity:.6f}",
                    shapes_sha256=shapes_hash(self._masks))
        if not any("," in n for n in self._masks):
            meta["order"] = ",".join(self._masks)
        atomic_save(dict(self._masks), path, metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Ticket:
        """Read a ticket written by ``save``; a missing, corrupt or foreign file is a one-line ``TicketError``."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"ticket file {path} does not exist")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = dict(f.metadata() or {})
                masks = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is no Mapping)
        except Exception as e:  # safetensors raises its own error types and OSError/ValueError variants
            msg = " ".join(str(e).split())
            raise TicketError(f"ticket file {path} is corrupt or not a safetensors file: {msg}") from e
        if meta.get("format") != FORMAT:
            raise TicketError(f"ticket file {path} is not an lth_kernels ticket (metadata 'format' is "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
        try:
            version = int(meta.get("format_version", ""))
        except ValueError:
            version = -1
        if not 1 <= version <= FORMAT_VERSION:
            raise TicketError(f"ticket file {path} has format_version {meta.get('format_version')!r}; this "
                              f"lth_kernels ({_lth_version()}) reads versions 1..{FORMAT_VERSION}")
        for name, t in masks.items():
            if t.dtype != torch.bool:
                bad = "" if not t.is_floating_point() else \
                    " holding NaN" if bool(t.isnan().any()) else " holding inf" if bool(t.isinf().any()) else ""
                raise TicketError(f"ticket file {path}: tensor {name!r} has dtype {t.dtype}{bad}, expected torch.bool")
            raw = t.view(torch.uint8)  # a bool tensor read from bytes may hold any byte: only 0 and 1 are masks
            if raw.numel() and int(raw.max()) > 1:
                raise TicketError(f"ticket file {path}: mask {name!r} holds byte values other than 0/1 "
                                  f"({sorted(set(raw.unique().tolist()) - {0, 1})[:5]})")
        # safetensors stores tensors sorted by name: restore the producer's (model) order from the metadata.
        order = meta.get("order")
        if order:
            names = order.split(",")
            if sorted(names) == sorted(masks):
                masks = {n: masks[n] for n in names}
        if "shapes_sha256" in meta and meta["shapes_sha256"] != shapes_hash(masks):
            raise TicketError(f"ticket file {path}: names/shapes do not match its shapes_sha256 metadata "
                              "(the file was altered or is truncated)")
        meta.pop("order", None)
        ticket = cls(masks, meta)
        if "sparsity" in meta and not math.isclose(float(meta["sparsity"]), ticket.sparsity, abs_tol=1e-5):
            raise TicketError(f"ticket file {path}: metadata sparsity {meta['sparsity']} != sparsity of its "
                              f"masks {ticket.sparsity:.6f}")
        return ticket
