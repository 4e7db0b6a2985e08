"""``lth train``: one dense or masked training run under the run rules of ``lth imp``.

The run is an IMP run without pruning levels: ``runs/train-<hash>/`` holds ``hparams.json`` (as IMP's, with
``levels = 0``), ``replicate_<r>/pretrain/`` (θ₀) and ``replicate_<r>/level_0/main/`` (the mask, metrics,
final weights), so it is skipped when done, resumes bit-exactly when killed, is read by ``lth report`` and
can seed an IMP run (``lth imp --init.weights .../step_<T>.safetensors --init.ticket .../mask.safetensors``).
``--init.ticket FILE`` trains under a mask (e.g. a ticket from another run or another tool), ``--init.weights
FILE`` starts from given weights. This module does not import torch: ``lth train --help`` is instant.
"""

# The package's face: the hparams (torch-free), the presets (registered on import), the CLI entry ``main`` and,
# imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.train import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.train.cli import main
from lth_kernels.workflows.train.hparams import DEFAULT_PRESET, WORKFLOW, TrainHparams

__getattr__ = lazy_attributes(__name__, {"run_train": "runner"})

__all__ = ["DEFAULT_PRESET", "TrainHparams", "WORKFLOW", "main", "run_train"]
