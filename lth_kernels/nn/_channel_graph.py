"""The channel graph behind ``nn.channel_prune``: an ``torch.fx`` trace grouped into channel spaces.

See ``lth_kernels.nn.channel_prune`` for the rules; this module only builds the graph.
"""

from __future__ import annotations

import operator
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


def _out_channels(mod: nn.Module) -> int | None:
    if isinstance(mod, _BN) and mod.affine:
        return mod.num_features
    if isinstance(mod, nn.Conv2d):
        return mod.out_channels
    if isinstance(mod, nn.Linear):
        return mod.out_features
    return None


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

    def streams(self) -> list[list[str]]:
        """Residual streams whose channels can be selected as one GFS layer, in execution order: for each
        unpinned space written by two or more producers (merged by residual adds), the modules that carry a
        shared gate, one per producer (the BN reading the producer alone, else the producer). A gate on every
        branch gates the stream itself only when the stream is positively homogeneous in its branches, so a
        space qualifies only when every op in it is: adds, ReLU, pooling, flatten, dropout, reshapes, and no
        BN or other module of its own (a pre-activation BN on the stream, a squeeze-excitation product or a
        GELU rule it out)."""
        mods = dict(self.gm.named_modules())
        by_space: dict[int, list[fx.Node]] = {}
        for node, (sp, _) in self.node_space.items():
            by_space.setdefault(self.find(sp), []).append(node)
        out = []
        for sp, nodes in by_space.items():
            producers = [n for n in nodes if n.op == "call_module" and self._opens.get(n.target)]
            if self.spaces[sp].pinned or len(producers) < 2:
                continue
            gates = []
            for p in producers:
                users = list(p.users)
                bn = users[0] if len(users) == 1 and users[0].op == "call_module" and \
                    isinstance(mods.get(users[0].target), _BN) else None
                gates.append(bn if bn is not None and _homogeneous(mods[bn.target]) else p)
            gate_nodes = set(gates) | set(producers)
            if all(n in gate_nodes or _homogeneous_op(n, mods) for n in nodes):
                out.append([g.target for g in gates])
        return sorted(out, key=lambda names: self.order.index(names[0]))

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


# Ops g with g(s x) = s g(x) per channel for s >= 0: a residual stream made of them and adds is gated exactly by
# gating each branch that writes it.
_HOMOGENEOUS_MODULES = (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.Identity, nn.Dropout, nn.Dropout2d, nn.MaxPool2d,
                        nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten)
_HOMOGENEOUS_FUNCS = {F.relu, torch.relu, F.leaky_relu, F.dropout, F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d,
                      F.adaptive_max_pool2d, torch.flatten, operator.add, operator.iadd, torch.add}
_HOMOGENEOUS_METHODS = {"relu", "relu_", "contiguous", "clone", "flatten", "view", "reshape", "mean", "amax", "sum",
                        "float", "to", "type_as", "add", "add_"}


def _homogeneous(mod: nn.Module) -> bool:
    """A BN whose fused activation (timm ``BatchNormAct2d``) is positively homogeneous, or none."""
    act = getattr(mod, "act", None)
    return act is None or isinstance(act, _HOMOGENEOUS_MODULES)


def _homogeneous_op(node, mods) -> bool:
    if node.op == "call_module":
        return isinstance(mods.get(node.target), _HOMOGENEOUS_MODULES)
    if node.op == "call_function":
        return node.target in _HOMOGENEOUS_FUNCS
    if node.op == "call_method":
        return node.target in _HOMOGENEOUS_METHODS
    return False


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


