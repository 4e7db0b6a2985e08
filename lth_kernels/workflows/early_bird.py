"""``lth early-bird``: early-bird tickets (You et al., ICLR 2020), channel and unstructured.

1. **Search**: train the dense network with network slimming's L1 penalty on the BN scales (``s = 1e-4``).
   At every epoch start, for each pruning ratio at once (default 0.3, 0.5, 0.7), draw the global mask
   (channel: BN-scale ranking; unstructured: global weight magnitude) and feed an ``EarlyBirdDetector``
   (FIFO of 5, fires when all 4 distances to the newest mask are <= 0.1). The first hit per ratio saves
   ``eb_<pct>/ticket.safetensors`` and the weights of that moment; training goes on (``full_dense``: the whole
   schedule, which gives the dense baseline and the full distance heatmap), or stops once every ratio has one.
2. **Retrain** each ticket: ``eb_train`` continues the schedule from the EB epoch on the pruned network (the
   reference's ``main_c.py --scratch ... --start-epoch``, penalty on); ``eb_reinit`` trains the pruned
   architecture from a fresh initialisation for the whole schedule. Channel tickets become a narrower dense
   model (``mode=physical``, ``nn.channel_prune``) or stay a masked-channel model (``mode=masked``, any
   model); unstructured tickets are trained masked.
3. **Report**: ``summary.json``, ``table.md`` (EB epoch, parameters, FLOPs, training FLOPs and wall time saved
   against full dense training, accuracy) and ``plots/mask_distance.png``.

Run tree: ``runs/early-bird-<hash>/{hparams.json, search/, eb_<pct>/{ticket.safetensors, weights.safetensors,
channels.json, eb_train/, eb_reinit/}, summary.json, table.md, plots/}``; every stage resumes or is skipped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch.nn.functional as F

from lth_kernels.training.hparams import (
    DatasetHparams,
    Hparams,
    HparamsError,
    ModelHparams,
    TrainingHparams,
    hfield,
    register_preset,
)

log = logging.getLogger(__name__)
WORKFLOW = "early-bird"


@dataclass(frozen=True)
class EarlyBirdOptions(Hparams):
    """Early-bird detection and retraining."""

    structure: str = hfield("channel", "channel: BN-scale channel masks; unstructured: global weight magnitude",
                            choices=("channel", "unstructured"))
    ratios: tuple[str, ...] = hfield(help="pruning ratios tracked at once (share of channels/weights removed)",
                                     default_factory=lambda: ("0.3", "0.5", "0.7"))
    penalty: float = hfield(1e-4, "network-slimming L1 penalty s on the BN scales (0: off)")
    queue: int = hfield(5, "masks kept in the FIFO; the detector compares the newest with the others")
    epsilon: float = hfield(0.1, "fire when every distance in the queue is <= epsilon")
    full_dense: bool = hfield(True, "train the dense network for the whole schedule (dense baseline, full "
                                    "heatmap); false stops the search once every ratio has its ticket")
    exclude: tuple[str, ...] = hfield(help="globs of BN layers (channel) or weights (unstructured) not ranked",
                                      default_factory=tuple)
    retrain: tuple[str, ...] = hfield(help="retraining variants: eb_train, eb_reinit (empty: none)",
                                      default_factory=lambda: ("eb_train", "eb_reinit"))
    mode: str = hfield("physical", "channel tickets: physical = narrower dense model, masked = zeroed channels",
                       choices=("physical", "masked"))
    retrain_penalty: bool = hfield(True, "keep the L1 penalty on during eb_train (as the reference does)")

    def validate(self):
        for r in self.ratios:
            try:
                v = float(r)
            except ValueError:
                raise HparamsError("ratios", f"expected numbers in (0, 1), got {r!r}") from None
            if not 0.0 < v < 1.0:
                raise HparamsError("ratios", f"expected numbers in (0, 1), got {r!r}")
        if not self.ratios:
            raise HparamsError("ratios", "needs at least one ratio")
        if self.queue < 2:
            raise HparamsError("queue", f"must be >= 2, got {self.queue}")
        if not 0.0 <= self.epsilon <= 1.0:
            raise HparamsError("epsilon", f"must be in [0, 1], got {self.epsilon}")
        if self.penalty < 0:
            raise HparamsError("penalty", f"must be >= 0, got {self.penalty}")
        bad = [v for v in self.retrain if v not in ("eb_train", "eb_reinit")]
        if bad:
            raise HparamsError("retrain", f"expected eb_train and/or eb_reinit, got {bad[0]!r}")


@dataclass(frozen=True)
class EarlyBirdHparams(Hparams):
    """lth early-bird: search for early-bird tickets, retrain them, report the savings."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(batch_size=64))
    model: ModelHparams = hfield(default_factory=lambda: ModelHparams(name="mlp_bn_256_128"))
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        lr=0.1, weight_decay=1e-4, training_steps="40ep", milestone_steps="20ep,30ep", seed=0))
    early_bird: EarlyBirdOptions = hfield(default_factory=EarlyBirdOptions)


