"""``lth train --preset NAME``: the data, model and training of each ``lth imp`` preset (no pruning). Torch-free."""

from __future__ import annotations

from lth_kernels.training.hparams import register_preset
from lth_kernels.workflows.imp.presets import PRESETS as IMP_PRESETS

PRESETS = {name: {k: v for k, v in overrides.items() if k.split(".", 1)[0] in ("dataset", "model", "training")}
           for name, overrides in IMP_PRESETS.items()}


for _name, _overrides in PRESETS.items():
    register_preset("train", _name, _overrides)
