"""The pieces of ``bench/e2e.py``: model variants (dense, open_lth-style ``W*M``, the project's layers), tickets,
CIFAR-shaped data through both data pipelines, and the step timer that rides on the Trainer.

Every variant trains through :class:`lth_kernels.training.Trainer` (the loop an IMP level runs: bf16 autocast,
the mask guard, the data path), timed by a callback between step boundaries after a warm-up, so the time per
step includes whatever the host does between steps (data loading, index sources) but not evaluation.
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn.masked import MaskedLinear
from lth_kernels.nn.sparsify import _layer_slots, _swap, _weight_name, sparsify
from lth_kernels.ops.semi_structured import semi_structured_linear
from lth_kernels.tickets import prune
from lth_kernels.training import Callback, Trainer

# --------------------------------------------------------------------------------------------- baselines


class WMLinear(nn.Linear):
    """open_lth-style masking: a plain ``nn.Linear`` whose forward multiplies the weight by a float mask on
    every call (autograd then masks dW through the product); what users run without sparse layers."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.weight_mask, self.bias)


class WMConv2d(nn.Conv2d):
    """The ``W*M`` convolution (see ``WMLinear``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight * self.weight_mask, self.bias)


def _as_wm(layer: nn.Module, mask: torch.Tensor) -> nn.Module:
    """``layer`` as its W*M twin: re-classed in place, so parameters, hooks and attributes stay; pruned weights
    are zeroed once, as open_lth's ``PrunedModel`` does at construction."""
    layer.__class__ = WMLinear if isinstance(layer, nn.Linear) else WMConv2d
    w = layer.weight
    layer.register_buffer("weight_mask", mask.to(device=w.device, dtype=w.dtype), persistent=False)
    with torch.no_grad():
        w.mul_(layer.weight_mask)
    return layer


def wm_masked(model: nn.Module, ticket) -> nn.Module:
    """Every layer ``ticket`` names becomes a ``W*M`` layer with its mask."""
    slots = [s for s in _layer_slots(model) if _weight_name(s[0]) in ticket]
    names = {id(s[3]): _weight_name(s[0]) for s in slots}
    return _swap(model, slots, lambda layer: _as_wm(layer, ticket[names[id(layer)]]))


class SemiStructuredMaskedLinear(MaskedLinear):
    """A ``MaskedLinear`` whose forward is :func:`lth_kernels.ops.semi_structured_linear` (2:4 on the sparse
    tensor cores where the measured dispatch finds it faster, else the masked dense path)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return semi_structured_linear(x, self.weight, self.mask, self.bias)


def semi_structured(model: nn.Module, ticket) -> nn.Module:
    """``sparsify(model, ticket)``, then every masked linear layer runs the 2:4 op (convs stay masked)."""
    model = sparsify(model, ticket)
    slots = [s for s in _layer_slots(model) if type(s[3]) is MaskedLinear]
    return _swap(model, slots, SemiStructuredMaskedLinear.from_dense)


# --------------------------------------------------------------------------------------------- tickets

TICKETS = {  # name -> prune() arguments (global magnitude pruning of the model's prunable weights)
    "unstructured80": {"fraction": 0.8},
    "unstructured95": {"fraction": 0.95},
    "block64_90": {"fraction": 0.9, "structure": "block64"},
    "2:4": {"structure": "2:4"},
}


def make_ticket(model: nn.Module, name: str):
    if name not in TICKETS:
        raise ValueError(f"ticket: unknown ticket {name!r}; valid: {', '.join(TICKETS)}")
    return prune(model, "magnitude", **TICKETS[name])


def ticket_density(ticket) -> float:
    kept = sum(int(m.sum()) for m in ticket.values())
    return kept / max(1, sum(m.numel() for m in ticket.values()))


def apply_variant(model: nn.Module, variant: str, ticket) -> nn.Module:
    """dense | wm (W*M layers) | ours (``sparsify``: the dispatch of the masked layers) | ours_2to4."""
    if variant == "dense":
        return model
    if variant == "wm":
        return wm_masked(model, ticket)
    if variant == "ours":
        return sparsify(model, ticket)
    if variant == "ours_2to4":
        return semi_structured(model, ticket)
    raise ValueError(f"variant: unknown variant {variant!r}; valid: dense, wm, ours, ours_2to4")


def block_sparse_layers(model: nn.Module, device: torch.device) -> int:
    """How many masked linear layers route to the block-sparse kernels on ``device``."""
    return sum(1 for m in model.modules() if type(m) is MaskedLinear and m._block_layout(device) is not None)


# --------------------------------------------------------------------------------------------- data


def cifar_files(root: str, n_train: int, n_test: int) -> str:
    """CIFAR-10-shaped files in torchvision's format under ``root`` (written once per root); returns ``root``."""
    from bench.data_files import write_cifar

    if not os.path.isdir(os.path.join(root, "cifar-10-batches-py")):
        write_cifar(root, n_train, n_test)
    return root


