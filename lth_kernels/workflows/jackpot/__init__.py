"""``lth jackpot``: lottery jackpots (Zhang et al., TPAMI 2023), mask search on frozen pre-trained weights.

Stages, each resumable (``runs/jackpot-<hash>/``):

1. **Weights** (``source``): train the model dense first (``pretrain``, the embedded default), load a local
   file or a run directory of this project (e.g. the dense level of ``lth imp``), or, only when asked
   (``--random-weights``), keep the random initialisation as an ablation.
2. **Per sparsity** (``sparsity_<s>/``): the magnitude mask over every prunable weight but the classifier
   (per-layer rates from one global threshold, ``l1``, or ``uniform``) is the start; each weight gets a score
   (1.0 kept, 0.99 pruned); only the scores train (SGD, cosine), weights and BN affine stay frozen while BN
   running statistics update; the mask follows ``search.rule`` after every step (``restricted`` = short
   restriction), and ``search.baselines`` run the same search with other rules (``edge_popup``,
   ``random_swap``). Each rule's directory holds ``mask.safetensors`` (a ``Ticket``), ``weights.safetensors``
   (the dense weights the mask is applied to, with the BN statistics of the search), ``metrics.jsonl``
   (accuracy per epoch; step 0 is the magnitude mask without search) and ``swaps.json``.
3. **Fine-tuning** (``search.finetune``): the weights train with the searched mask frozen.
4. **Report**: overlap of the searched mask with the magnitude mask and other pruning criteria,
   ``summary.json``, ``table.md`` and ``plots/jackpot.png``.
"""

# The package's face: the hparams (torch-free, so ``lth jackpot --help`` is instant), the presets (registered on
# import), the CLI entry ``main`` and, imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.jackpot import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.jackpot.cli import main
from lth_kernels.workflows.jackpot.hparams import WORKFLOW, JackpotHparams, SearchHparams, SourceHparams

__getattr__ = lazy_attributes(__name__, {"run": "runner", "resolve_weights": "runner"})

__all__ = ["JackpotHparams", "SearchHparams", "SourceHparams", "WORKFLOW", "main", "resolve_weights", "run"]
