"""``lth gfs``: greedy forward selection (GFS) and the pre-training budget study.

Default run: pre-train the dense network, then prune it layer by layer, bottom-up, with GFS
(``tickets.gfs``): each prunable layer's channels/neurons are grown from empty by the candidate (50 sampled
per step) that most lowers the mini-batch loss, until the layer's accuracy is within ``tolerance`` (2 %,
relative) of the dense network's; a brief fine-tune follows each layer, and the pruned network (made narrower
by ``nn.channel_prune``) is fine-tuned at the end. Prunable layers are found from the model's channel graph
(a single-producer channel space not tied to a residual add), minus ``exclude`` globs; the output layer is
never pruned. The kept channels are saved as ``channels.json`` beside the weights.

``--gfs.budget_study true`` (``--budget-study``): for each training-set size m, pre-train on m examples and
prune with GFS from the checkpoints after each number of pre-training iterations; report the subnetwork's
accuracy against iterations per m, the threshold beyond which the subnetwork is good (the first budget whose
subnetwork is within ``threshold_delta`` of the best over all budgets), a least-squares fit
``threshold = a + b ln m`` (the theory predicts growth with log m), the early-bird epoch of the same
pre-training runs (BN models), and ``plots/budget.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from lth_kernels.training.hparams import (
    DatasetHparams,
    Hparams,
    HparamsError,
    ModelHparams,
    TrainingHparams,
    hfield,
    register_preset,
)
from lth_kernels.training.steps import StepError, split_step_list

log = logging.getLogger(__name__)
WORKFLOW = "gfs"


@dataclass(frozen=True)
class GfsOptions(Hparams):
    """Greedy forward selection and the budget study."""

    candidates: int = hfield(50, "channels scored per selection step")
    tolerance: float = hfield(0.02, "stop a layer when its top-1 is within this fraction of the dense top-1")
    converge_tolerance: float = hfield(0.05, "evaluate the stopping rule once the batch top-1 is this close")
    eval_samples: int = hfield(1024, "training examples used to evaluate the stopping rule")
    allow_repeats: bool = hfield(False, "sample candidates from all channels (multiset, two-layer form)")
    layer_finetune_steps: str = hfield("20it", "fine-tuning after each pruned layer")
    finetune_steps: str = hfield("5ep", "fine-tuning of the pruned network")
    finetune_lr: float = hfield(2.5e-3, "fine-tuning learning rate (constant)")
    finetune_weight_decay: float = hfield(4e-5, "fine-tuning weight decay")
    exclude: tuple[str, ...] = hfield(help="globs of layers not pruned (module names)", default_factory=tuple)
    budget_study: bool = hfield(False, "run the pre-training budget study instead of one pruning run")
    pretrain_steps: tuple[str, ...] = hfield(help="budget study: pre-training budgets (step strings)",
                                             default_factory=lambda: ("0it", "5it", "10it", "20it", "35it", "50it",
                                                                      "75it", "100it", "150it", "200it", "300it",
                                                                      "400it"))
    train_sizes: tuple[str, ...] = hfield(help="budget study: training-set sizes m",
                                          default_factory=lambda: ("200", "400", "800", "1437"))
    threshold_delta: float = hfield(0.02, "budget study: a subnetwork is good within this of its best metric")
    threshold_metric: str = hfield("train_acc", "budget study: metric of the threshold (the theory bounds the "
                                                "training loss)",
                                   choices=("test_acc", "train_acc"))
    budget_finetune: bool = hfield(False, "budget study: fine-tune each subnetwork (else measure it right "
                                          "after selection, as the theory does)")

    def validate(self):
        if self.candidates < 1:
            raise HparamsError("candidates", f"must be >= 1, got {self.candidates}")
        for name in ("tolerance", "converge_tolerance", "threshold_delta"):
            if not 0 <= getattr(self, name) < 1:
                raise HparamsError(name, f"must be in [0, 1), got {getattr(self, name)}")
        for name in ("layer_finetune_steps", "finetune_steps"):
            try:
                split_step_list(getattr(self, name))
            except StepError as e:
                raise HparamsError(name, str(e).split(": ", 1)[1]) from None
        try:
            split_step_list(",".join(self.pretrain_steps))
        except StepError as e:
            raise HparamsError("pretrain_steps", str(e).split(": ", 1)[1]) from None
        for m in self.train_sizes:
            if not m.isdigit() or int(m) < 1:
                raise HparamsError("train_sizes", f"expected positive integers, got {m!r}")


@dataclass(frozen=True)
class GfsHparams(Hparams):
    """lth gfs: pre-train, prune with greedy forward selection, fine-tune (or the budget study)."""

    dataset: DatasetHparams = hfield(default_factory=lambda: DatasetHparams(batch_size=64))
    model: ModelHparams = hfield(default_factory=lambda: ModelHparams(name="mlp_bn_128"))
    training: TrainingHparams = hfield(default_factory=lambda: TrainingHparams(
        lr=0.05, weight_decay=1e-4, training_steps="20ep", milestone_steps="15ep"))
    gfs: GfsOptions = hfield(default_factory=GfsOptions)


_CIFAR = {"training.lr": 0.1, "training.weight_decay": 1e-4, "training.training_steps": "160ep",
          "training.milestone_steps": "80ep,120ep", "dataset.batch_size": 128, "gfs.finetune_steps": "20ep",
          "gfs.layer_finetune_steps": "0ep100it", "gfs.eval_samples": 2048,
          "gfs.pretrain_steps": "0it,500it,1000it,2000it,5000it,10000it,20000it",
          "gfs.train_sizes": "5000,10000,25000,50000"}
register_preset(WORKFLOW, "mlp-digits", {})  # the embedded default: the class defaults
register_preset(WORKFLOW, "cifar_vgg_16-cifar100", {**_CIFAR, "dataset.name": "cifar100",
                                                    "model.name": "cifar_vgg_16"})
register_preset(WORKFLOW, "cifar_resnet_20-cifar10", {**_CIFAR, "dataset.name": "cifar10",
                                                      "model.name": "cifar_resnet_20"})
register_preset(WORKFLOW, "resnet18-imagenet", {
    **_CIFAR, "dataset.name": "imagefolder", "model.name": "timm:resnet18", "dataset.batch_size": 256,
    "training.training_steps": "90ep", "training.milestone_steps": "30ep,60ep", "gfs.finetune_steps": "5ep",
    "gfs.layer_finetune_steps": "0ep500it", "gfs.eval_samples": 10000,
    "gfs.pretrain_steps": "0it,5000it,10000it,20000it,50000it,100000it",
    "gfs.train_sizes": "128000,320000,640000,1281167"})


def run(hp: GfsHparams, root: str | Path = "runs", device=None) -> dict:
    """One pruning run, or the budget study (``gfs.budget_study``); returns the summary dict."""
    from lth_kernels.training import distributed as dist_utils
    from lth_kernels.training.rundir import prepare_run_dir

    out = prepare_run_dir(WORKFLOW, hp, root, write=dist_utils.is_main_process())
    log.info("lth gfs -> %s\n%s", out, hp.to_json())
    if hp.gfs.budget_study:
        from lth_kernels.workflows._gfs_budget import budget_study

        return budget_study(hp, out, device)
    from lth_kernels.workflows._gfs_stages import prune_run

    return prune_run(hp, out, device)


def main(argv: list[str] | None = None) -> int:
    from lth_kernels.workflows._cli import workflow_main

    return workflow_main(GfsHparams, argv, switches={"--budget-study": "--gfs.budget_study"},
                         workflow=WORKFLOW, prog="lth gfs", default_preset="mlp-digits",
                         description=__doc__.splitlines()[0], run=lambda hp, ns: run(hp, ns.root))


__all__ = ["GfsHparams", "GfsOptions", "main", "run"]
