"""``lth elastic``: stretch and squeeze winning tickets across network depths (Elastic LTH, Chen et al. 2021).

For each pair ``S:T`` of depths the run takes the IMP ticket of the depth-S network (its level-L mask and
its rewind weights θ_K, BN included), transforms it to depth T with ``lth_kernels.tickets.elastic``
(generated mapping: stem, head and each stage's first block copied as they are; stretching repeats as many
distinct blocks as possible, as few times each, earlier ones first; squeezing drops blocks, never many
early ones; ``--block_mapping`` overrides it in the reference code's syntax) and trains it once from step K
with the target's schedule. In the same run directory, at the matched sparsity ``(1 - fraction)^L``, it
trains the baselines on the target: IMP found directly on it, random pruning, one-shot magnitude, SNIP,
GraSP and SynFlow (masks from the target's own θ_K, trained from there), the transformed mask on a
random re-initialisation, and the random-mask-for-copies ablation; then two copies of the transformed
ticket with different data orders for linear mode connectivity (test error at ``--lmc_points`` points).

The IMP runs (source and targets) are ordinary ``lth imp`` runs under ``--imp_root`` (default: ``--root``),
named by the hash of their hparams, so an IMP run made before with the same recipe is reused and a run
given with ``--imp_runs DEPTH=DIR`` is used as it is. Layout (``--root``/``elastic-<hash>/``)::

    hparams.json  summary.json  table.md  plots/elastic.png
    replicate_<r>/target_<T>/<method>/        mask.safetensors, sparsity_report.json, metrics.jsonl, done.json
        ett_from_<S>  ett_random_copies_from_<S>  reinit_from_<S>   (the transformed ticket and its controls)
        random  magnitude  snip  grasp  synflow                        (pruning at the matched sparsity)
        lmc_from_<S>/copy_a  copy_b  lmc.json                          (linear mode connectivity)
        elastic_from_<S>.json                                          (mapping and resulting sparsity)
        level_<l>/...                                                  (the same for source level l, --levels)

The stages of the last source level sit directly in ``target_<T>/``; ``--levels all|3-8|2,4,6`` adds the
other chosen levels' under ``level_<l>/``, each with baselines matched to its own transformed ticket. Every
stage is skipped when its output exists; rerunning with more ``--pairs``, ``--baselines`` or ``--levels`` only
runs what is missing. This module does not import torch: ``lth elastic --help`` is instant.
"""

# The package's face: the hparams (torch-free, so ``lth elastic --help`` is instant), the presets (registered on
# import), the CLI entry ``main`` and, imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.elastic import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.elastic.cli import main
from lth_kernels.workflows.elastic.hparams import BASELINES, DEFAULT_PRESET, WORKFLOW, ElasticHparams

__getattr__ = lazy_attributes(__name__, {"run_elastic": "runner", "ElasticRunner": "runner"})

__all__ = ["BASELINES", "DEFAULT_PRESET", "ElasticHparams", "ElasticRunner", "WORKFLOW", "main", "run_elastic"]
