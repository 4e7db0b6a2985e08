"""The runner of ``lth early-bird``: search (``search``), retrain each ratio's ticket, table and heatmap."""

from __future__ import annotations

import logging
from pathlib import Path

import torch.nn.functional as F

from lth_kernels.workflows.early_bird.hparams import WORKFLOW, EarlyBirdHparams, pct


def run(hp: EarlyBirdHparams, root: str | Path = "runs", device=None) -> dict:
    """Run (or resume) the whole workflow; returns the summary dict."""
    from lth_kernels.training import distributed as dist_utils
    from lth_kernels.training.rundir import atomic_write_json, atomic_write_text, prepare_run_dir
    from lth_kernels.workflows.common.inputs import make_model
    from lth_kernels.workflows.common.plots import plot_mask_distance
    from lth_kernels.workflows.common.structured import build_data, example_batch
    from lth_kernels.workflows.early_bird.report import summary_table
    from lth_kernels.workflows.early_bird.search import baseline_rows, retrain_ticket, search

    train_ds, test_ds, info = build_data(hp.dataset)  # every input is checked before the run directory exists
    make_model(hp.model, info, meta=True)
    out = prepare_run_dir(WORKFLOW, hp, root, write=dist_utils.is_main_process())
    # the resolved hparams are in <run>/hparams.json; the console gets the run directory and one line
    log.info("lth early-bird -> %s (%s on %s; hparams in hparams.json)", out, hp.model.name, hp.dataset.name)
    example = example_batch(train_ds)
    found = search(hp, out, train_ds, test_ds, info, device)
    rows = []
    for r in hp.early_bird.ratios:
        rows += retrain_ticket(hp, out, r, found, train_ds, test_ds, info, example, device)
        rows += baseline_rows(hp, out, r, found, train_ds, test_ds, info, example, device)
    summary = {"run_dir": str(out), "found": found, "rows": rows}
    if dist_utils.is_main_process():
        table = summary_table(rows)
        atomic_write_text(out / "table.md", table)
        atomic_write_json(out / "summary.json", summary)
        hist = found["history"]
        plot_mask_distance(out / "plots" / "mask_distance.png", hist["distances"], hist["epochs"],
                           {pct(r): found["epochs"].get(pct(r)) for r in hp.early_bird.ratios},
                           title=f"{hp.model.name} on {hp.dataset.name} ({hp.early_bird.structure} masks)",
                           epsilon=hp.early_bird.epsilon)
        print(table)
    return summary


def slimming_loss(layers, s: float, label_smoothing: float = 0.0):
    """Cross entropy + ``s * sum|gamma|``: the penalty's gradient is the reference's ``s * sign(gamma)`` added
    to the BN-scale gradients (so the logged training loss includes the penalty)."""
    from lth_kernels.tickets.channels import slimming_penalty

    def loss_fn(out, y):
        return F.cross_entropy(out, y, label_smoothing=label_smoothing) + slimming_penalty(layers, s)

    return loss_fn

log = logging.getLogger(__name__)
