"""The stages of ``lth early-bird``: the detector callback, the search run, retraining and the table."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from lth_kernels.tickets.channels import (
    EarlyBirdDetector,
    bn_layers,
    bn_scale_masks,
    magnitude_masks,
    mask_distance,
    module_masks,
)
from lth_kernels.tickets.ticket import Ticket
from lth_kernels.training.checkpoint import load_weights, save_weights
from lth_kernels.training.metrics import read_metrics
from lth_kernels.training.rundir import atomic_write_json
from lth_kernels.training.trainer import Callback, Trainer

log = logging.getLogger(__name__)


SEARCH_RESULT = "early_bird.json"


def _pack(flat: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.packbits(flat.numpy()))


def _unpack(packed: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(np.unpackbits(packed.numpy())[:n].astype(bool))


class EarlyBirdCallback(Callback):
    """At every epoch start: one mask per ratio from the current weights, fed to one detector per ratio.

    The first hit per ratio calls ``on_found(ratio, epoch, ticket)`` (e.g. to save the ticket and weights);
    ``stop_when_all_found`` ends training once every ratio has fired. The pairwise distances of all epoch
    masks are kept for the heatmap (masks bit-packed, so unstructured masks of large models stay small).
    """

    def __init__(self, model, ratios, *, structure: str = "channel", queue: int = 5, epsilon: float = 0.1,
                 exclude=(), on_found=None, stop_when_all_found: bool = False):
        self.model, self.ratios, self.structure = model, [float(r) for r in ratios], structure
        self.exclude, self.on_found, self.stop = tuple(exclude), on_found, stop_when_all_found
        self.layers = bn_layers(model, self.exclude) if structure == "channel" else None
        self.detectors = {r: EarlyBirdDetector(queue, epsilon) for r in self.ratios}
        self.found: dict[float, int] = {}
        self.epochs: list[int] = []
        self.history: dict[float, list[torch.Tensor]] = {r: [] for r in self.ratios}
        self.dist: dict[float, list[list[float]]] = {r: [] for r in self.ratios}
        self.size = 0

    def mask(self, ratio: float) -> Ticket:
        if self.structure == "channel":
            return bn_scale_masks(self.model, ratio, layers=self.layers)
        return magnitude_masks(self.model, ratio, exclude=self.exclude)

    def observe(self, epoch: int) -> list[float]:
        """Record the masks of ``epoch``; returns the ratios whose ticket appeared now."""
        new = []
        self.epochs.append(epoch)
        for r in self.ratios:
            ticket = self.mask(r)
            flat = torch.cat([m.flatten() for m in ticket.values()])
            self.size = flat.numel()
            row = [mask_distance(_unpack(p, self.size), flat) for p in self.history[r]]
            for old, d in zip(self.dist[r], row):
                old.append(d)
            self.dist[r].append([*row, 0.0])
            self.history[r].append(_pack(flat))
            if self.detectors[r].update(flat) and r not in self.found:
                self.found[r] = epoch
                new.append(r)
                if self.on_found is not None:
                    self.on_found(r, epoch, ticket.with_metadata(early_bird_epoch=epoch, ratio=repr(r)))
        return new

    def on_epoch_start(self, trainer, epoch):
        if self.epochs and self.epochs[-1] == epoch:  # resumed mid-epoch boundary: already observed
            return
        for r in self.observe(epoch):
            log.info("early-bird ticket for ratio %g at epoch %d (distances %s)", r, epoch,
                     ", ".join(f"{d:.3f}" for d in self.detectors[r].distances))
        if self.stop and len(self.found) == len(self.ratios):
            trainer.request_stop()

    def state_dict(self) -> dict:
        return {"found": dict(self.found), "epochs": list(self.epochs), "size": self.size,
                "history": {r: list(h) for r, h in self.history.items()},
                "dist": {r: [list(x) for x in d] for r, d in self.dist.items()},
                "detectors": {r: d.state_dict() for r, d in self.detectors.items()}}

    def load_state_dict(self, state: dict) -> None:
        self.found, self.epochs, self.size = dict(state["found"]), list(state["epochs"]), state["size"]
        self.history = {r: list(h) for r, h in state["history"].items()}
        self.dist = {r: [list(x) for x in d] for r, d in state["dist"].items()}
        for r, s in state["detectors"].items():
            self.detectors[r].load_state_dict(s)

    def result(self, steps_per_epoch: int) -> dict:
        from lth_kernels.workflows.early_bird.hparams import pct
        return {"epochs": {pct(r): self.found.get(r) for r in self.ratios},
                "steps": {pct(r): (self.found[r] * steps_per_epoch if r in self.found else None)
                          for r in self.ratios},
                "steps_per_epoch": steps_per_epoch,
                "history": {"epochs": list(self.epochs), "distances": {pct(r): self.dist[r] for r in self.ratios}}}


def _loss_fn(hp, model, retrain: bool = False):
    from lth_kernels.workflows.early_bird.runner import slimming_loss
    eb = hp.early_bird
    s = eb.penalty if (not retrain or eb.retrain_penalty) else 0.0
    layers = bn_layers(model, eb.exclude) if s > 0 else []
    return slimming_loss(layers, s, hp.training.label_smoothing)


def search(hp, out: Path, train_ds, test_ds, info, device=None) -> dict:
    """The search run (dense training with the detectors); returns the found epochs and the distance history."""
    from lth_kernels.training.distributed import is_main_process
    from lth_kernels.workflows.common.structured import build_model
    from lth_kernels.workflows.early_bird.hparams import pct
    result_path = out / "search" / SEARCH_RESULT
    if result_path.exists():
        return json.loads(result_path.read_text())
    eb = hp.early_bird
    model = build_model(hp.model, info, hp.training.seed)

    def on_found(ratio, epoch, ticket):
        if not is_main_process():
            return
        d = out / f"eb_{pct(ratio)}"
        save_weights(model, d / "weights.safetensors", {"epoch": epoch})
        ticket.with_metadata(source_run=str(out)).save(d / "ticket.safetensors")

    cb = EarlyBirdCallback(model, eb.ratios, structure=eb.structure, queue=eb.queue, epsilon=eb.epsilon,
                           exclude=eb.exclude, on_found=on_found, stop_when_all_found=not eb.full_dense)
    trainer = Trainer(model, train_ds, test_ds, hp.training, batch_size=hp.dataset.batch_size, out_dir=out / "search",
                      callbacks=[cb], device=device, loss_fn=_loss_fn(hp, model))
    res = trainer.train()
    if res.skipped:  # done.json exists but the result file does not (killed in between): recover from it
        raise FileNotFoundError(f"{result_path} is missing while {out / 'search'} is finished; remove the search "
                                "directory to redo the search")
    found = cb.result(trainer.steps_per_epoch)
    found["final"] = res.metrics
    found["total_steps"] = trainer.total_steps
    found["stopped_at"] = res.step
    if is_main_process():
        atomic_write_json(result_path, found)
    return found


def _elapsed_at(metrics: list[dict], step: int) -> float | None:
    """Wall time of the run when it reached ``step`` (from its evaluation records)."""
    best = None
    for r in metrics:
        if r.get("step", -1) <= step:
            best = r.get("elapsed_s")
    return best


def zeroed_in_narrow(masks, record) -> dict[str, torch.Tensor]:
    """The masks that still mask something in the narrow model of ``prune_channels``: a channel a residual
    group keeps (another member needs it) but this member masks stays in the narrow model, zeroed in place;
    ``{module: mask over the narrow model's channels}`` for those modules only."""
    out = {}
    for name, m in masks.items():
        kept = record.kept.get(name)
        if kept is not None:
            narrow = m.bool()[torch.as_tensor(kept, dtype=torch.long)]
            if not bool(narrow.all()):
                out[name] = narrow
    return out


def retrain_ticket(hp, out: Path, ratio: str, found: dict, train_ds, test_ds, info, example, device=None) -> list[dict]:
    """Retrain one ratio's ticket in the requested variants; returns one table row per variant (+ the dense
    row for the first ratio)."""
    from lth_kernels.nn.channel_prune import channel_param_masks, mask_channels_, prune_channels
    from lth_kernels.workflows.common.structured import ParamMaskCallback, build_model, model_cost
    from lth_kernels.workflows.early_bird.hparams import pct
    eb, tr = hp.early_bird, hp.training
    key = pct(ratio)
    spe, total = found["steps_per_epoch"], found["total_steps"]
    batch = hp.dataset.batch_size
    dense = build_model(hp.model, info, tr.seed)
    dense_cost = model_cost(dense, example)
    search_metrics = read_metrics(out / "search" / "metrics.jsonl")
    rows = []
    if ratio == eb.ratios[0]:
        full = found["stopped_at"] == total
        rows.append({"method": "dense (full training)", "ratio": "-", "eb_epoch": "-", **dense_cost,
                     "train_flops": 3 * dense_cost["flops"] * batch * total,
                     "wall_s": _elapsed_at(search_metrics, total) if full else None,
                     "test_acc": found["final"].get("test_acc") if full else None})
    epoch = found["epochs"].get(key)
    if epoch is None:
        rows.append({"method": "no early-bird ticket", "ratio": key, "eb_epoch": None})
        return rows
    d = out / f"eb_{key}"
    ticket = Ticket.load(d / "ticket.safetensors")
    search_flops = 3 * dense_cost["flops"] * batch * epoch * spe
    search_time = _elapsed_at(search_metrics, epoch * spe)

    def prepared(model):
        """(model, callbacks) for the ticket: narrower, or masked with the masks kept at zero."""
        if eb.structure == "channel":
            masks = module_masks(ticket)
            if eb.mode == "physical":
                narrow, record = prune_channels(model, masks, example)
                atomic_write_json(d / "channels.json", record.to_dict())
                tied = zeroed_in_narrow(masks, record)
                # channels a residual add keeps were zeroed in place: keep them zero, or they regrow
                return narrow, [ParamMaskCallback(narrow, channel_param_masks(narrow, tied))] if tied else []
            mask_channels_(model, masks)
            return model, [ParamMaskCallback(model, channel_param_masks(model, masks))]
        pmasks = dict(ticket.items())
        return model, [ParamMaskCallback(model, pmasks)]

    for variant in eb.retrain:
        model = build_model(hp.model, info, tr.seed if variant == "eb_train" else tr.seed + 1)
        if variant == "eb_train":
            load_weights(model, d / "weights.safetensors")
        model, callbacks = prepared(model)
        cost = model_cost(model, example) if eb.structure == "channel" else {
            "params": int(ticket.num_kept + dense_cost["params"] - ticket.num_total), "flops": None}
        start = epoch * spe if variant == "eb_train" else 0
        trainer = Trainer(model, train_ds, test_ds, tr, batch_size=batch, out_dir=d / variant, callbacks=callbacks,
                          device=device, loss_fn=_loss_fn(hp, model, retrain=True))
        res = trainer.train(start_step=start)
        metrics = read_metrics(d / variant / "metrics.jsonl")
        retrain_time = _elapsed_at(metrics, total)
        flops = cost["flops"] if cost["flops"] is not None else dense_cost["flops"]
        train_flops = search_flops + 3 * flops * batch * (total - start)
        rows.append({"method": "EB train" if variant == "eb_train" else "EB train (re-init)", "ratio": key,
                     "eb_epoch": epoch, **cost, "train_flops": train_flops,
                     "wall_s": (search_time or 0.0) + (retrain_time or 0.0),
                     "test_acc": res.metrics.get("test_acc"), "sparsity": ticket.sparsity})
    return rows


def baseline_rows(hp, out: Path, ratio: str, found: dict, train_ds, test_ds, info, example, device=None) -> list[dict]:
    """The paper's Table 2 baselines at ``ratio``, from the fully trained dense network of the search run
    (its last weights; the baselines need ``full_dense``), with their total training FLOPs (dense training
    included):

    * ``lt_oneshot``: one-shot lottery ticket: the global magnitude mask removing ``ratio`` of the weights,
      the weights rewound to the initialisation, retrained masked for the whole schedule (dense compute);
    * ``slimming`` (Liu et al., network slimming): the BN-scale channel mask of the trained network, pruned
      physically (or masked, ``mode``), fine-tuned from the trained weights for the whole schedule without
      the penalty.
    """
    from lth_kernels.nn.channel_prune import channel_param_masks, mask_channels_, prune_channels
    from lth_kernels.training.checkpoint import load_step
    from lth_kernels.workflows.common.structured import ParamMaskCallback, build_model, model_cost
    from lth_kernels.workflows.early_bird.hparams import pct

    eb, tr = hp.early_bird, hp.training
    if not eb.baselines:
        return []
    key, total, batch = pct(ratio), found["total_steps"], hp.dataset.batch_size
    if found["stopped_at"] != total:
        return [{"method": f"{b} (needs --early_bird.full_dense true)", "ratio": key} for b in eb.baselines]
    dense = build_model(hp.model, info, tr.seed)
    dense_cost = model_cost(dense, example)
    dense_train = 3 * dense_cost["flops"] * batch * total
    trained = build_model(hp.model, info, tr.seed)
    load_step(out / "search", total, trained)
    rows = []
    for method in eb.baselines:
        d = out / f"eb_{key}" / method
        if method == "lt_oneshot":
            ticket = magnitude_masks(trained, float(ratio), exclude=eb.exclude)
            model = build_model(hp.model, info, tr.seed)  # rewound to the initialisation
            callbacks = [ParamMaskCallback(model, dict(ticket.items()))]
            cost = {"params": int(ticket.num_kept + dense_cost["params"] - ticket.num_total), "flops": None}
            flops = dense_cost["flops"]
        else:
            masks = module_masks(bn_scale_masks(trained, float(ratio), exclude=eb.exclude))
            model = build_model(hp.model, info, tr.seed)
            load_step(out / "search", total, model)
            if eb.mode == "physical":
                model, record = prune_channels(model, masks, example)
                tied = zeroed_in_narrow(masks, record)
                callbacks = [ParamMaskCallback(model, channel_param_masks(model, tied))] if tied else []
            else:
                mask_channels_(model, masks)
                callbacks = [ParamMaskCallback(model, channel_param_masks(model, masks))]
            cost = model_cost(model, example)
            flops = cost["flops"]
        trainer = Trainer(model, train_ds, test_ds, tr, batch_size=batch, out_dir=d, callbacks=callbacks,
                          device=device)
        res = trainer.train()
        wall = _elapsed_at(read_metrics(out / "search" / "metrics.jsonl"), total) or 0.0
        rows.append({"method": "LT (one-shot magnitude)" if method == "lt_oneshot" else "network slimming",
                     "ratio": key, "eb_epoch": "-", **cost, "train_flops": dense_train + 3 * flops * batch * total,
                     "wall_s": wall + (_elapsed_at(read_metrics(d / "metrics.jsonl"), total) or 0.0),
                     "test_acc": res.metrics.get("test_acc")})
    return rows
