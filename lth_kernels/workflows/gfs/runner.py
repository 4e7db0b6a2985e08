"""The runner of ``lth gfs``: pre-train, prune layer by layer (``prune``), fine-tune; or the budget study."""

from __future__ import annotations

import logging
from pathlib import Path

from lth_kernels.workflows.gfs.hparams import WORKFLOW, GfsHparams


def run(hp: GfsHparams, root: str | Path = "runs", device=None) -> dict:
    """One pruning run, or the budget study (``gfs.budget_study``); returns the summary dict."""
    from lth_kernels.training import distributed as dist_utils
    from lth_kernels.training.rundir import prepare_run_dir
    from lth_kernels.workflows.common.inputs import make_model, open_dataset

    data = open_dataset(hp.dataset)  # every input is checked before the run directory exists
    make_model(hp.model, data[2], meta=True)
    out = prepare_run_dir(WORKFLOW, hp, root, write=dist_utils.is_main_process())
    # the resolved hparams are in <run>/hparams.json; the console gets the run directory and one line
    log.info("lth gfs -> %s (%s on %s; hparams in hparams.json)", out, hp.model.name, hp.dataset.name)
    if hp.gfs.budget_study:
        from lth_kernels.workflows.gfs.budget import budget_study

        return budget_study(hp, out, device, data=data)
    from lth_kernels.workflows.gfs.prune import prune_run

    return prune_run(hp, out, device, data=data)

log = logging.getLogger(__name__)
