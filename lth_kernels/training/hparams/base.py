"""The hparams dataclass machinery: fields with help, strict dict/JSON round trips, hashing, flags."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

_MISSING = object()


class HparamsError(ValueError):
    """A bad hparam value; ``str()`` is one line naming the flag (``--training.lr: ...``)."""

    def __init__(self, name: str, message: str):
        self.name, self.message = name, message
        super().__init__(f"--{name}: {message}")

    def with_prefix(self, prefix: str) -> HparamsError:
        return HparamsError(prefix + self.name, self.message)


def hfield(default: Any = _MISSING, help: str = "", *, choices: tuple | None = None, default_factory=None,  # noqa: A002
           named: bool = True):
    """A dataclass field with help text (and optional choices) in its metadata.

    ``named=False``: the value does not change what a run computes (e.g. how many processes read the data),
    so it stays out of ``non_default()`` and the run's name: rerunning with another value resumes the run."""
    meta = {"help": help, "choices": choices, "named": named}
    if default_factory is not None:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------- types


@functools.cache
def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unwrap_optional(tp) -> tuple[Any, bool]:
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _is_group(tp) -> bool:
    return isinstance(tp, type) and issubclass(tp, Hparams)


def _type_name(tp) -> str:
    base, _ = _unwrap_optional(tp)
    origin = typing.get_origin(base)
    if origin is tuple:
        return "LIST"
    if origin is dict or base is dict:
        return "DICT"
    return getattr(base, "__name__", str(base)).upper()


def _coerce(tp, value, name: str):
    """A JSON/Python value -> the field's type (ints become floats for float fields, lists tuples)."""
    base, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise HparamsError(name, f"must not be None (expected {_type_name(base).lower()})")
    origin = typing.get_origin(base)
    if base is bool:
        if isinstance(value, bool):
            return value
    elif base is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif base is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif base is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if isinstance(value, str):
            return tuple(v.strip() for v in value.split(",") if v.strip())
    elif origin is dict or base is dict:
        if isinstance(value, dict):
            return dict(value)
    else:
        raise TypeError(f"hparam field {name!r} has an unsupported type {tp!r}")
    raise HparamsError(name, f"expected {_type_name(base).lower()}, got {value!r}")


def _parse_kv_dict(text: str, name: str) -> dict:
    """``'{"a": 1}'`` (JSON) or ``'a=1,b=x'`` (values read as JSON when they parse, else as strings)."""
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as e:
            raise HparamsError(name, f"invalid JSON object {text!r} ({e.msg})") from None
        if not isinstance(out, dict):
            raise HparamsError(name, f"expected a JSON object, got {text!r}")
        return out
    out = {}
    for item in text.split(","):
        key, sep, val = item.partition("=")
        if not sep or not key.strip():
            raise HparamsError(name, f"expected 'k=v,k2=v2' or a JSON object, got {text!r}")
        try:
            out[key.strip()] = json.loads(val)
        except json.JSONDecodeError:
            out[key.strip()] = val.strip()
    return out


def _parse_text(tp, text: str, name: str):
    """A command-line string -> the field's type, with a one-line error naming the flag."""
    base, optional = _unwrap_optional(tp)
    if optional and text.strip().lower() in ("", "none", "null"):
        return None
    origin = typing.get_origin(base)
    try:
        if base is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if base is int:
            return int(text)
        if base is float:
            return float(text)
    except ValueError:
        raise HparamsError(name, f"expected {_type_name(base).lower()}, got {text!r}") from None
    if base is str:
        return text
    if origin is tuple:
        return tuple(v.strip() for v in text.split(",") if v.strip())
    if origin is dict or base is dict:
        return _parse_kv_dict(text, name)
    raise TypeError(f"hparam field {name!r} has an unsupported type {tp!r}")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if value is None:
        return "none"
    return "''" if value == "" else str(value)


def _to_jsonable(value):
    if isinstance(value, Hparams):
        return value.to_dict()
    if isinstance(value, tuple):
        return list(value)
    return value