def cifar_pipeline(root: str, pipeline: str, num_workers: int | str):
    """(train, test) of the CIFAR-shaped files through ``create_dataset``: ``device`` (uint8 resident on the
    training device, crop + flip + normalise per batch there) or ``loader`` (torchvision's per-image
    transforms in DataLoader workers)."""
    from bench.data_files import unchecked_cifar
    from lth_kernels.data import create_dataset

    with unchecked_cifar():
        train, test, _ = create_dataset("cifar10", data_dir=root, pipeline=pipeline, num_workers=num_workers)
    return train, test


# ------------------------------------------------------------------------------------------- workflow parts


def data_ticket_parts():
    """The data-ticket workflow's pieces a student is built from: (PatchSelector, SelectorPatches, StepClock,
    TicketStudent)."""
    from lth_kernels.workflows.data_ticket.selector import PatchSelector
    from lth_kernels.workflows.data_ticket.students import SelectorPatches, StepClock, TicketStudent

    return PatchSelector, SelectorPatches, StepClock, TicketStudent


def imp_presets() -> dict:
    """``lth imp``'s presets (open_lth's training lengths and batch sizes)."""
    try:
        from lth_kernels.workflows.imp.presets import PRESETS
    except ImportError:
        from lth_kernels.workflows.imp_presets import PRESETS
    return PRESETS


# --------------------------------------------------------------------------------------------- timing


class StepTimer(Callback):
    """Marks step boundaries ``warmup, warmup + n, ..., warmup + windows * n`` (steps done) with CUDA events
    (recorded without a sync, so queued work overlaps as in training) or the wall clock on CPU; ``ms_per_step``
    is the median over the windows. ``warmup_s`` is the wall time to the end of the warm-up steps (compilation,
    autotuning, the first epoch's loader start)."""

    def __init__(self, device: torch.device, warmup: int, steps: int, windows: int):
        self.cuda = device.type == "cuda"
        self.marks = [warmup + i * steps for i in range(windows + 1)]
        self.steps = steps
        self.points: list = []
        self.warmup_s = None

    def on_train_start(self, trainer, step: int) -> None:
        self.t0 = time.perf_counter()

    def on_after_optimizer_step(self, trainer, step: int) -> None:
        # Before the Trainer's end-of-run evaluation (which runs ahead of on_step_end).
        if step not in self.marks:
            return
        if step == self.marks[0]:
            if self.cuda:
                torch.cuda.synchronize()
            self.warmup_s = time.perf_counter() - self.t0
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.points.append(ev)
        else:
            self.points.append(time.perf_counter())

    @property
    def end_step(self) -> int:
        return self.marks[-1]

    def ms_per_step(self) -> float:
        if len(self.points) != len(self.marks):
            raise RuntimeError(f"timer: {len(self.points)} of {len(self.marks)} step marks were reached")
        if self.cuda:
            self.points[-1].synchronize()
            ms = [a.elapsed_time(b) for a, b in zip(self.points, self.points[1:])]
        else:
            ms = [(b - a) * 1e3 for a, b in zip(self.points, self.points[1:])]
        return sorted(ms)[len(ms) // 2] / self.steps


class TimedTrainer(Trainer):
    """The Trainer without its end-of-run evaluation: only training steps are timed, so a row spends its time
    on them."""

    def evaluate(self) -> dict:
        return {"test_loss": float("nan"), "test_acc": float("nan"), "test_n": 0}


def steps_for(epochs_or_steps: str, num_train: int, batch: int) -> int:
    """A preset's training length (``'160ep'``) in steps of ``batch`` over ``num_train`` images (the Trainer's
    epochs: the tail batch is dropped)."""
    from lth_kernels.training.steps import parse_steps

    return parse_steps(epochs_or_steps, num_train // batch, "training_steps").iteration
