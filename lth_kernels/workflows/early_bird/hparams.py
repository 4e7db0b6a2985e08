"""The hparams of ``lth early-bird``: typed dataclasses, their validation and ``WORKFLOW`` (no torch here)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from lth_kernels.training.hparams import DatasetHparams, Hparams, HparamsError, ModelHparams, TrainingHparams, hfield

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
    baselines: tuple[str, ...] = hfield(help="Table 2 baselines at each ratio: lt_oneshot (magnitude-prune the "
                                             "fully trained net, rewind to init, retrain masked), slimming (network "
                                             "slimming: prune the fully trained net's channels, fine-tune)",
                                        default_factory=lambda: ("lt_oneshot", "slimming"))

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
        bad_b = [v for v in self.baselines if v not in ("lt_oneshot", "slimming")]
        if bad_b:
            raise HparamsError("baselines", f"expected lt_oneshot and/or slimming, got {bad_b[0]!r}")
        bad = [v for v in self.retrain if v not in ("eb_train", "eb_reinit")]
        if bad:
            raise HparamsError("retrain", f"expected eb_train and/or eb_reinit, got {bad[0]!r}")


BN_INITS = ("0.5", "uniform", "ones", "model")  # common.structured.init_bn_ applies them


@dataclass(frozen=True)
class EarlyBirdModelHparams(ModelHparams):
    """Model architecture and the BN scale initialisation the slimming penalty starts from."""

    bn_init: str = hfield("0.5", "BN scales at init: 0.5 (gamma = 0.5, beta = 0: the reference's VGG and "
                                 "PreResNet), uniform (gamma ~ U[0, 1): open_lth's init; with the L1 penalty the "
                                 "early gamma ranking then mostly reflects the draw), ones, model (the "
                                 "builder's own)", choices=BN_INITS)


@dataclass(frozen=True)
class EarlyBirdHparams(Hparams):
    """lth early-bird: search for early-bird tickets, retrain them, report the savings."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(batch_size=64))
    model: EarlyBirdModelHparams = hfield(default_factory=lambda: EarlyBirdModelHparams(name="mlp_bn_256_128"))
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        lr=0.1, weight_decay=1e-4, training_steps="40ep", milestone_steps="20ep,30ep", seed=0))
    early_bird: EarlyBirdOptions = hfield(default_factory=EarlyBirdOptions)


def pct(ratio: str | float) -> str:
    """``"0.3" -> "30"`` (directory and table keys)."""
    return f"{float(ratio) * 100:g}"