# ----------------------------------------------------------------------------------------------- base


@dataclass(frozen=True)
class Hparams:
    """Base of every hparams group. Subclasses are ``@dataclass(frozen=True)`` with ``hfield`` fields
    and may override ``validate()`` (raise ``HparamsError(field_name, message)``).

    ``RUN_NEUTRAL`` names the group's fields that do not change what a run computes (where the data lives,
    how often it is evaluated): they stay out of ``identity()`` and so out of the run's name."""

    RUN_NEUTRAL: ClassVar[tuple[str, ...]] = ()

    def __post_init__(self):
        for f in dataclasses.fields(self):
            tp = _hints(type(self))[f.name]
            value = getattr(self, f.name)
            if _is_group(tp):
                if not isinstance(value, tp):
                    raise HparamsError(f.name, f"expected {tp.__name__}, got {value!r}")
                continue
            value = _coerce(tp, value, f.name)
            choices = f.metadata.get("choices")
            if choices and value not in choices:
                raise HparamsError(f.name, f"expected one of {', '.join(map(str, choices))}, got {value!r}")
            object.__setattr__(self, f.name, value)
        self.validate()

    def validate(self) -> None:
        """Cross-field and range checks; overridden by groups."""

    # ---- serialization
    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], prefix: str = ""):
        if not isinstance(d, dict):
            raise HparamsError(prefix.rstrip(".") or cls.__name__, f"expected a mapping, got {d!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise HparamsError(prefix + unknown[0], f"unknown hparam (known: {', '.join(sorted(names))})")
        kwargs = {}
        for f in dataclasses.fields(cls):
            if f.name not in d:
                continue
            tp = _hints(cls)[f.name]
            kwargs[f.name] = tp.from_dict(d[f.name], f"{prefix}{f.name}.") if _is_group(tp) else d[f.name]
        try:
            return cls(**kwargs)
        except HparamsError as e:
            raise e.with_prefix(prefix) from None

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        return cls.from_dict(json.loads(text))

    def replace(self, **changes):
        """A copy with some fields changed (validated)."""
        return dataclasses.replace(self, **changes)

    # ---- naming
    def flat_dict(self) -> dict[str, Any]:
        """``{"training.lr": 0.1, ...}`` for every leaf field."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Hparams):
                out.update({f"{f.name}.{k}": v for k, v in value.flat_dict().items()})
            else:
                out[f.name] = _to_jsonable(value)
        return out

    def non_default(self) -> dict[str, Any]:
        """Leaf values that differ from the class defaults, as a flat ``{"group.field": value}`` dict."""
        default = type(self)().flat_dict()
        unnamed = set(_unnamed_leaves(type(self)))
        return {k: v for k, v in self.flat_dict().items() if default.get(k, _MISSING) != v and k not in unnamed}

    def identity(self) -> dict[str, Any]:
        """``non_default()`` without the ``RUN_NEUTRAL`` fields of every group: what names a run."""
        neutral = set(_neutral_keys(type(self), ""))
        return {k: v for k, v in self.non_default().items() if k not in neutral}

    def hashname(self, length: int = 10) -> str:
        """Stable short hash of ``identity()`` (independent of field and key order)."""
        return _md5(self.identity(), length)

    def legacy_hashname(self, length: int = 10) -> str:
        """The name runs had before ``RUN_NEUTRAL`` fields left the hash: the hash of all of ``non_default()``
        (equal to ``hashname()`` when every neutral field has its default). Run directories are looked up
        under it too, so existing runs keep resuming."""
        return _md5(self.non_default(), length)

    def with_overrides(self, overrides: dict[str, Any], source: str = "overrides"):
        """A copy with dotted (``{"training.lr": 0.1}``) or nested overrides applied, validated."""
        d = self.to_dict()
        for key, value in _flatten_overrides(type(self), overrides, source).items():
            node, parts = d, key.split(".")
            for p in parts[:-1]:
                node = node[p]
            node[parts[-1]] = _to_jsonable(value)
        return type(self).from_dict(d)

    # ---- CLI
    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser, prefix: str = "", defaults: Hparams | None = None) -> None:
        """Add one ``--<prefix><field>`` flag per leaf field; help shows the value in ``defaults``."""
        defaults = defaults if defaults is not None else cls()
        doc = (cls.__doc__ or cls.__name__).strip().splitlines()[0]
        group = parser.add_argument_group(prefix.rstrip(".") or "hparams", doc) if prefix else parser
        for f in dataclasses.fields(cls):
            tp = _hints(cls)[f.name]
            value = getattr(defaults, f.name)
            if _is_group(tp):
                tp.add_args(parser, f"{prefix}{f.name}.", value)
                continue
            choices = f.metadata.get("choices")
            base, _ = _unwrap_optional(tp)
            metavar = "{" + ",".join(map(str, choices)) + "}" if choices else _type_name(tp)
            help_text = f"{f.metadata.get('help', '')} [{_fmt(value)}]".replace("%", "%%")
            kwargs = {"nargs": "?", "const": "true"} if base is bool else {}
            group.add_argument(f"--{prefix}{f.name}", dest=f"{prefix}{f.name}", default=argparse.SUPPRESS,
                               metavar=metavar, help=help_text, **kwargs)

    @classmethod
    def from_args(cls, ns: argparse.Namespace, prefix: str = "", defaults: Hparams | None = None):
        """Build from parsed flags (only those given on the command line override ``defaults``)."""
        d = (defaults if defaults is not None else cls()).to_dict()
        given = vars(ns)
        for key, tp in _leaf_flags(cls, prefix):
            if key not in given:
                continue
            node = d
            rel = key[len(prefix):].split(".")
            for p in rel[:-1]:
                node = node[p]
            node[rel[-1]] = _to_jsonable(_parse_text(tp, given[key], key))
        return cls.from_dict(d, prefix)


def _md5(values: dict[str, Any], length: int) -> str:
    canon = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.md5(canon.encode()).hexdigest()[:length]


def _neutral_keys(cls, prefix: str):
    """Dotted names of the ``RUN_NEUTRAL`` fields of ``cls`` and its nested groups."""
    yield from (prefix + name for name in cls.RUN_NEUTRAL)
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_group(tp):
            yield from _neutral_keys(tp, f"{prefix}{f.name}.")


def _flatten_overrides(cls, overrides: dict[str, Any], source: str, prefix: str = "") -> dict[str, Any]:
    """Nested or dotted overrides -> ``{"group.field": value}``, checking every name against ``cls``."""
    out = {}
    for key, value in overrides.items():
        node, tp = cls, None
        parts = key.split(".")
        for i, p in enumerate(parts):
            hints = _hints(node) if _is_group(node) else {}
            if p not in hints:
                raise HparamsError(prefix + ".".join(parts[: i + 1]), f"unknown hparam in {source}")
            node = tp = hints[p]
        full = prefix + key
        if _is_group(tp):
            if not isinstance(value, dict):
                raise HparamsError(full, f"expected a mapping in {source}, got {value!r}")
            out.update(_flatten_overrides(tp, value, source, full + "."))
        else:
            out[full] = value
    return out


@functools.cache
def _unnamed_leaves(cls, prefix: str = "") -> tuple[str, ...]:
    """Dotted names of the leaf fields declared ``hfield(named=False)``."""
    out = []
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_group(tp):
            out.extend(_unnamed_leaves(tp, f"{prefix}{f.name}."))
        elif not f.metadata.get("named", True):
            out.append(prefix + f.name)
    return tuple(out)


def _leaf_flags(cls, prefix: str):
    """(dotted flag name, field type) for every leaf field."""
    for f in dataclasses.fields(cls):
        tp = _hints(cls)[f.name]
        if _is_group(tp):
            yield from _leaf_flags(tp, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", tp
