"""A tiny, deterministic CPU training run for the resume tests: ``train_tiny.py OUT_DIR [SLEEP_PER_STEP]``.
Prints the TrainResult as JSON. Dropout and a mid-run pruning event make RNG and mask state matter."""

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402

from lth_kernels.training import Callback, Trainer, TrainingHparams, seed_everything  # noqa: E402
from tests.training.tiny import tiny_data, tiny_mlp  # noqa: E402


class Slow(Callback):
    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_end(self, trainer, step):
        time.sleep(self.seconds)


class PruneAt(Callback):
    """Random pruning at step 10 (randomness from the global RNG, restored on resume)."""

    def on_after_optimizer_step(self, trainer, step):
        if step == 10:
            layer = trainer.model[0]
            layer.set_mask(torch.rand(layer.weight.shape) > 0.5)


def run(out_dir, sleep: float = 0.0) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order in this process and in the test process
    try:
        seed_everything(0)
        train, test = tiny_data(n_train=120)
        model = tiny_mlp(dropout=0.2)
        hp = TrainingHparams(training_steps="12ep", milestone_steps="6ep", warmup_steps="2it", lr=0.1,
                             weight_decay=1e-3, eval_every="7it")
        trainer = Trainer(model, train, test, hp, batch_size=24, out_dir=out_dir, save_steps=["3it"],
                          callbacks=[PruneAt(), Slow(sleep)])
        return asdict(trainer.train())
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1], float(sys.argv[2]) if len(sys.argv) > 2 else 0.0)))
