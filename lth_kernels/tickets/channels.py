"""Channel tickets and the early-bird detector (You et al., ICLR 2020; reference ``main.py``, class ``EarlyBird``).

* ``bn_scale_masks(model, ratio)``: one *global* channel mask from the BatchNorm scales: concatenate
  ``|gamma|`` over every BN layer, ``thr = sorted(|gamma|)[floor(ratio * total)]``, keep ``|gamma| > thr``
  (so ``ratio`` is the share of channels pruned). The result is a ``Ticket`` keyed by the BN weight names
  (``layers.0.bn.weight -> bool[C]``, metadata ``structure=channel``), so layers of different widths form one
  flat mask of fixed length (the answer to GATECH-EIC/Early-Bird-Tickets issue #2).
* ``mask_distance(a, b)``: normalised Hamming distance ``1 - #equal / total`` over the flat masks.
* ``EarlyBirdDetector``: a FIFO of the last ``queue`` masks; it fires when the distances from the newest
  mask to all ``queue - 1`` older ones are ``<= epsilon`` (defaults 5 and 0.1 as in the reference; the
  distance slots start at 1, so it cannot fire before the queue is full). The maintainers found epsilon = 0.1
  robust on PreResNet-101, VGG-16 and ResNet-18/50 (issue #2); it is a fraction of *all* channels (or
  weights), so on a tiny network one flipped channel may already be a large distance.
* ``slimming_penalty(model, s)``: network slimming's ``s * sum|gamma|``; added to the loss its gradient is
  the reference's ``gamma.grad += s * sign(gamma)``.
"""

from __future__ import annotations

import fnmatch
import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from lth_kernels.tickets.prunable import canonical_name
from lth_kernels.tickets.ticket import Ticket

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def bn_layers(model: nn.Module, exclude: Iterable[str] = ()) -> list[tuple[str, nn.Module]]:
    """(canonical module name, module) of every affine BatchNorm, in model order, minus ``exclude`` globs
    (matched against the module name and its ``.weight`` parameter name)."""
    globs = tuple(exclude)
    out = []
    for name, m in model.named_modules():
        if isinstance(m, _BN) and m.affine:
            cname = canonical_name(name)
            if not any(fnmatch.fnmatchcase(cname, g) or fnmatch.fnmatchcase(f"{cname}.weight", g) for g in globs):
                out.append((cname, m))
    return out


def _check_ratio(ratio) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0 or math.isnan(ratio):
        raise ValueError(f"ratio: expected the share of channels to prune in [0, 1), got {ratio!r}")
    return float(ratio)


@torch.no_grad()
def bn_scale_masks(model: nn.Module, ratio: float, *, exclude: Iterable[str] = (),
                   layers: Sequence[tuple[str, nn.Module]] | None = None) -> Ticket:
    """The global BN-scale channel ticket pruning ``ratio`` of the channels (see the module docstring)."""
    ratio = _check_ratio(ratio)
    layers = bn_layers(model, exclude) if layers is None else layers
    if not layers:
        raise ValueError(f"model: {type(model).__name__} has no affine BatchNorm layer to rank channels by "
                         "(the early-bird channel detector needs BN scales; use the unstructured variant)")
    scales = [m.weight.detach().abs().float().cpu() for _, m in layers]
    flat = torch.cat(scales)
    thr = flat.sort().values[int(flat.numel() * ratio)]
    masks = {f"{name}.weight": s > thr for (name, _), s in zip(layers, scales)}
    return Ticket(masks, {"strategy": "bn_scale", "structure": "channel", "scope": "global",
                          "fraction": repr(ratio)})


def magnitude_masks(model: nn.Module, ratio: float, *, exclude: Iterable[str] = ()) -> Ticket:
    """The unstructured variant: the global magnitude ticket (``tickets.prune(model, "magnitude", ratio)``)
    of a dense model, i.e. ``ratio`` of the prunable weights removed."""
    from lth_kernels.tickets.strategies import prune

    ratio = _check_ratio(ratio)
    if ratio == 0.0:
        return Ticket.ones(model, metadata={"strategy": "magnitude", "scope": "global"})
    return prune(model, "magnitude", ratio, current=Ticket.ones(model), scope="global", exclude=tuple(exclude))


