"""``lth gfs``: greedy forward selection (GFS) and the pre-training budget study.

Default run: pre-train the dense network, then prune it layer by layer, bottom-up, with GFS
(``tickets.gfs``): each prunable layer's channels/neurons are grown from empty by the candidate (50 sampled
per step) that most lowers the mini-batch loss, until the layer's top-1 on a fixed class-balanced, un-augmented
training subset is within ``tolerance`` (2 %, relative) of the top-1 of the network as it is when the layer
starts (the reference re-evaluates it per layer; ``--gfs.target dense`` fixes it to the dense network's). A
layer whose channels all get selected is restored to the exact dense layer; gates sit after non-homogeneous
activations (ReLU6). 0.1 epoch of fine-tuning follows each layer, and the pruned network (made narrower by
``nn.channel_prune``) is fine-tuned at the end (``finetune`` group); ``plots/gfs.png`` shows the greedy curves.
Prunable layers are found from the model's channel graph: a single-producer channel space not tied to a
residual add, and (``--gfs.residual_streams``, on by default, the reference's ``mask2``) each residual stream
whose ops are adds and positively homogeneous ones (ReLU, pooling): one gate shared by every branch that writes
it (the BN after each producer), which gates the stream exactly; minus ``exclude`` globs (a stream is excluded
when any of its gate modules is). A stream is grown at the place of its first branch. The output layer is never
pruned. The kept channels are saved as ``channels.json`` beside the weights.

``--gfs.budget_study true`` (``--budget-study``): for each training-set size m, pre-train on m examples and
prune with GFS from the checkpoints after each number of pre-training iterations; report the subnetwork's
accuracy against iterations per m, the threshold beyond which the subnetwork is good (the first budget whose
subnetwork is within ``threshold_delta`` of the best over all budgets), a least-squares fit
``threshold = a + b ln m`` (the theory predicts growth with log m) against constant and linear-in-m fits (AIC),
bootstrap intervals over ``--budget.replicates``, ``--budget.fixed_size n`` for the theorem's fixed subnetwork
size, the early-bird epoch of the same pre-training runs (BN models), and ``plots/budget.png``.
"""

# The package's face: the hparams (torch-free, so ``lth gfs --help`` is instant), the presets (registered on
# import), the CLI entry ``main`` and, imported on first use, the runner.
from lth_kernels.workflows import lazy_attributes
from lth_kernels.workflows.gfs import presets  # noqa: F401  (registers the presets)
from lth_kernels.workflows.gfs.cli import main
from lth_kernels.workflows.gfs.hparams import WORKFLOW, GfsHparams, GfsOptions

__getattr__ = lazy_attributes(__name__, {"run": "runner"})

__all__ = ["GfsHparams", "GfsOptions", "WORKFLOW", "main", "run"]
