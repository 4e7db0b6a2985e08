"""The mask search of lottery jackpots: initial masks, mask-update rules, the swap callback, one search run.

Rules (applied after every optimizer step, per layer, the kept count preserved exactly):

* ``restricted`` (TPAMI "short restriction", the reference's ``final_pop_up``): with ``τ`` the ``p``-th
  smallest score (``p`` = pruned count), the revive set ``R`` = pruned weights with score > τ and the drop set
  ``D`` = kept weights with score ≤ τ; when ``|R| = |D| > 0`` the top ``⌈ρ·|R|⌉`` of ``R`` are revived and the
  lowest ``⌈ρ·|R|⌉`` of ``D`` pruned, otherwise (ties at τ) nothing changes this step.
* ``edge_popup``: the mask becomes the top-k of the scores (k = kept count) at every step, ties at the
  threshold resolved in favour of the current mask. Updating right after the optimizer step is the same as
  taking the top-k at every forward, since scores change only there.
* ``random_swap`` (sanity baseline, the reference's ``val_pop_up``): a shadow mask follows ``restricted`` on the
  same scores, and the layer's mask makes as many swaps per step, between uniformly drawn kept and pruned
  weights. (Counting the swaps on the random mask itself would not do: once it disagrees with the scores,
  every weight is a candidate and each step re-draws the whole mask.)

ρ is constant or scheduled over the search epochs: ``constant`` ρ, ``cosine`` ρ·½(1+cos(π·e/E)) (the hook
of the reference's ``imagenet.py``) or ``poly4`` ρ·(1-e/E)⁴ (the hook of its ``cifar.py``, without the
``ceil`` that made it 1 there).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from lth_kernels.nn.scored import PRUNED_SCORE, score_layers
from lth_kernels.tickets import Ticket, prunable_parameters, prune
from lth_kernels.tickets.prunable import iter_maskable
from lth_kernels.training import Callback, Trainer

RULES = ("restricted", "edge_popup", "random_swap")


RHO_SCHEDULES = ("constant", "cosine", "poly4")


def rho_at(rho: float, schedule: str, t: float) -> float:
    """Restriction rate at search progress ``t`` in [0, 1] (epochs done / search epochs)."""
    t = min(1.0, max(0.0, t))
    if schedule == "constant":
        return rho
    if schedule == "cosine":
        return rho * 0.5 * (1.0 + math.cos(math.pi * t))
    if schedule == "poly4":
        return rho * (1.0 - t) ** 4
    raise ValueError(f"rho_schedule: expected one of {', '.join(RHO_SCHEDULES)}, got {schedule!r}")


def _candidates(scores: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(revive set R, drop set D) as flat bool tensors, or None when the layer is all kept / all pruned."""
    s = scores.detach().reshape(-1)
    m = mask.view(-1)
    n_pruned = m.numel() - int(m.sum())
    if n_pruned == 0 or n_pruned == m.numel():
        return None
    tau = s.kthvalue(n_pruned).values  # the p-th smallest score
    return ~m & (s > tau), m & (s <= tau)


def _swap_count(revive: torch.Tensor, drop: torch.Tensor, rho: float) -> int:
    nr, nd = int(revive.sum()), int(drop.sum())
    if nr == 0 or nr != nd:
        return 0
    return min(nr, math.ceil(rho * nr))


@torch.no_grad()
def restricted_swap(scores: torch.Tensor, mask: torch.Tensor, rho: float) -> int:
    """The short-restriction update of one layer's bool ``mask`` (contiguous, changed in place) from its
    ``scores``; returns the number of swapped pairs."""
    cand = _candidates(scores, mask)
    if cand is None:
        return 0
    revive, drop = cand
    k = _swap_count(revive, drop, rho)
    if k == 0:
        return 0
    s, m = scores.detach().reshape(-1), mask.view(-1)
    up = torch.where(revive, s, -math.inf).topk(k).indices  # the highest-scoring pruned weights above τ
    down = torch.where(drop, -s, -math.inf).topk(k).indices  # the lowest-scoring kept weights at or below τ
    m[up] = True
    m[down] = False
    return k


