"""Channel pruning: from per-layer channel masks to a masked-channel model or a narrower dense model.

A *channel mask* is keyed by the name of a module whose output channels it masks: a BatchNorm
(``nn.BatchNorm1d/2d``, affine), an ``nn.Conv2d`` or an ``nn.Linear``; ``True`` keeps the channel. Its
meaning is "this module's output is exactly zero on the masked channels":

* ``mask_channels_(model, masks)`` (the masked-channel mode, any model): zeroes the BN scale and shift
  (``gamma = beta = 0`` gives a zero output in train and eval mode) or the Conv/Linear output rows and bias;
  ``channel_param_masks`` gives the matching per-parameter masks that keep them zero during training.
* ``prune_channels(model, masks, example_input)`` (physical pruning): a deep copy whose Conv/Linear/BN
  layers are narrower, computing the same function as the masked-channel model.

Physical pruning traces the model with ``torch.fx`` and groups tensors into *channel spaces*: a Conv or
Linear output opens a space; channelwise ops (BN, activations, pooling, dropout, flatten of a feature map)
stay in it; a residual ``add`` (or a broadcast ``mul`` such as squeeze-excitation) merges the spaces of its
operands, because they must keep the same channels. That is the dependency-aware rule that makes torchvision
and timm ResNets (whose residual adds have no channel-selection layer) prunable. A channel of a space is
removed only when the masked-channel model is provably zero there at every *mixing* use (a Conv/Linear input,
or an op this module does not understand), found by propagating exact zeros through the graph: a masked BN
gives zeros; a ReLU/pool keeps zeros; an ``add`` is zero where all operands are; an unmasked BN is never zero
(its shift). So in a residual group, a channel goes only when every branch masks it, and a member that masks
a channel the group keeps gets that channel zeroed in place. The narrow model therefore equals the masked
one exactly (tests check VGG, CIFAR ResNets and torchvision ResNet-50). Spaces touched by ops that are not
understood (``cat``, ``LayerNorm``, attention, the model output) keep all their channels.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import fx, nn

from lth_kernels.nn._channel_graph import (
    _ADD,
    _BN,
    _MUL,
    _ZERO_FUNCS,
    _ZERO_METHODS,
    _ZERO_MODULES,
    ChannelGraph,
    ChannelPruneError,
    _act_keeps_zero,
    _out_channels,
    analyse,
)

# --------------------------------------------------------------------------------------------- masks


def _module_dict(model: nn.Module) -> dict[str, nn.Module]:
    return dict(model.named_modules())


def _check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Masks keyed by module name (a trailing ``.weight`` is accepted) -> bool CPU tensors, checked."""
    mods = _module_dict(model)
    out = {}
    for key, mask in masks.items():
        name = key[: -len(".weight")] if key.endswith(".weight") and key not in mods else key
        mod = mods.get(name)
        if mod is None:
            raise ChannelPruneError(f"masks: {key!r} is not a module of the model")
        n = _out_channels(mod)
        if n is None:
            raise ChannelPruneError(f"masks: {key!r} is a {type(mod).__name__}; channel masks go on BatchNorm "
                                    "(affine), Conv2d or Linear modules")
        if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (n,):
            shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
            raise ChannelPruneError(f"masks: {key!r} needs a [{n}] mask, got {shape}")
        out[name] = mask.detach().to("cpu").bool()
    return out


def channel_param_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Parameter name -> 0/1 mask broadcastable to the parameter, for the masked-channel mode: BN weight and
    bias ``[C]``; Conv ``[C, 1, 1, 1]``; Linear ``[C, 1]``; biases ``[C]``."""
    checked = _check_masks(model, masks)
    mods = _module_dict(model)
    out = {}
    for name, mask in checked.items():
        mod = mods[name]
        prefix = f"{name}." if name else ""
        w = mod.weight
        out[prefix + "weight"] = mask.view(-1, *([1] * (w.dim() - 1)))
        if getattr(mod, "bias", None) is not None:
            out[prefix + "bias"] = mask
    return out


@torch.no_grad()
def mask_channels_(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Zero the masked output channels in place (the masked-channel model); returns ``model``."""
    params = dict(model.named_parameters())
    for pname, m in channel_param_masks(model, masks).items():
        p = params[pname]
        p.mul_(m.to(device=p.device, dtype=p.dtype))
    return model


