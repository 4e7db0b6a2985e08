"""The hparams of ``lth jackpot``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lth_kernels.training.hparams import DatasetHparams, Hparams, HparamsError, ModelHparams, TrainingHparams, hfield

log = logging.getLogger(__name__)


WORKFLOW = "jackpot"


_RULES = ("restricted", "edge_popup", "random_swap")  # search.RULES, kept torch-free for --help


_CRITERIA = ("magnitude", "snip", "grasp", "synflow", "random")


_INITS = ("magnitude", "kaiming")  # nn.scored.SCORE_INITS, kept torch-free for --help


@dataclass(frozen=True)
class SourceHparams(Hparams):
    """Where the frozen weights come from."""

    weights: str | None = hfield(None, "pre-trained weights: a .safetensors / torch state-dict file (e.g. a timm "
                                       "model's local weights) or a run directory of this project")
    train_dense: bool = hfield(True, "without --source.weights: train the model dense first (pretrain group)")
    random_weights: bool = hfield(False, "ablation: search on the random initialisation (also --random-weights)")


@dataclass(frozen=True)
class SearchHparams(Hparams):
    """Mask search."""

    sparsities: tuple[str, ...] = hfield(help="sparsities searched, comma separated", default_factory=lambda: ("0.9",))
    layerwise: str = hfield("l1", "per-layer sparsity: l1 = one global magnitude threshold, uniform = same in "
                                  "every layer", choices=("l1", "uniform"))
    rule: str = hfield("restricted", "mask update after each step: restricted (short restriction), edge_popup "
                                     "(top-k) or random_swap (sanity baseline)", choices=_RULES)
    rho: float = hfield(1.0, "restriction rate: at most ceil(rho*|R|) swaps per layer and step")
    rho_schedule: str = hfield("constant", "rho over the search epochs: constant, cosine (rho*(1+cos(pi*e/E))/2) "
                                           "or poly4 (rho*(1-e/E)^4)", choices=("constant", "cosine", "poly4"))
    baselines: tuple[str, ...] = hfield(help="other rules searched for comparison, comma separated",
                                        default_factory=lambda: ("edge_popup", "random_swap"))
    pruned_score: float = hfield(0.99, "initial score of magnitude-pruned weights (kept ones start at 1.0)")
    score_init: tuple[str, ...] = hfield(help="score initialisations of the main rule, comma separated: magnitude "
                                              "(1.0 / pruned_score on the magnitude mask) and/or kaiming "
                                              "(Kaiming-uniform, mask = per-layer top-k |s|); two compare the "
                                              "search cost in one run",
                                         default_factory=lambda: ("magnitude",))
    edge_popup_init: str = hfield("kaiming", "score initialisation of the edge_popup baseline (Ramanujan et al.: "
                                             "kaiming)", choices=_INITS)
    exclude: tuple[str, ...] = hfield(help="weights not searched (kept dense), globs; the classifier always is",
                                      default_factory=tuple)
    criteria: tuple[str, ...] = hfield(help="pruning criteria whose masks are compared with the searched one",
                                       default_factory=lambda: _CRITERIA)
    batch_size: int = hfield(0, "search and fine-tuning batch size (0: --dataset.batch_size)")
    bn_recalibration_batches: int = hfield(50, "training batches that re-estimate the BN statistics before the "
                                               "magnitude mask without search is evaluated (0: none)")
    finetune: bool = hfield(False, "after the search, train the weights with the mask frozen (finetune group)")
    seed: int = hfield(0, "seed of the model initialisation and the random baselines")

    def validate(self):
        if not self.sparsities:
            raise HparamsError("sparsities", "needs at least one sparsity")
        for s in self.sparsities:
            try:
                v = float(s)
            except ValueError:
                v = -1.0
            if not 0.0 < v < 1.0:
                raise HparamsError("sparsities", f"expected fractions in (0, 1), got {s!r}")
        for b in self.baselines:
            if b not in _RULES or b == self.rule:
                raise HparamsError("baselines", f"expected rules other than --search.rule among "
                                                f"{', '.join(_RULES)}, got {b!r}")
        if not self.score_init or any(i not in _INITS for i in self.score_init) or \
                len(set(self.score_init)) != len(self.score_init):
            raise HparamsError("score_init", f"expected distinct values among {', '.join(_INITS)}, got "
                                             f"{','.join(self.score_init)!r}")
        for c in self.criteria:
            if c not in _CRITERIA:
                raise HparamsError("criteria", f"expected some of {', '.join(_CRITERIA)}, got {c!r}")
        if not 0.0 <= self.rho <= 1.0:
            raise HparamsError("rho", f"must be in [0, 1], got {self.rho}")
        if not self.pruned_score < 1.0:
            raise HparamsError("pruned_score", f"must be below the kept score 1.0, got {self.pruned_score}")
        if self.batch_size < 0:
            raise HparamsError("batch_size", f"must be >= 0, got {self.batch_size}")


@dataclass(frozen=True)
class JackpotHparams(Hparams):
    """Lottery jackpots: hparams of one run."""

    dataset: DatasetHparams = hfield(help="data set", default_factory=DatasetHparams)
    model: ModelHparams = hfield(help="model", default_factory=ModelHparams)
    source: SourceHparams = hfield(help="weights", default_factory=SourceHparams)
    pretrain: TrainingHparams = hfield(help="dense training when the workflow trains the weights itself",
                                       default_factory=lambda: TrainingHparams(
                                           training_steps="20ep", lr_schedule="cosine", weight_decay=1e-4))
    search: SearchHparams = hfield(help="mask search", default_factory=SearchHparams)
    search_training: TrainingHparams = hfield(help="optimizer of the scores", default_factory=lambda: TrainingHparams(
        training_steps="10ep", lr=0.1, momentum=0.9, lr_schedule="cosine", weight_decay=5e-4))
    finetune: TrainingHparams = hfield(help="weight fine-tuning with the mask frozen", default_factory=lambda:
                                       TrainingHparams(training_steps="10ep", lr=0.01, lr_schedule="cosine"))
