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
import operator
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)
# Channelwise ops with f(0) = 0 (a zero channel stays zero) and those without (sigmoid(0) = 0.5).
_ZERO_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Tanh, nn.Hardswish, nn.ELU, nn.Mish,
                 nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d,
                 nn.AdaptiveMaxPool2d)
_NONZERO_MODULES = (nn.Sigmoid, nn.Hardsigmoid)
_ZERO_FUNCS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.gelu, F.silu, torch.tanh, F.hardswish, F.elu,
               F.mish, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
               torch.flatten}
_NONZERO_FUNCS = {torch.sigmoid, F.sigmoid, F.hardsigmoid}
_ZERO_METHODS = {"relu", "relu_", "tanh", "contiguous", "clone", "flatten", "view", "reshape", "mean", "amax",
                 "sum", "float", "to", "type_as"}
_NONZERO_METHODS = {"sigmoid", "sigmoid_"}
_ADD = {operator.add, operator.iadd, torch.add, operator.sub, operator.isub, torch.sub, "add", "add_", "sub"}
_MUL = {operator.mul, operator.imul, torch.mul, "mul", "mul_"}


class ChannelPruneError(ValueError):
    """A channel mask that does not fit the model, or a model the graph analysis cannot trace."""


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


def _out_channels(mod: nn.Module) -> int | None:
    if isinstance(mod, _BN) and mod.affine:
        return mod.num_features
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    return None


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


# --------------------------------------------------------------------------------------------- graph


@dataclass
class _Space:
    size: int
    pinned: bool = False


@dataclass
class ChannelGraph:
    """The channel spaces of a traced model (see the module docstring).

    ``node_space[node] = (space id, repeat)``: the tensor's channels (dim 1, or dim 1 of a flattened feature
    map whose features are ``channel * repeat + position``). ``producers[space]``: Conv/Linear modules that
    open it; ``members[space]``: every module whose output lives in it.
    """

    gm: fx.GraphModule
    spaces: list[_Space] = field(default_factory=list)
    parent: list[int] = field(default_factory=list)
    node_space: dict[fx.Node, tuple[int, int]] = field(default_factory=dict)
    module_io: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]] = field(default_factory=dict)
    mixing_uses: list[tuple[fx.Node, tuple[int, int]]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)  # modules with channel parameters, in execution order

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def new(self, size: int, pinned: bool = False) -> int:
        self.spaces.append(_Space(size, pinned))
        self.parent.append(len(self.parent))
        return len(self.spaces) - 1

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if self.spaces[ra].size != self.spaces[rb].size:
            self.pin(ra)
            self.pin(rb)
        self.parent[rb] = ra
        self.spaces[ra].pinned |= self.spaces[rb].pinned
        return ra

    def pin(self, s: int) -> None:
        self.spaces[self.find(s)].pinned = True

    def space_of_module(self, name: str) -> int | None:
        """The root space of a module's output (None when it has none)."""
        io = self.module_io.get(name)
        return None if io is None or io[1] is None else self.find(io[1][0])

    def gateable(self) -> list[str]:
        """Modules whose output channels can be selected on their own (GFS layers), in execution order: the
        last affine module (BN, else the Conv/Linear) of an unpinned space opened by exactly one producer and
        merged with no other space (so not the residual stream of a ResNet)."""
        by_space: dict[int, list[str]] = {}
        for name in self.order:
            s = self.space_of_module(name)
            if s is not None:
                by_space.setdefault(s, []).append(name)
        producers: dict[int, int] = {}
        for name, (_, out) in self.module_io.items():
            if out is not None and self._opens.get(name):
                producers[self.find(out[0])] = producers.get(self.find(out[0]), 0) + 1
        out = []
        for s, names in by_space.items():
            if not self.spaces[s].pinned and producers.get(s) == 1:
                out.append(names[-1])
        return sorted(out, key=self.order.index)

    _opens: dict[str, bool] = field(default_factory=dict)


def _tensor_meta(node) -> torch.Size | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return getattr(meta, "shape", None)