# --------------------------------------------------------------------------------------------- keep sets


def _zeros(g: ChannelGraph, masks: dict[str, torch.Tensor]) -> dict[fx.Node, torch.Tensor]:
    """Exact-zero channels of every node of the masked-channel model."""
    mods = dict(g.gm.named_modules())
    zero: dict[fx.Node, torch.Tensor] = {}
    for node in g.gm.graph.nodes:
        if node not in g.node_space:
            continue
        size = g.spaces[g.node_space[node][0]].size
        none = torch.zeros(size, dtype=torch.bool)
        ins = [zero.get(a) for a in node.all_input_nodes if a in g.node_space]
        if node.op == "call_module" and node.target in g.module_io:
            mod = mods[node.target]
            if node.target in masks and (not isinstance(mod, _BN) or _act_keeps_zero(mod)):
                z = ~masks[node.target]
            elif isinstance(mod, nn.Conv2d) and not g._opens.get(node.target) and mod.bias is None and ins:
                z = ins[0]  # depthwise conv without bias keeps zeros
            else:
                z = none
        elif node.op == "call_module":
            mod = mods[node.target]
            keeps = isinstance(mod, _ZERO_MODULES + (nn.Flatten,))
            z = ins[0] if keeps and ins and ins[0].shape[0] == size else none
        elif node.target in _ADD and ins and all(i.shape[0] == size for i in ins):
            constants = [a for a in node.args if not isinstance(a, fx.Node)]
            z = none if any(c != 0 for c in constants) else ins[0].clone()  # x + 1 is not zero
            for i in ins[1:]:
                z = z & i
        elif node.target in _MUL and ins and all(i.shape[0] == size for i in ins):
            z = ins[0].clone()
            for i in ins[1:]:
                z |= i
        elif (node.target in _ZERO_FUNCS or node.target in _ZERO_METHODS) and ins and ins[0].shape[0] == size:
            z = ins[0]
        else:
            z = none
        zero[node] = z
    return zero


def keep_sets(g: ChannelGraph, masks: Mapping[str, torch.Tensor]) -> dict[int, torch.Tensor]:
    """Root space -> sorted kept channel indices (see the module docstring for the rule)."""
    zero = _zeros(g, dict(masks))
    drop: dict[int, torch.Tensor] = {}
    for node, (s, _) in g.mixing_uses:
        root = g.find(s)
        z = zero.get(node, torch.zeros(g.spaces[s].size, dtype=torch.bool))
        drop[root] = drop[root] & z if root in drop else z.clone()
    out = {}
    for s in {g.find(i) for i in range(len(g.spaces))}:
        size = g.spaces[s].size
        d = drop.get(s)
        if g.spaces[s].pinned or d is None:
            out[s] = torch.arange(size)
            continue
        kept = (~d).nonzero().flatten()
        out[s] = kept if kept.numel() else torch.zeros(1, dtype=torch.long)  # keep one (zero) channel
    return out


def _expand(idx: torch.Tensor, repeat: int) -> torch.Tensor:
    if repeat == 1:
        return idx
    return (idx.view(-1, 1) * repeat + torch.arange(repeat).view(1, -1)).flatten()


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def _sliced(p: torch.Tensor, idx: torch.Tensor | None, dim: int = 0) -> torch.Tensor:
    return p if idx is None else p.index_select(dim, idx.to(p.device))


