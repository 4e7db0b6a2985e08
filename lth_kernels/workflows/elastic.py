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

Every stage is skipped when its output exists; rerunning with more ``--pairs`` or ``--baselines`` only runs
what is missing. This module does not import torch: ``lth elastic --help`` is instant.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from lth_kernels.training.hparams import Hparams, HparamsError, ModelHparams, PruningHparams, hfield
from lth_kernels.workflows.imp import ImpHparams

WORKFLOW = "elastic"
DEFAULT_PRESET = "mlp-digits"
STRATEGIES = ("interpolate", "append")
BASELINES = ("imp", "random", "magnitude", "snip", "grasp", "synflow", "reinit", "random_copies")
# Fields that say how much to do, not what a stage computes: extending them extends the same run.
JOB_FIELDS = ("pairs", "baselines", "lmc")

log = logging.getLogger(__name__)


def _digits_imp() -> ImpHparams:
    # lenet_100_100_100 on digits: the hidden layers after the first have the same width, so they are
    # the replicable units (one stage). Level 5 at 36% per level = 10.7% of the weights left (the paper's
    # CIFAR sparsity, 1 - 0.8^10); batches of 128 (11 steps per epoch, 30 epochs), rewound to epoch 2.
    # About 30 trainings of 330 steps: a few minutes on a laptop core.
    base = ImpHparams()
    return base.replace(model=ModelHparams(name="lenet_100_100_100"), rewind="2ep", levels=5,
                        pruning=PruningHparams(fraction=0.36), dataset=base.dataset.replace(batch_size=128))


