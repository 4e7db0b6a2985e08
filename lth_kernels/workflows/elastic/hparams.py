"""The hparams of ``lth elastic``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

from lth_kernels.training.hparams import Hparams, HparamsError, ModelHparams, hfield
from lth_kernels.workflows.imp.hparams import ImpHparams

WORKFLOW = "elastic"


DEFAULT_PRESET = "mlp-digits"


STRATEGIES = ("interpolate", "append")


# Two readings of the paper's random baseline: ``random`` prunes the target uniformly at random to the matched
# density over all its prunable weights (global); ``shuffled`` keeps the transformed ticket's density in every
# layer and moves its kept weights to random places within the layer (layerwise shuffle).
BASELINES = ("imp", "random", "shuffled", "magnitude", "snip", "grasp", "synflow", "reinit", "random_copies")


# Fields that say how much to do, not what a stage computes: extending them extends the same run.
JOB_FIELDS = ("pairs", "baselines", "lmc", "levels")


def parse_levels(text: str, last: int) -> list[int]:
    """``--levels``: ``""`` -> [last]; ``all`` -> 1..last; ``3-8`` -> 3..8; ``2,4,6`` (ranges and lists mix)."""
    text = text.strip()
    if not text:
        return [last]
    if text == "all":
        return list(range(1, last + 1))
    out: set[int] = set()
    for item in (x.strip() for x in text.split(",")):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m or (m.group(2) is not None and int(m.group(2)) < int(m.group(1))):
            raise HparamsError("levels", f"expected all, a range like 3-8 or a list like 2,4,6, got {text!r}")
        out.update(range(int(m.group(1)), int(m.group(2) or m.group(1)) + 1))
    if min(out) < 1 or max(out) > last:
        raise HparamsError("levels", f"the source IMP run has pruned levels 1..{last} (--imp.levels), got {text!r}")
    return sorted(out)


log = logging.getLogger(__name__)


def _digits_imp() -> ImpHparams:
    # lenet_100_100_100 on digits: the hidden layers after the first have the same width, so they are
    # the replicable units (one stage). Level 5 at 36% per level = 10.7% of the weights left (the paper's
    # CIFAR sparsity, 1 - 0.8^10); batches of 128 (11 steps per epoch, 30 epochs), rewound to epoch 2.
    # About 30 trainings of 330 steps: a few minutes on a laptop core.
    base = ImpHparams()
    return base.replace(model=ModelHparams(name="lenet_100_100_100"), rewind="2ep", levels=5,
                        pruning=base.pruning.replace(fraction=0.36), dataset=base.dataset.replace(batch_size=128))


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
    levels: str = hfield("", "IMP levels of the source run whose tickets are transformed, each with its own baselines "
                             "and LMC: all, a range 3-8 or a list 2,4,6 (empty: the last level, --imp.levels)")

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
        parse_levels(self.levels, self.imp.num_levels)
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
    def level_list(self) -> list[int]:
        """The source levels transformed (``--levels``), ascending."""
        return parse_levels(self.levels, self.imp.num_levels)

    def nominal_density(self, level: int | None = None) -> float:
        """The nominal density of the level-``level`` IMP ticket (default the last), ``(1 - fraction)^level``."""
        return (1.0 - self.imp.pruning.fraction) ** (self.imp.num_levels if level is None else level)

    @property
    def matched_density(self) -> float:
        """The nominal density of the last level's IMP ticket, ``(1 - fraction)^L``."""
        return self.nominal_density()