@torch.no_grad()
def _narrow(mod: nn.Module, o: torch.Tensor | None, i: torch.Tensor | None) -> nn.Module:
    """A copy of ``mod`` (its class kept, so subclasses keep their forward) with output channels ``o`` and
    input channels ``i`` (None: all)."""
    new = copy.deepcopy(mod)
    new.weight = nn.Parameter(_sliced(_sliced(mod.weight, o), i if mod.weight.dim() > 1 else None, 1),
                              requires_grad=mod.weight.requires_grad)
    if getattr(mod, "bias", None) is not None:
        new.bias = nn.Parameter(_sliced(mod.bias, o), requires_grad=mod.bias.requires_grad)
    n_out = new.weight.shape[0]
    if isinstance(mod, _BN):
        for buf in ("running_mean", "running_var"):
            if getattr(mod, buf, None) is not None:
                setattr(new, buf, _sliced(getattr(mod, buf), o).clone())
        new.num_features = n_out
    elif isinstance(mod, nn.Conv2d):
        new.out_channels = n_out
        if mod.groups != 1:  # depthwise: one input channel per output channel
            new.in_channels = new.groups = n_out
        else:
            new.in_channels = new.weight.shape[1]
    elif isinstance(mod, nn.Linear):
        new.out_features, new.in_features = n_out, new.weight.shape[1]
    return new


@dataclass
class PrunedChannels:
    """What ``prune_channels`` did: kept output-channel indices per narrowed module and the per-module
    channel counts before and after (the reference implementations' ``cfg``)."""

    kept: dict[str, list[int]]
    before: dict[str, int]
    after: dict[str, int]

    def to_dict(self) -> dict:
        return {"kept": self.kept, "before": self.before, "after": self.after}


def prune_channels(model: nn.Module, masks: Mapping[str, torch.Tensor], example_input: torch.Tensor, *,
                   graph: ChannelGraph | None = None) -> tuple[nn.Module, PrunedChannels]:
    """A narrower dense copy of ``model`` equal to the masked-channel model ``mask_channels_(model, masks)``.

    ``example_input``: one batch of valid inputs (shapes are propagated with it). Returns the new model and a
    ``PrunedChannels`` record. ``model`` itself is left unchanged.
    """
    masks = _check_masks(model, masks)
    g = graph if graph is not None else analyse(model, example_input)
    keep = keep_sets(g, masks)
    new = copy.deepcopy(model)
    mask_channels_(new, masks)
    mods = dict(new.named_modules())
    record = PrunedChannels({}, {}, {})
    for name in g.order:
        mod = mods[name]
        in_info, out_info = g.module_io[name]
        out_idx = keep[g.find(out_info[0])]
        in_idx = _expand(keep[g.find(in_info[0])], in_info[1]) if in_info is not None else None
        if isinstance(mod, _BN) or (isinstance(mod, nn.Conv2d) and mod.groups != 1):
            in_idx = None
        full_out = out_idx.numel() == _out_channels(mod)
        full_in = in_idx is None or in_idx.numel() == (mod.weight.shape[1] if mod.weight.dim() > 1 else 0)
        record.before[name] = _out_channels(mod)
        record.after[name] = out_idx.numel()
        record.kept[name] = out_idx.tolist()
        if full_out and full_in:
            continue
        _set_module(new, name, _narrow(mod, None if full_out else out_idx, None if full_in else in_idx))
    new.channel_config = record.after
    return new, record


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, example_input: torch.Tensor) -> int:
    """Forward FLOPs (2 x multiply-adds of matmuls and convolutions) for ``example_input``, counted by
    ``torch.utils.flop_counter``; divide by the batch size for per-sample FLOPs."""
    from torch.utils.flop_counter import FlopCounterMode

    was = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(example_input)
    model.train(was)
    return int(counter.get_total_flops())


__all__ = ["ChannelGraph", "ChannelPruneError", "PrunedChannels", "analyse", "channel_param_masks", "count_flops",
           "count_parameters", "keep_sets", "mask_channels_", "prune_channels"]
