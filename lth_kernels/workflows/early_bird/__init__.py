"""``lth early-bird``: early-bird tickets (You et al., ICLR 2020), channel and unstructured.

1. **Search**: train the dense network with network slimming's L1 penalty on the BN scales (``s = 1e-4``).
   At every epoch start, for each pruning ratio at once (default 0.3, 0.5, 0.7), draw the global mask
   (channel: BN-scale ranking; unstructured: global weight magnitude) and feed an ``EarlyBirdDetector``
   (FIFO of 5, fires when all 4 distances to the newest mask are <= 0.1). The first hit per ratio saves
   ``eb_<pct>/ticket.safetensors`` and the weights of that moment; training goes on (``full_dense``: the whole
   schedule, which gives the dense baseline and the full distance heatmap), or stops once every ratio has one.
2. **Retrain** each ticket: ``eb_train`` continues the schedule from the EB epoch on the pruned network (the
   reference's ``main_c.py --scratch ... --start-epoch``, penalty on); ``eb_reinit`` trains the pruned
   architecture from a fresh initialisation for the whole schedule. Channel tickets become a narrower dense
   model (``mode=physical``, ``nn.channel_prune``) or stay a masked-channel model (``mode=masked``, any
   model); unstructured tickets are trained masked.
3. **Report**: ``summary.json``, ``table.md`` (EB epoch, parameters, FLOPs, training FLOPs and wall time saved
   against full dense training, accuracy) and ``plots/mask_distance.png``.

Run tree: ``runs/early-bird-<hash>/{hparams.json, search/, eb_<pct>/{ticket.safetensors, weights.safetensors,
channels.json, eb_train/, eb_reinit/}, summary.json, table.md, plots/}``; every stage resumes or is skipped.
"""

# The package's face: the hparams (torch-free, so ``lth early-bird --help`` is instant), the presets (registered on
# import), the CLI entry ``main`` and, imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.early_bird import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.early_bird.cli import main
from lth_kernels.workflows.early_bird.hparams import WORKFLOW, EarlyBirdHparams, EarlyBirdOptions

__getattr__ = lazy_attributes(__name__, {"run": "runner", "slimming_loss": "runner"})

__all__ = ["EarlyBirdHparams", "EarlyBirdOptions", "WORKFLOW", "main", "run", "slimming_loss"]
