"""Elastic ticket transformation (ETT, Chen et al. 2021): stretch or squeeze a winning ticket to another depth.

A ticket found by IMP on a source network (its mask ``m`` and its rewind weights ``θ_K``, BatchNorm included)
becomes a ticket of a deeper or shallower network of the same family by copying whole *units*:

* **Units.** CIFAR ResNets (``cifar_resnet_<6n+2>``, keys ``blocks.<i>``) and ImageNet-style basic-block
  ResNets (timm ``resnet18/34``, keys ``layer<s>.<i>``): a residual block. VGG (``cifar_vgg_<n>``, keys
  ``layers.<i>``): a conv layer with its BN. MLPs (``lenet_<a>_<b>...``, keys ``fc_layers.<i>``): a hidden
  layer. Units are grouped in *stages*: ResNet stages end where a block down-samples, VGG stages at the
  max-pools, MLP stages where the hidden width changes.
* **Invariants.** The number of stages stays fixed. Each stage's first unit ``B0`` (the down-sampling block,
  the width-changing layer) is copied one-to-one, never replicated or dropped. The stem and the output
  layer (every key outside the units) are copied unchanged.
* **Stretch** (more units in a stage): replicate as many distinct units as possible, as few times each as
  possible; when only some can get one more copy, the earlier ones do (ResNet-20 -> 32 copies B1 and B2
  once each, never B1 twice). ``interpolate`` orders copies next to their original (B0 B1 B1' B2 B2');
  ``append`` adds them in rounds after the originals (B0 B1 B2 B1' B2').
* **Squeeze** (fewer units): drop units, never many early ones. ``interpolate`` keeps an evenly spread
  subset that always starts with B1 (ResNet-56 -> 32 keeps B1 B3 B5 B7); ``append`` drops from the end
  (the inverse of appending).
* **Copy.** A replicated unit copies both its weights (BN statistics included) and its mask, so the target's
  sparsity is close to, not exactly, the source's: ``ElasticResult.report`` says by how much.

The mapping of one stage is written as in the reference code (ElasticLTH ``morphism.py``):
``src:tgt[,tgt...]`` items separated by ``;`` with local unit indices, e.g. ``0:0;1:1,2;2:3,4`` (ResNet-20 ->
32). One string applies to every stage; ``|`` separates one string per stage (ImageNet ResNets, VGG).
``generate_mapping`` derives the recommended mapping from the stage lengths; an explicit string overrides it
and is checked with a readable error (coverage, B0 rule, range).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from lth_kernels.tickets.prunable import excluded
from lth_kernels.tickets.ticket import Ticket

STRATEGIES = ("interpolate", "append")

# One stage's mapping: ((src local, (tgt local, ...)), ...) in source order.
StageMapping = tuple[tuple[int, tuple[int, ...]], ...]


class ElasticError(ValueError):
    """A mapping or a pair of models the elastic transform cannot handle (one line, names the argument)."""


# ----------------------------------------------------------------------------------------------- layouts


@dataclass(frozen=True)
class Layout:
    """The units of a network: ``stages[s][i]`` is the key prefix of unit ``i`` of stage ``s`` (``blocks.4``);
    every state-dict key outside the units (stem, head) is shared."""

    family: str
    stages: tuple[tuple[str, ...], ...]

    @property
    def lengths(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.stages)

    def unit_of(self, key: str) -> tuple[int, int, str] | None:
        """``(stage, local index, suffix)`` of a key inside a unit, else None (a shared key)."""
        prefix, suffix = _split_unit(self.family, key)
        if prefix is None:
            return None
        for s, units in enumerate(self.stages):
            if prefix in units:
                return s, units.index(prefix), suffix
        return None


_UNIT_RE = {
    "cifar_resnet": re.compile(r"^(blocks\.\d+)\.(.+)$"),
    "resnet": re.compile(r"^(layer\d+\.\d+)\.(.+)$"),
    "vgg": re.compile(r"^(layers\.\d+)\.(.+)$"),
    "mlp": re.compile(r"^(fc_layers\.\d+)\.(.+)$"),
}


def _split_unit(family: str, key: str) -> tuple[str | None, str]:
    m = _UNIT_RE[family].match(key)
    return (m.group(1), m.group(2)) if m else (None, key)


def _index(prefix: str) -> int:
    return int(prefix.rsplit(".", 1)[1])


def layout_of(state: Mapping[str, torch.Tensor]) -> Layout:
    """The unit layout of a state dict (or any name -> tensor mapping holding its weights), by key pattern."""
    keys = list(state)
    for family in ("cifar_resnet", "resnet", "vgg", "mlp"):
        units: list[str] = []
        for k in keys:
            prefix, _ = _split_unit(family, k)
            if prefix is not None and prefix not in units:
                units.append(prefix)
        if units:
            return Layout(family, _stages(family, units, state))
    raise ElasticError(f"state: no elastic layout for keys {keys[:4]}...; supported: cifar_resnet_<6n+2> (blocks.<i>), "
                       "timm basic-block resnets (layer<s>.<i>), cifar_vgg_<n> (layers.<i>), lenet_<a>_<b>... "
                       "(fc_layers.<i>)")


def _stages(family: str, units: list[str], state: Mapping[str, torch.Tensor]) -> tuple[tuple[str, ...], ...]:
    if family == "resnet":
        by_layer: dict[str, list[str]] = {}
        for u in units:
            by_layer.setdefault(u.split(".")[0], []).append(u)
        return tuple(tuple(sorted(v, key=_index)) for _, v in sorted(by_layer.items(), key=lambda kv: int(kv[0][5:])))
    units = sorted(units, key=_index)
    stages: list[list[str]] = []
    for i, u in enumerate(units):
        if family == "cifar_resnet":  # a new stage starts at a block with a projection shortcut (as the reference)
            new = i == 0 or f"{u}.shortcut.0.weight" in state
        elif family == "vgg":  # max-pools hold no parameters: a gap in the Sequential indices is a pool
            new = i == 0 or _index(u) != _index(units[i - 1]) + 1
        else:  # mlp: a layer that changes the width starts a stage
            w = state.get(f"{u}.weight")
            new = i == 0 or w is None or w.shape[0] != w.shape[1]
        if new:
            stages.append([])
        stages[-1].append(u)
    return tuple(tuple(s) for s in stages)


# ----------------------------------------------------------------------------------------------- mappings


def _stage_mapping(n_src: int, n_dst: int, strategy: str, stage: int) -> StageMapping:
    if n_dst == n_src:
        return tuple((i, (i,)) for i in range(n_src))
    m_src, m_dst = n_src - 1, n_dst - 1  # the units after B0
    if n_dst > n_src:
        if m_src == 0:
            raise ElasticError(f"target: stage {stage} of the source has only its first (down-sampling) unit, "
                               f"which is never replicated; cannot stretch it to {n_dst} units")
        base, extra = divmod(m_dst, m_src)
        counts = [base + (1 if j < extra else 0) for j in range(m_src)]  # earlier units get the extra copy
        targets: list[list[int]] = [[] for _ in range(m_src)]
        if strategy == "interpolate":
            pos = 1
            for j, c in enumerate(counts):
                targets[j] = list(range(pos, pos + c))
                pos += c
        else:  # append: round k places the k-th copy of every unit that has one, in source order
            pos = 1
            for k in range(max(counts)):
                for j, c in enumerate(counts):
                    if k < c:
                        targets[j].append(pos)
                        pos += 1
        return ((0, (0,)),) + tuple((j + 1, tuple(t)) for j, t in enumerate(targets))
    if n_dst < 1:
        raise ElasticError(f"target: stage {stage} needs at least its first unit, got {n_dst} units")
    if strategy == "interpolate":  # evenly spread, always keeping B1: never a run of dropped early units
        kept = [i * m_src // m_dst + 1 for i in range(m_dst)]
    else:
        kept = list(range(1, m_dst + 1))
    return ((0, (0,)),) + tuple((src, (t + 1,)) for t, src in enumerate(kept))


def generate_mapping(src_lengths: Sequence[int], dst_lengths: Sequence[int],
                     strategy: str = "interpolate") -> tuple[StageMapping, ...]:
    """The recommended mapping (one ``StageMapping`` per stage) from units per stage of source and target."""
    if strategy not in STRATEGIES:
        raise ElasticError(f"strategy: expected one of {', '.join(STRATEGIES)}, got {strategy!r}")
    if len(src_lengths) != len(dst_lengths):
        raise ElasticError(f"target: the number of stages must stay fixed, source has {len(src_lengths)} "
                           f"({list(src_lengths)} units), target {len(dst_lengths)} ({list(dst_lengths)})")
    return tuple(_stage_mapping(a, b, strategy, s) for s, (a, b) in enumerate(zip(src_lengths, dst_lengths)))


def format_mapping(mapping: Sequence[StageMapping]) -> str:
    """The reference syntax; one string when every stage has the same mapping, else ``|``-separated."""
    parts = [";".join(f"{s}:{','.join(map(str, t))}" for s, t in stage) for stage in mapping]
    return parts[0] if len(set(parts)) == 1 else "|".join(parts)


def parse_mapping(text: str, num_stages: int) -> tuple[StageMapping, ...]:
    """Parse ``0:0;1:1,2|...`` (one string for all stages, or one per stage separated by ``|``)."""
    chunks = [c.strip() for c in text.split("|")]
    if len(chunks) == 1:
        chunks *= num_stages
    if len(chunks) != num_stages:
        raise ElasticError(f"block_mapping: {text!r} has {len(chunks)} '|'-separated stage mappings, the models "
                           f"have {num_stages} stages")
    out = []
    for chunk in chunks:
        items = []
        for item in filter(None, (x.strip() for x in chunk.split(";"))):
            src, sep, tgts = item.partition(":")
            try:
                items.append((int(src), tuple(int(t) for t in tgts.split(",") if t.strip())))
            except ValueError:
                raise ElasticError(f"block_mapping: expected 'src:tgt[,tgt];...' with integers, got {item!r} in "
                                   f"{text!r}") from None
            if not sep:
                raise ElasticError(f"block_mapping: item {item!r} in {text!r} has no ':'")
        out.append(tuple(items))
    return tuple(out)


def check_mapping(mapping: Sequence[StageMapping], src_lengths: Sequence[int], dst_lengths: Sequence[int]) -> None:
    """Every target unit is written exactly once from an existing source unit, and B0 maps to B0 only."""
    if not len(mapping) == len(src_lengths) == len(dst_lengths):
        raise ElasticError(f"block_mapping: {len(mapping)} stage mappings for {len(src_lengths)} source and "
                           f"{len(dst_lengths)} target stages")
    for s, (stage, n_src, n_dst) in enumerate(zip(mapping, src_lengths, dst_lengths)):
        text = format_mapping([stage])
        seen: dict[int, int] = {}
        for src, tgts in stage:
            if not 0 <= src < n_src:
                raise ElasticError(f"block_mapping: stage {s} ({text!r}) reads source unit {src}; the source stage "
                                   f"has units 0..{n_src - 1}")
            for t in tgts:
                if not 0 <= t < n_dst:
                    raise ElasticError(f"block_mapping: stage {s} ({text!r}) writes target unit {t}; the target "
                                       f"stage has units 0..{n_dst - 1}")
                if t in seen:
                    raise ElasticError(f"block_mapping: stage {s} ({text!r}) writes target unit {t} twice "
                                       f"(from {seen[t]} and {src})")
                seen[t] = src
        missing = sorted(set(range(n_dst)) - set(seen))
        if missing:
            raise ElasticError(f"block_mapping: stage {s} ({text!r}) leaves target units {missing} unwritten; "
                               f"every one of 0..{n_dst - 1} needs a source")
        if seen[0] != 0 or any(src == 0 and tgts != (0,) for src, tgts in stage):
            raise ElasticError(f"block_mapping: stage {s} ({text!r}) must map the first (down-sampling) unit "
                               "one-to-one, '0:0'")


# ----------------------------------------------------------------------------------------------- transform


@dataclass
class ElasticResult:
    """The transformed weights and ticket, the mapping used, and which target units are copies."""

    state_dict: dict[str, torch.Tensor]
    ticket: Ticket | None
    mapping: tuple[StageMapping, ...]
    source_of: dict[str, str]  # target key -> source key it was copied from
    copies: tuple[str, ...]  # target unit prefixes that repeat a source unit already used earlier in the target
    report: dict[str, Any] = field(default_factory=dict)


def _source_key(key: str, src: Layout, dst: Layout, reverse: list[dict[int, int]]) -> tuple[str, bool]:
    """The source key a target key is copied from, and whether the target unit is a copy (not the first use)."""
    where = dst.unit_of(key)
    if where is None:
        return key, False
    s, t, suffix = where
    src_local = reverse[s][t]
    first = min(tt for tt, ss in reverse[s].items() if ss == src_local)
    return f"{src.stages[s][src_local]}.{suffix}", t != first


def _reverse(mapping: Sequence[StageMapping]) -> list[dict[int, int]]:
    return [{t: src for src, tgts in stage for t in tgts} for stage in mapping]


def transform(source_state: Mapping[str, torch.Tensor], target_state: Mapping[str, torch.Tensor], *,
              ticket: Mapping[str, torch.Tensor] | None = None, strategy: str = "interpolate",
              mapping: str | Sequence[StageMapping] | None = None, random_copies: torch.Generator | None = None,
              exclude: Sequence[str] = ()) -> ElasticResult:
    """Transform source weights (and ``ticket``) to the layout of ``target_state`` (e.g. a fresh target
    model's ``state_dict()``: only its keys and shapes are used).

    Args:
        source_state: the source rewind weights, BN statistics included.
        target_state: the target model's state dict (keys and shapes).
        ticket: the source mask (a ``Ticket`` or name -> mask); its names are mapped like the weights.
        strategy: ``interpolate`` or ``append`` (see the module docstring); ignored with an explicit mapping.
        mapping: the reference syntax (``"0:0;1:1,2;2:3,4"``) or parsed stage mappings; overrides ``strategy``.
        random_copies: a generator: the masks of *copied* units (not their first use) are randomly permuted
            (same count per tensor), the reference's ``change_depth_random_mask`` ablation.
        exclude: globs of ticket entries the sparsity report leaves out (the weights never pruned, e.g. the
            output layer of an MLP or VGG).

    Every target key is written exactly once, with a tensor of the target's shape; a mismatch is an
    ``ElasticError`` naming the key.
    """
    src_layout, dst_layout = layout_of(source_state), layout_of(target_state)
    if src_layout.family != dst_layout.family:
        raise ElasticError(f"target: source is a {src_layout.family} network, target a {dst_layout.family} one")
    if mapping is None:
        stages = generate_mapping(src_layout.lengths, dst_layout.lengths, strategy)
    elif isinstance(mapping, str):
        stages = parse_mapping(mapping, len(src_layout.stages))
    else:
        stages = tuple(tuple((int(s), tuple(t)) for s, t in stage) for stage in mapping)
    if len(stages) != len(dst_layout.stages) or len(src_layout.stages) != len(dst_layout.stages):
        raise ElasticError(f"target: the number of stages must stay fixed, source has {src_layout.lengths} units per "
                           f"stage, target {dst_layout.lengths}")
    check_mapping(stages, src_layout.lengths, dst_layout.lengths)
    reverse = _reverse(stages)

    out, source_of, copies = {}, {}, []
    for key, like in target_state.items():
        skey, is_copy = _source_key(key, src_layout, dst_layout, reverse)
        if skey not in source_state:
            raise ElasticError(f"source_state: no {skey!r} to copy into target key {key!r}")
        value = source_state[skey]
        if tuple(value.shape) != tuple(like.shape):
            raise ElasticError(f"target: {key!r} has shape {tuple(like.shape)}, its source {skey!r} "
                               f"{tuple(value.shape)}; the mapping pairs units of different widths")
        out[key] = value.detach().clone()
        source_of[key] = skey
        unit = dst_layout.unit_of(key)
        if is_copy and unit is not None:
            prefix = dst_layout.stages[unit[0]][unit[1]]
            if prefix not in copies:
                copies.append(prefix)

    new_ticket = None
    if ticket is not None:
        masks = {}
        for key in target_state:
            if source_of[key] not in ticket:
                continue
            m = ticket[source_of[key]].clone()
            unit = dst_layout.unit_of(key)
            if random_copies is not None and unit is not None and dst_layout.stages[unit[0]][unit[1]] in copies:
                flat = m.flatten()
                m = flat[torch.randperm(flat.numel(), generator=random_copies)].reshape(m.shape)
            masks[key] = m
        meta = dict(getattr(ticket, "metadata", {}))
        meta.update(strategy="elastic" + ("_random_copies" if random_copies is not None else ""),
                    elastic_mapping=format_mapping(stages), source_model=meta.get("model", ""))
        meta.pop("model", None)
        new_ticket = Ticket(masks, meta)
    result = ElasticResult(out, new_ticket, stages, source_of, tuple(copies))
    result.report = sparsity_report(ticket, new_ticket, src_layout, dst_layout, stages, exclude)
    return result


def _density(masks: Mapping[str, torch.Tensor], names: Sequence[str]) -> dict[str, float | int]:
    kept = sum(int(masks[n].sum()) for n in names)
    total = sum(masks[n].numel() for n in names)
    return {"kept": kept, "total": total, "density": kept / total if total else 1.0,
            "sparsity": 1.0 - (kept / total if total else 1.0)}


def sparsity_report(src_ticket: Mapping[str, torch.Tensor] | None, dst_ticket: Mapping[str, torch.Tensor] | None,
                    src_layout: Layout, dst_layout: Layout, mapping: Sequence[StageMapping],
                    exclude: Sequence[str] = ()) -> dict[str, Any]:
    """Source vs target sparsity of the ticket entries not matching the ``exclude`` globs (they differ
    slightly: copies repeat a unit's density), in total and per stage, plus the mapping and the unit counts."""
    rep: dict[str, Any] = {"family": src_layout.family, "mapping": format_mapping(mapping),
                           "source_units": list(src_layout.lengths), "target_units": list(dst_layout.lengths)}
    if src_ticket is None or dst_ticket is None:
        return rep
    src_names = [n for n in src_ticket if not excluded(n, exclude)]
    dst_names = [n for n in dst_ticket if not excluded(n, exclude)]
    rep["source"], rep["target"] = _density(src_ticket, src_names), _density(dst_ticket, dst_names)
    rep["sparsity_change"] = rep["target"]["sparsity"] - rep["source"]["sparsity"]
    rep["stages"] = []
    for s in range(len(dst_layout.stages)):
        def in_stage(n, lay, s=s):
            u = lay.unit_of(n)
            return u is not None and u[0] == s

        rep["stages"].append({"source": _density(src_ticket, [n for n in src_names if in_stage(n, src_layout)]),
                              "target": _density(dst_ticket, [n for n in dst_names if in_stage(n, dst_layout)])})
    return rep


# ----------------------------------------------------------------------------------------------- model names

# timm's basic-block ResNets by depth; 26 is the ElasticLTH one (timm's own resnet26 is a bottleneck net).
_TIMM_BASIC = {10: (1, 1, 1, 1), 18: (2, 2, 2, 2), 26: (2, 3, 4, 3), 34: (3, 4, 6, 3)}


def model_depth(name: str, kwargs: Mapping[str, Any] | None = None) -> int:
    """The depth (weighted layers) of a supported model name, as used in ``model_for_depth``."""
    kwargs = dict(kwargs or {})
    if m := re.fullmatch(r"cifar_resnet_(\d+)(?:_\d+)?", name):
        return int(m.group(1))
    if m := re.fullmatch(r"cifar_vgg_(\d+)", name):
        return int(m.group(1))
    if m := re.fullmatch(r"(?:mnist_)?(?:lenet|mlp)_(\d+(?:_\d+)*)", name):
        return len(m.group(1).split("_")) + 1
    if m := re.fullmatch(r"timm:resnet(\d+)", name):
        layers = kwargs.get("layers")
        return 2 * sum(layers) + 2 if layers else int(m.group(1))
    raise ElasticError(f"model: {name!r} has no elastic family (cifar_resnet_<6n+2>, cifar_vgg_<n>, lenet_<w>_<w>..., "
                       "timm:resnet18/34)")


def model_for_depth(name: str, kwargs: Mapping[str, Any] | None, depth: int) -> tuple[str, dict[str, Any]]:
    """``(model name, model kwargs)`` of the family of ``name`` at ``depth``: ``cifar_resnet_20_8`` -> 32 gives
    ``cifar_resnet_32_8``; ``lenet_64_64`` -> 4 gives ``lenet_64_64_64`` (an MLP's extra layers repeat its
    last hidden width); ``timm:resnet18`` -> 26 gives ``timm:resnet18`` with ``layers=[2, 3, 4, 3]``."""
    kwargs = {k: v for k, v in dict(kwargs or {}).items() if k != "layers"}
    if m := re.fullmatch(r"cifar_resnet_(\d+)((?:_\d+)?)", name):
        if depth < 8 or (depth - 2) % 6:
            raise ElasticError(f"target: cifar_resnet needs a depth of 6n+2 (8, 14, 20, 32, 44, 56), got {depth}")
        return f"cifar_resnet_{depth}{m.group(2)}", kwargs
    if re.fullmatch(r"cifar_vgg_(\d+)", name):
        return f"cifar_vgg_{depth}", kwargs
    if m := re.fullmatch(r"((?:mnist_)?(?:lenet|mlp))_(\d+(?:_\d+)*)", name):
        widths = m.group(2).split("_")
        if depth < 2:
            raise ElasticError(f"target: an MLP needs a depth of at least 2 linear layers, got {depth}")
        hidden = widths[:depth - 1] if depth - 1 <= len(widths) else widths + [widths[-1]] * (depth - 1 - len(widths))
        return f"{m.group(1)}_{'_'.join(hidden)}", kwargs
    if re.fullmatch(r"timm:resnet(\d+)", name):
        if depth not in _TIMM_BASIC:
            raise ElasticError(f"target: basic-block ResNet depths are {sorted(_TIMM_BASIC)}, got {depth}")
        if depth in (18, 34):
            return f"timm:resnet{depth}", kwargs
        return "timm:resnet18", {**kwargs, "layers": list(_TIMM_BASIC[depth])}
    raise ElasticError(f"model: {name!r} has no elastic family (cifar_resnet_<6n+2>, cifar_vgg_<n>, lenet_<w>_<w>..., "
                       "timm:resnet18/34)")


__all__ = ["STRATEGIES", "ElasticError", "ElasticResult", "Layout", "check_mapping", "format_mapping",
           "generate_mapping", "layout_of", "model_depth", "model_for_depth", "parse_mapping", "sparsity_report",
           "transform"]