def flat_mask(masks: Mapping[str, torch.Tensor] | torch.Tensor) -> torch.Tensor:
    """One flat bool vector: the masks concatenated in their order (a tensor is flattened as is)."""
    if isinstance(masks, torch.Tensor):
        return masks.detach().flatten().bool().cpu()
    if not masks:
        return torch.zeros(0, dtype=torch.bool)
    return torch.cat([m.detach().flatten().bool().cpu() for m in masks.values()])


def mask_distance(a: Mapping[str, torch.Tensor] | torch.Tensor, b: Mapping[str, torch.Tensor] | torch.Tensor) -> float:
    """Normalised Hamming distance ``1 - #equal / total`` between two masks of the same layout."""
    if isinstance(a, Mapping) and isinstance(b, Mapping) and list(a) != list(b):
        raise ValueError(f"b: the masks cover different layers ({list(a)[:3]} vs {list(b)[:3]})")
    fa, fb = flat_mask(a), flat_mask(b)
    if fa.shape != fb.shape:
        raise ValueError(f"b: masks of {fa.numel()} and {fb.numel()} entries cannot be compared")
    return float((fa != fb).sum()) / fa.numel() if fa.numel() else 0.0


def distance_matrix(masks: Sequence[Mapping[str, torch.Tensor] | torch.Tensor]) -> torch.Tensor:
    """``[n, n]`` float64 matrix of pairwise ``mask_distance`` (the reference's ``overlap-<p>.npy``)."""
    flats = [flat_mask(m) for m in masks]
    n = len(flats)
    out = torch.zeros(n, n, dtype=torch.float64)
    if n == 0:
        return out
    stack = torch.stack(flats)
    for i in range(n):
        out[i] = (stack != stack[i]).sum(dim=1).double() / max(stack.shape[1], 1)
    return out


class EarlyBirdDetector:
    """FIFO of the last ``queue`` masks; ``update(mask)`` returns True when the early-bird condition holds:
    all ``queue - 1`` distances from the newest mask to the older ones are ``<= epsilon``."""

    def __init__(self, queue: int = 5, epsilon: float = 0.1):
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 2:
            raise ValueError(f"queue: expected an int >= 2 (masks compared), got {queue!r}")
        if not isinstance(epsilon, (int, float)) or not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon: expected a distance in [0, 1], got {epsilon!r}")
        self.queue, self.epsilon = queue, float(epsilon)
        self.masks: deque[torch.Tensor] = deque(maxlen=queue)
        self.distances = [1.0] * (queue - 1)  # slots start at 1: no detection before the queue is full

    def update(self, mask: Mapping[str, torch.Tensor] | torch.Tensor) -> bool:
        flat = flat_mask(mask)
        if self.masks and flat.shape != self.masks[-1].shape:
            raise ValueError(f"mask: {flat.numel()} entries, the queue holds masks of {self.masks[-1].numel()}")
        self.masks.append(flat)
        n = len(self.masks)
        for i in range(n - 1):  # slot i: distance between the newest and the i-th oldest mask
            self.distances[i] = mask_distance(self.masks[i], flat)
        return self.fired

    @property
    def fired(self) -> bool:
        return len(self.masks) == self.queue and max(self.distances) <= self.epsilon

    def state_dict(self) -> dict:
        return {"masks": [m.clone() for m in self.masks], "distances": list(self.distances)}

    def load_state_dict(self, state: dict) -> None:
        self.masks = deque((m.bool() for m in state["masks"]), maxlen=self.queue)
        self.distances = list(state["distances"])


def slimming_penalty(layers: Sequence[tuple[str, nn.Module]], s: float) -> torch.Tensor | float:
    """``s * sum |gamma|`` over ``layers`` (network slimming's L1 term; 0.0 when ``s == 0``)."""
    if s == 0 or not layers:
        return 0.0
    return s * sum(m.weight.abs().sum() for _, m in layers)


def module_masks(ticket: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A channel ticket keyed by BN weight names -> masks keyed by module name (for ``nn.channel_prune``)."""
    return {k[: -len(".weight")] if k.endswith(".weight") else k: m for k, m in ticket.items()}


__all__ = ["EarlyBirdDetector", "bn_layers", "bn_scale_masks", "distance_matrix", "flat_mask", "magnitude_masks",
           "mask_distance", "module_masks", "slimming_penalty"]
