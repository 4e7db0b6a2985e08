"""``lth data-ticket``: data-level (patch) lottery tickets for vision transformers (Shen et al., IJCAI 2023).

A *ticket selector*, an EViT-style ViT that keeps ``ceil(r N)`` patch tokens by CLS attention at three drop
blocks, is fine-tuned from a trained ViT (trained here on the data set, or a local checkpoint). Its
per-image choice of ``K`` patches is the winning ticket. Students of the same family, randomly initialised,
are then trained on

* ``ticket`` (a): the selector's patches of each (augmented) image, selected in inference mode;
* ``random`` (b): K random patches per image, redrawn every iteration;
* ``random_fixed``: one random K-subset per batch slot, fixed for the whole run;
* ``random_scaled``: as (b) with the training length scaled by ``1 / r^stages`` (the reference's 300/r^3
  epochs: as many patches seen as the dense run);
* ``all`` (c): every patch,

and each is evaluated on the test set with all patches, with the selector's patches (sparse eval) and with
random patches. ``--keep-rate 0.9,0.8,0.7`` sweeps keep rates in one run directory::

    hparams.json  summary.json  speed.json  plots/{tickets,accuracy_vs_keep}.png
    dense/                                    the ViT the selector starts from (selector.source = dense)
    all/replicate_<i>/                        the all-patches student (shared by every keep rate)
    keep_<r>/selector/                        the fine-tuned selector (step_<T>.safetensors, metrics)
    keep_<r>/<student>/replicate_<i>/         a student's training (+ eval.json with the three evaluations)
    keep_<r>/tickets.safetensors              with --export: the test split's (N, K) patch indices

Every stage is skipped when its output exists and resumes from its checkpoint, so rerunning with more
keep rates, students or replicates only does what is missing. This module does not import torch.
"""

# The package's face: the hparams (torch-free, so ``lth data-ticket --help`` is instant), the presets (registered on
# import), the CLI entry ``main`` and, imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.data_ticket import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.data_ticket.cli import main
from lth_kernels.workflows.data_ticket.hparams import DEFAULT_PRESET, WORKFLOW, DataTicketHparams, SelectorHparams

__getattr__ = lazy_attributes(__name__, {"run_data_ticket": "runner", "DataTicketRunner": "runner"})

__all__ = ["DEFAULT_PRESET", "DataTicketHparams", "DataTicketRunner", "SelectorHparams", "WORKFLOW", "main",
           "run_data_ticket"]
