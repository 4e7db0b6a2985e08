"""``lth imp``: iterative magnitude pruning with rewinding (open_lth's lottery runner), with control branches.

Per replicate ``r`` (seeds shifted by ``r``) the run trains the dense network from θ₀ to the rewind step
K (``pretrain/``, θ_K; K = 0 is the original LTH), then level 0 trains dense from θ_K to the end, and
each level L ≥ 1 removes ``ceil(fraction × remaining)`` of the still-unpruned prunable weights by the
magnitude of level L-1's final weights (keep iff |w| > threshold; global ranking unless
``--pruning.scope layerwise``), rewinds to θ_K, applies the mask and retrains with the same schedule and
data order from step K. Branches re-train each level's ticket under a control (``random_reinit``,
``random_prune``, ``retrain``; see ``branches``).

Layout (``--root``/``imp-<hash>/``, the hash covers the hparams that change what the main run computes)::

    hparams.json  summary.json  plots/
    replicate_<r>/pretrain/                      θ₀ (step_0) and θ_K (step_<K>)
    replicate_<r>/level_<L>/main/                mask.safetensors, sparsity_report.json, metrics.jsonl,
                                                 step_<T>.safetensors (final weights), done.json
    replicate_<r>/level_<L>/<branch>[-<hash>]/   the same for a branch (hash of its non-default options)

Every stage is skipped when its output exists and resumes from its checkpoint when killed, so rerunning the
same command (or one with more ``--levels``, ``--replicates`` or ``--branches``) only does what is missing.

This module does not import torch: ``lth imp --help`` is instant.
"""

# The package's face: the hparams (torch-free, so ``lth imp --help`` is instant), the presets (registered on
# import), the CLI entry ``main`` and, imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.imp import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.imp.cli import main
from lth_kernels.workflows.imp.hparams import (
    DEFAULT_PRESET,
    WORKFLOW,
    ImpHparams,
    RandomPruneHparams,
    RandomReinitHparams,
    RetrainHparams,
)

__getattr__ = lazy_attributes(__name__, {"run_imp": "runner", "ImpRunner": "runner"})

__all__ = ["DEFAULT_PRESET", "ImpHparams", "ImpRunner", "RandomPruneHparams", "RandomReinitHparams",
           "RetrainHparams", "WORKFLOW", "main", "run_imp"]
