"""A tiny IMP run of the default preset for the resume and DDP tests: ``imp_tiny.py ROOT [SLEEP_PER_STEP]``.

Under ``torchrun`` every rank also records the masks its model holds when each stage starts training
(after the Trainer's broadcast) and writes them to ``ROOT/masks_rank<r>.pt``."""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

import torch  # noqa: E402

from lth_kernels.training import Callback  # noqa: E402
from lth_kernels.training.distributed import destroy_distributed, init_distributed, rank  # noqa: E402
from lth_kernels.workflows.imp.hparams import ImpHparams
from lth_kernels.workflows.imp.runner import run_imp

TINY = {"training.training_steps": "3ep", "training.eval_every": "1ep", "training.momentum": 0.9, "levels": 3,
        "rewind": "5it"}


def tiny_hp(**overrides) -> ImpHparams:
    return ImpHparams.from_preset(**{**TINY, **overrides})


class Slow(Callback):
    def __init__(self, seconds):
        self.seconds = seconds

    def on_step_end(self, trainer, step):
        time.sleep(self.seconds)


class MaskRecorder(Callback):
    """The masks each stage trains with, as this rank sees them (keyed by the stage directory)."""

    def __init__(self):
        self.masks = {}

    def on_train_start(self, trainer, step):
        if trainer.guard.modules and trainer.out_dir is not None:
            key = "/".join(trainer.out_dir.parts[-2:])
            self.masks[key] = {f"{n}.weight": m.mask.detach().cpu().clone() for n, m in trainer.guard.modules}


def run(root, sleep: float = 0.0, callbacks=()) -> Path:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order in every process
    try:
        return run_imp(tiny_hp(), root=root, callbacks=[Slow(sleep), *callbacks], progress=False)
    finally:
        torch.set_num_threads(threads)


if __name__ == "__main__":
    root = Path(sys.argv[1])
    info = init_distributed()
    rec = MaskRecorder()
    path = run(root, float(sys.argv[2]) if len(sys.argv) > 2 else 0.0, [rec])
    if info.world_size > 1:
        torch.save(rec.masks, root / f"masks_rank{rank()}.pt")
    destroy_distributed()
    print(json.dumps({"run": str(path)}))