@dataclass(frozen=True)
class ElasticHparams(Hparams):
    """Elastic ticket transformation. The defaults are the mlp-digits preset."""

    imp: ImpHparams = hfield(default_factory=_digits_imp)
    pairs: tuple[str, ...] = hfield(help="source:target depth pairs, e.g. 20:32,32:56,56:32 (depth = layers of the "
                                         "family of --imp.model.name: cifar_resnet_<d>, cifar_vgg_<d>, timm basic-"
                                         "block resnet 18/26/34, lenet MLP = hidden layers + 1)",
                                    default_factory=lambda: ("4:6", "4:3"))
    strategy: str = hfield("interpolate", "order of the copies when stretching (B1 B1' B2 B2' or B1 B2 B1' B2') and "
                                          "which blocks a squeeze keeps (evenly spread or the first ones)",
                           choices=STRATEGIES)
    block_mapping: dict[str, Any] = hfield(help="explicit mappings per pair in the reference syntax, overriding the "
                                                "generated ones: JSON, e.g. '{\"20:32\": \"0:0;1:1,2;2:3,4\"}' ('|' "
                                                "separates one mapping per stage)", default_factory=dict)
    baselines: tuple[str, ...] = hfield(help=f"baselines at the matched sparsity: {', '.join(BASELINES)}",
                                        default_factory=lambda: BASELINES)
    lmc: bool = hfield(True, "linear mode connectivity of the transformed ticket (two more trainings per pair)")
    lmc_points: int = hfield(21, "interpolation points of the linear mode connectivity, ends included")
    start_at_step_zero: bool = hfield(False, "train the transformed ticket from step 0 instead of the rewind step")
    prune_batches: int = hfield(8, "training batches SNIP and GraSP score on")
    seed: int = hfield(0, "seed of the random masks, the re-initialisation and the random copies")

    def validate(self):
        if not self.pairs:
            raise HparamsError("pairs", "needs at least one source:target pair")
        for p in self.pairs:
            if not re.fullmatch(r"\d+:\d+", p) or len(set(p.split(":"))) != 2:
                raise HparamsError("pairs", f"expected source:target depths that differ, e.g. 20:32, got {p!r}")
        for key, value in self.block_mapping.items():
            if key not in self.pairs or not isinstance(value, str):
                raise HparamsError("block_mapping", f"keys are pairs of --pairs and values mapping strings, got "
                                                    f"{key!r}: {value!r}")
        for name in self.baselines:
            if name not in BASELINES:
                raise HparamsError("baselines", f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
        if self.lmc_points < 2:
            raise HparamsError("lmc_points", f"must be >= 2, got {self.lmc_points}")
        if self.prune_batches < 1:
            raise HparamsError("prune_batches", f"must be >= 1, got {self.prune_batches}")
        if self.imp.num_levels < 1:
            raise HparamsError("imp.levels", f"the ticket is the last IMP level and must be pruned, got "
                                             f"{self.imp.num_levels}")
        if self.imp.branches:
            raise HparamsError("imp.branches", f"elastic trains its own controls (--baselines), got "
                                               f"{','.join(self.imp.branches)}")
        if ":" in self.imp.pruning.structure:
            raise HparamsError("imp.pruning.structure", "elastic tickets are unstructured or block masks, got "
                                                        f"{self.imp.pruning.structure!r}")

    def non_default(self) -> dict[str, Any]:
        """The non-default values that name the run (``JOB_FIELDS`` left out)."""
        return {k: v for k, v in super().non_default().items() if k.split(".", 1)[0] not in JOB_FIELDS}

    @property
    def pair_list(self) -> list[tuple[int, int]]:
        return [tuple(int(d) for d in p.split(":")) for p in self.pairs]

    @property
    def matched_density(self) -> float:
        """The nominal density of the IMP ticket, ``(1 - fraction)^L``: the baselines' density."""
        return (1.0 - self.imp.pruning.fraction) ** self.imp.num_levels


# ------------------------------------------------------------------------------------------------ presets


def _imp_preset(name: str, **changes) -> dict[str, Any]:
    from lth_kernels.workflows.imp_presets import PRESETS

    return {**{f"imp.{k}": v for k, v in PRESETS[name].items()}, **{f"imp.{k}": v for k, v in changes.items()}}


PRESETS = {
    "mlp-digits": {},
    # CIFAR-10 ResNets, Appendix Table 4: 160 epochs, SGD 0.1, rewind 1000 iterations, 10 levels of 20%
    # (89.26% sparsity). ResNet-20 -> 32 -> 56 and back 56 -> 32.
    "cifar_resnet-cifar10": {**_imp_preset("cifar_resnet_20-cifar10", rewind="1000it", levels=10),
                             "pairs": ("20:32", "32:56", "56:32")},
    # ImageNet basic-block ResNets (Table 1): source ResNet-26 (timm resnet18 with layers 2,3,4,3), 6 levels
    # of 20% (73.79%), rewind 5 epochs, to ResNet-18 and ResNet-34.
    "resnet-imagenet": {**_imp_preset("resnet50-imagenet", levels=6, **{"model.name": "timm:resnet18",
                                                                        "model.kwargs": {"layers": [2, 3, 4, 3]}}),
                        "pairs": ("26:18", "26:34")},
}


def register_presets() -> None:
    from lth_kernels.training.hparams import register_preset

    for name, overrides in PRESETS.items():
        register_preset(WORKFLOW, name, overrides)


register_presets()


# ------------------------------------------------------------------------------------------------ API and CLI


def run_elastic(hp: ElasticHparams, root: str = "runs", **kwargs):
    """Run (or resume) the elastic experiment ``hp`` under ``root``; returns the run directory (a ``Path``).

    ``kwargs`` go to ``ElasticRunner``: ``imp_root``, ``imp_runs`` (``{depth: run dir}``), ``device``,
    ``progress``, ``data``, ``callbacks``.
    """
    from lth_kernels.workflows.elastic_runner import ElasticRunner

    return ElasticRunner(hp, root=root, **kwargs).run()


def _imp_runs(text: str) -> dict[int, str]:
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        depth, sep, path = item.partition("=")
        if not sep or not depth.strip().isdigit() or not path.strip():
            raise ValueError(f"--imp_runs: expected DEPTH=DIR[,DEPTH=DIR], got {text!r}")
        out[int(depth)] = path.strip()
    return out


def _job_args(parser) -> None:
    parser.add_argument("--imp_root", "--imp-root", dest="imp_root", default=None,
                        help="where the IMP runs are made or found by their hash [--root]")
    parser.add_argument("--imp_runs", "--imp-runs", dest="imp_runs", default="",
                        help="existing IMP run directories by depth, e.g. 20=runs/imp-1a2b,32=runs/imp-3c4d")


def _run(hp: ElasticHparams, ns) -> None:
    from lth_kernels.training.distributed import is_main_process

    path = run_elastic(hp, root=ns.root, imp_root=ns.imp_root, imp_runs=_imp_runs(ns.imp_runs))
    if is_main_process():
        print((path / "table.md").read_text())


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows._cli import workflow_main

    return workflow_main(ElasticHparams, argv, workflow=WORKFLOW, prog="lth elastic", default_preset=DEFAULT_PRESET,
                         description="Elastic lottery tickets: transform an IMP ticket to other depths and compare "
                                     "with IMP on the target and pruning-at-initialisation baselines.",
                         extra_args=_job_args, run=_run)


__all__ = ["BASELINES", "ElasticHparams", "main", "run_elastic"]
