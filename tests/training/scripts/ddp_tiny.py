"""Run under ``torchrun --nproc_per_node 2``: rank 0 decides a random mask, ``broadcast_masks`` makes the
ranks agree, the Trainer trains with DDP, and rank 0 writes what every rank ended with to OUT_DIR/result.json."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from lth_kernels.training import (  # noqa: E402
    Trainer,
    TrainingHparams,
    broadcast_masks,
    destroy_distributed,
    init_distributed,
    is_main_process,
    seed_everything,
)
from tests.training.tiny import tiny_data, tiny_mlp  # noqa: E402


def gather(t: torch.Tensor) -> list[torch.Tensor]:
    out = [torch.empty_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return out


def main():
    torch.set_num_threads(1)
    out_dir = Path(sys.argv[1])
    info = init_distributed()
    assert info.world_size == 2 and info.backend == "gloo", info
    seed_everything(100 + info.rank)  # different init and different masks per rank before the syncs
    train, test = tiny_data(n_train=96)
    model = tiny_mlp()
    model[0].set_mask(torch.rand(model[0].weight.shape) > 0.5)  # "decided on rank 0"; others are overwritten
    n = broadcast_masks(model)
    masks_after_broadcast = gather(model[0].mask.to(torch.uint8))
    hp = TrainingHparams(training_steps="3ep", lr=0.05, weight_decay=1e-3, eval_every="1ep")
    trainer = Trainer(model, train, test, hp, batch_size=16, out_dir=out_dir)
    ddp_ignored = sorted(trainer.ddp_model.parameters_to_ignore)
    result = trainer.train()
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    params = gather(flat)
    masks = gather(model[0].mask.to(torch.uint8))
    pruned_nonzero = int(torch.count_nonzero(model[0].weight.detach()[~model[0].mask]))
    pruned = gather(torch.tensor([pruned_nonzero]))
    if is_main_process():
        (out_dir / "result.json").write_text(json.dumps({
            "n_masks": n,
            "masks_equal_after_broadcast": bool(torch.equal(*masks_after_broadcast)),
            "masks_equal": bool(torch.equal(*masks)),
            "params_equal": bool(torch.equal(*params)),
            "density": float(masks[0].float().mean()),
            "pruned_nonzero": [int(p) for p in pruned],
            "ddp_ignored": ddp_ignored,
            "step": result.step,
            "test_n": result.metrics["test_n"],
        }))
    destroy_distributed()


if __name__ == "__main__":
    main()