@torch.no_grad()
def top_k_update(scores: torch.Tensor, mask: torch.Tensor) -> int:
    """Edge-popup: ``mask`` (changed in place) becomes the top-k of ``|scores|`` (Ramanujan et al. rank the
    absolute scores; the magnitude init is positive, so it is the same there) with k its kept count, ties at
    the threshold going to weights that are kept now; returns the number of newly kept weights."""
    s, m = scores.detach().reshape(-1).abs(), mask.view(-1)
    kept = int(m.sum())
    if kept in (0, m.numel()):
        return 0
    tau = s.kthvalue(m.numel() - kept).values
    new = s > tau
    need = kept - int(new.sum())
    if need > 0:  # fill from the tie group at τ, currently kept weights first
        key = torch.where(s == tau, m.to(s.dtype), -math.inf)
        new[key.topk(need).indices] = True
    swaps = int((new & ~m).sum())
    m.copy_(new)
    return swaps


@torch.no_grad()
def random_swap(mask: torch.Tensor, k: int, generator: torch.Generator) -> int:
    """Swap ``k`` uniformly drawn kept weights of ``mask`` (changed in place) with ``k`` pruned ones."""
    m = mask.view(-1)
    kept_idx, pruned_idx = m.nonzero().squeeze(1).cpu(), (~m).nonzero().squeeze(1).cpu()
    k = min(k, kept_idx.numel(), pruned_idx.numel())
    if k <= 0:
        return 0
    up = pruned_idx[torch.randperm(pruned_idx.numel(), generator=generator)[:k]]
    down = kept_idx[torch.randperm(kept_idx.numel(), generator=generator)[:k]]
    m[up.to(m.device)] = True
    m[down.to(m.device)] = False
    return k