_PAPER = {"training.lr": 0.1, "training.momentum": 0.9, "training.weight_decay": 1e-4,
          "training.training_steps": "160ep", "training.milestone_steps": "80ep,120ep", "dataset.batch_size": 256}
register_preset(WORKFLOW, "mlp-digits", {})  # the embedded default: the class defaults
register_preset(WORKFLOW, "cifar_vgg_16-cifar100", {**_PAPER, "dataset.name": "cifar100", "model.name": "cifar_vgg_16"})
register_preset(WORKFLOW, "cifar_resnet_20-cifar10", {**_PAPER, "dataset.name": "cifar10",
                                                      "model.name": "cifar_resnet_20"})
register_preset(WORKFLOW, "resnet18-imagenet", {
    **_PAPER, "dataset.name": "imagefolder", "model.name": "timm:resnet18", "training.training_steps": "90ep",
    "training.milestone_steps": "30ep,60ep"})


def pct(ratio: str | float) -> str:
    """``"0.3" -> "30"`` (directory and table keys)."""
    return f"{float(ratio) * 100:g}"


def run(hp: EarlyBirdHparams, root: str | Path = "runs", device=None) -> dict:
    """Run (or resume) the whole workflow; returns the summary dict."""
    from lth_kernels.training import distributed as dist_utils
    from lth_kernels.training.rundir import atomic_write_json, atomic_write_text, prepare_run_dir
    from lth_kernels.workflows._eb_stages import retrain_ticket, search, summary_table
    from lth_kernels.workflows._plots import plot_mask_distance
    from lth_kernels.workflows._structured import build_data, example_batch

    out = prepare_run_dir(WORKFLOW, hp, root, write=dist_utils.is_main_process())
    log.info("lth early-bird -> %s\n%s", out, hp.to_json())
    train_ds, test_ds, info = build_data(hp.dataset)
    example = example_batch(train_ds)
    found = search(hp, out, train_ds, test_ds, info, device)
    rows = []
    for r in hp.early_bird.ratios:
        rows += retrain_ticket(hp, out, r, found, train_ds, test_ds, info, example, device)
    summary = {"run_dir": str(out), "found": found, "rows": rows}
    if dist_utils.is_main_process():
        table = summary_table(rows)
        atomic_write_text(out / "table.md", table)
        atomic_write_json(out / "summary.json", summary)
        hist = found["history"]
        plot_mask_distance(out / "plots" / "mask_distance.png", hist["distances"], hist["epochs"],
                           {pct(r): found["epochs"].get(pct(r)) for r in hp.early_bird.ratios},
                           title=f"{hp.model.name} on {hp.dataset.name} ({hp.early_bird.structure} masks)")
        print(table)
    return summary


def slimming_loss(layers, s: float, label_smoothing: float = 0.0):
    """Cross entropy + ``s * sum|gamma|``: the penalty's gradient is the reference's ``s * sign(gamma)`` added
    to the BN-scale gradients (so the logged training loss includes the penalty)."""
    from lth_kernels.tickets.channels import slimming_penalty

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=label_smoothing) + slimming_penalty(layers, s)

    return loss_fn


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows._cli import workflow_main

    return workflow_main(EarlyBirdHparams, argv, workflow=WORKFLOW, prog="lth early-bird", default_preset="mlp-digits",
                         description=__doc__.splitlines()[0], run=lambda hp, ns: run(hp, ns.root))


__all__ = ["EarlyBirdHparams", "EarlyBirdOptions", "main", "run", "slimming_loss"]