class _LeafTracer(fx.Tracer):
    """Keeps Conv/Linear/BN subclasses (timm's ``BatchNormAct2d``, ``Conv2dSame``, ...) as single nodes."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (nn.Conv2d, nn.Linear) + _BN) or super().is_leaf_module(m, qualname)


def _act_keeps_zero(mod: nn.Module) -> bool:
    """A BN subclass with a fused activation (timm ``BatchNormAct2d``) maps a zeroed channel to zero only
    when that activation does."""
    act = getattr(mod, "act", None)
    return act is None or isinstance(act, _ZERO_MODULES)


def _trace(model: nn.Module, example_input: torch.Tensor) -> fx.GraphModule:
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        gm = fx.GraphModule(model, _LeafTracer().trace(model))
    except Exception as e:  # fx raises many types for untraceable code
        msg = " ".join(str(e).split())[:200]
        raise ChannelPruneError(f"model: {type(model).__name__} cannot be traced by torch.fx for physical "
                                f"channel pruning ({msg}); use mask_channels_ (the masked-channel mode)") from e
    was = model.training
    gm.eval()
    with torch.no_grad():
        ShapeProp(gm).propagate(example_input)
    gm.train(was)
    return gm


def analyse(model: nn.Module, example_input: torch.Tensor) -> ChannelGraph:
    """Trace ``model`` on ``example_input`` (``[B, ...]``, any batch size) and build its channel graph."""
    gm = _trace(model, example_input)
    g = ChannelGraph(gm)
    mods = dict(gm.named_modules())
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1

    def info(arg):
        return g.node_space.get(arg) if isinstance(arg, fx.Node) else None

    def pin_inputs(node):
        for a in node.all_input_nodes:
            i = info(a)
            if i is not None:
                g.pin(i[0])
                g.mixing_uses.append((a, i))

    def fresh(node, pinned=True):
        shape = _tensor_meta(node)
        if shape is not None and len(shape) >= 2:
            g.node_space[node] = (g.new(shape[1], pinned), 1)

    for node in gm.graph.nodes:
        shape = _tensor_meta(node)
        args = [a for a in node.args if isinstance(a, fx.Node)]
        first = info(args[0]) if args else None
        if node.op == "placeholder":
            fresh(node)
            continue
        if node.op == "output":
            pin_inputs(node)
            continue
        if node.op == "call_module":
            mod = mods[node.target]
            name = node.target
            if calls[name] > 1 and _out_channels(mod) is not None:  # a shared layer: its channels stay
                pin_inputs(node)
                fresh(node)
                continue
            in_dim = _tensor_meta(args[0]) if args else None
            if isinstance(mod, nn.Conv2d) and first is not None:
                if mod.groups == 1:
                    g.mixing_uses.append((args[0], first))
                    g.node_space[node] = (g.new(mod.out_channels), 1)
                    g._opens[name] = True
                elif mod.groups == mod.in_channels == mod.out_channels and first[1] == 1:
                    g.node_space[node] = first  # depthwise: channelwise
                else:
                    pin_inputs(node)
                    fresh(node)
                    continue
                g.module_io[name] = (first, g.node_space[node])
                g.order.append(name)
            elif isinstance(mod, nn.Linear) and first is not None and in_dim is not None and len(in_dim) == 2:
                g.mixing_uses.append((args[0], first))
                g.node_space[node] = (g.new(mod.out_features), 1)
                g._opens[name] = True
                g.module_io[name] = (first, g.node_space[node])
                g.order.append(name)
            elif isinstance(mod, _BN) and mod.affine and first is not None and first[1] == 1:
                g.node_space[node] = first
                g.module_io[name] = (first, first)
                g.order.append(name)
            elif isinstance(mod, _ZERO_MODULES + _NONZERO_MODULES) and first is not None:
                g.node_space[node] = first
            elif isinstance(mod, nn.Flatten) and first is not None:
                _flatten(g, node, args[0], first, mod.start_dim)
            else:
                pin_inputs(node)
                fresh(node)
            continue
        if node.op in ("call_function", "call_method"):
            target = node.target
            tensor_args = [a for a in node.all_input_nodes if info(a) is not None]
            if shape is None:  # x.size(), x.shape, ... : no tensor comes out
                continue
            if target in _ADD or target in _MUL:
                infos = [info(a) for a in tensor_args]
                same_rank = all(len(_tensor_meta(a)) == len(shape) for a in tensor_args)
                if infos and same_rank and len({i[1] for i in infos}) == 1 and len(shape) >= 2 \
                        and all(_tensor_meta(a)[1] == shape[1] for a in tensor_args):
                    root = infos[0][0]
                    for i in infos[1:]:
                        root = g.union(root, i[0])
                    g.node_space[node] = (root, infos[0][1])
                    continue
            elif target in (torch.flatten, "flatten") and first is not None:
                start = node.args[1] if len(node.args) > 1 else node.kwargs.get("start_dim", 0)
                _flatten(g, node, args[0], first, start)
                continue
            elif target in ("view", "reshape") and first is not None:
                in_shape = _tensor_meta(args[0])
                if len(shape) == 2 and in_shape is not None and shape[0] == in_shape[0]:
                    _flatten(g, node, args[0], first, 1)
                    continue
            elif target in ("mean", "amax", "sum") and first is not None:
                dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
                dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
                in_rank = len(_tensor_meta(args[0]))
                if dims and all(d % in_rank >= 2 for d in dims) and first[1] == 1:
                    g.node_space[node] = first
                    continue
            elif (target in _ZERO_FUNCS or target in _NONZERO_FUNCS or target in _ZERO_METHODS
                  or target in _NONZERO_METHODS) and first is not None and len(tensor_args) == 1 \
                    and len(shape) >= 2 and shape[1] == _tensor_meta(args[0])[1]:
                g.node_space[node] = first
                continue
            pin_inputs(node)
            fresh(node)
            continue
        if node.op == "get_attr":
            fresh(node)
    return g


def _flatten(g: ChannelGraph, node, src, src_info, start_dim) -> None:
    in_shape, out_shape = _tensor_meta(src), _tensor_meta(node)
    if start_dim == 1 and len(out_shape) == 2 and len(in_shape) >= 2:
        spatial = 1
        for s in in_shape[2:]:
            spatial *= s
        g.node_space[node] = (src_info[0], src_info[1] * spatial)
    else:
        g.mixing_uses.append((src, src_info))
        g.pin(src_info[0])
        g.node_space[node] = (g.new(out_shape[1] if len(out_shape) >= 2 else 1, True), 1)


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
        ins = [zero.get(a, None) for a in node.all_input_nodes if a in g.node_space]
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