class SwapCallback(Callback):
    """Applies a mask rule to every scored layer after each optimizer step and logs the swaps per epoch.

    ``history``: one record per finished epoch, ``{"epoch", "rho", "swaps", "per_layer": {name: swaps}}``.
    """

    def __init__(self, layers: Mapping[str, nn.Module], rule: str = "restricted", rho: float = 1.0,
                 rho_schedule: str = "constant", seed: int = 0):
        if rule not in RULES:
            raise ValueError(f"rule: expected one of {', '.join(RULES)}, got {rule!r}")
        if not 0.0 <= rho <= 1.0:
            raise ValueError(f"rho: expected a rate in [0, 1], got {rho!r}")
        rho_at(rho, rho_schedule, 0.0)  # validates the schedule name
        self.layers, self.rule, self.rho, self.rho_schedule = dict(layers), rule, rho, rho_schedule
        self.generator = torch.Generator().manual_seed(seed)
        self.history: list[dict] = []
        self._epoch = {name: 0 for name in self.layers}
        self._epochs = 1
        # random_swap: the mask the restricted rule would have, which sets the number of random swaps
        self._shadow = ({name: layer.b_mask.detach().clone() for name, layer in self.layers.items()}
                        if rule == "random_swap" else {})

    def on_train_start(self, trainer: Trainer, step: int) -> None:
        self._epochs = max(1, math.ceil(trainer.total_steps / trainer.steps_per_epoch))

    def current_rho(self, trainer: Trainer, step: int) -> float:
        """ρ of the step that led to state ``step`` (its epoch counts)."""
        return rho_at(self.rho, self.rho_schedule, ((step - 1) // trainer.steps_per_epoch) / self._epochs)

    def on_after_optimizer_step(self, trainer: Trainer, step: int) -> None:
        rho = self.current_rho(trainer, step)
        for name, layer in self.layers.items():
            if self.rule == "restricted":
                n = restricted_swap(layer.scores, layer.b_mask, rho)
            elif self.rule == "edge_popup":
                n = top_k_update(layer.scores, layer.b_mask)
            else:
                n = random_swap(layer.b_mask, restricted_swap(layer.scores, self._shadow[name], rho), self.generator)
            self._epoch[name] += n

    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None:
        rho = self.current_rho(trainer, (epoch + 1) * trainer.steps_per_epoch)
        self.history.append({"epoch": epoch + 1, "rho": rho if self.rule != "edge_popup" else None,
                             "swaps": sum(self._epoch.values()), "per_layer": dict(self._epoch)})
        self._epoch = {name: 0 for name in self.layers}

    def state_dict(self) -> dict:
        return {"history": list(self.history), "epoch": dict(self._epoch), "generator": self.generator.get_state(),
                "shadow": {name: m.cpu() for name, m in self._shadow.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.history, self._epoch = list(state["history"]), dict(state["epoch"])
        self.generator.set_state(state["generator"])
        for name, m in state["shadow"].items():
            self._shadow[name].copy_(m)


def classifier_name(model: nn.Module) -> str:
    """The weight name of the output layer: timm's ``get_classifier()`` when there is one, else the last
    ``nn.Linear`` / ``nn.Conv2d`` in module order."""
    maskable = [(name, module) for name, module, _ in iter_maskable(model)]
    if not maskable:
        raise ValueError(f"model: {type(model).__name__} has no nn.Linear / nn.Conv2d layer")
    get = getattr(model, "get_classifier", None)
    head = get() if callable(get) else None
    for name, module in maskable:
        if module is head:
            return name
    return maskable[-1][0]


def search_names(model: nn.Module, exclude: Iterable[str] = ()) -> list[str]:
    """The weights the search scores: prunable weights minus the classifier and ``exclude`` globs."""
    return list(prunable_parameters(model, (*exclude, classifier_name(model))))


def initial_ticket(model: nn.Module, sparsity: float, layerwise: str = "l1", exclude: Iterable[str] = ()) -> Ticket:
    """The magnitude mask the search starts from, over :func:`search_names` only.

    ``l1``: one global magnitude threshold over the searched weights (per-layer rates follow from it, as in
    the reference's ``generate_pr_cfg``); ``uniform``: ``sparsity`` of every layer.
    """
    if layerwise not in ("l1", "uniform"):
        raise ValueError(f"layerwise: expected 'l1' or 'uniform', got {layerwise!r}")
    names = search_names(model, exclude)
    searched = set(names)
    others = [name for name, _, _ in iter_maskable(model) if name not in searched]
    t = prune(model, "magnitude", sparsity, scope="global" if layerwise == "l1" else "layerwise", exclude=others,
              use_default_exclude=False)
    return Ticket({n: t[n] for n in names}, {**t.metadata, "layerwise": layerwise})


def run_search(model: nn.Module, ticket: Mapping[str, torch.Tensor], train_ds, test_ds, training, *,
               batch_size: int, rule: str = "restricted", rho: float = 1.0, rho_schedule: str = "constant",
               pruned_score: float = PRUNED_SCORE, seed: int = 0, out_dir=None, device=None, callbacks=(),
               progress: bool = True, score_init: str = "magnitude"):
    """Score the layers of ``ticket`` in ``model`` (in place) and search their masks with ``rule`` for
    ``training.training_steps``; only the scores train. ``score_init``: ``magnitude`` (1.0 / ``pruned_score``
    on the ticket) or ``kaiming`` (Kaiming-uniform scores, the mask their per-layer top-k, edge-popup's init).
    Returns ``(TrainResult, SwapCallback, Trainer)``."""
    layers = score_layers(model, ticket, pruned_score=pruned_score, score_init=score_init,
                          generator=torch.Generator().manual_seed(seed))
    swaps = SwapCallback(layers, rule, rho, rho_schedule, seed)
    trainer = Trainer(model, train_ds, test_ds, training, batch_size=batch_size, out_dir=out_dir, device=device,
                      callbacks=[swaps, *callbacks], mask_mode="off", progress=progress)
    result = trainer.train()
    return result, swaps, trainer

__all__ = ["RHO_SCHEDULES", "RULES", "SwapCallback", "classifier_name", "initial_ticket", "random_swap",
           "restricted_swap", "rho_at", "run_search", "search_names", "top_k_update"]
