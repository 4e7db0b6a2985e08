"""Two-rank gloo DDP run of a masked model, started by tests/nn/test_masked.py in a fresh interpreter (forking
a pytest process that has already used torch's thread pools can deadlock). Saves each rank's masks and state."""

import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn import MaskedConv2d, MaskedLinear


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(rank)  # ranks start different: DDP must broadcast rank 0's parameters and mask buffers
        net = nn.Sequential(MaskedConv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), MaskedLinear(4 * 5 * 5, 5))
        layers = [net[0], net[3]]
        for layer in layers:
            layer.set_mask(torch.rand(layer.weight.shape) > 0.6)
        ddp = nn.parallel.DistributedDataParallel(net)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
        for _ in range(3):
            opt.zero_grad()
            F.cross_entropy(ddp(torch.randn(4, 3, 7, 7)), torch.randint(0, 5, (4,))).backward()
            opt.step()
            for layer in layers:
                assert torch.all(layer.weight[~layer.mask] == 0), f"rank {rank}: pruned weight revived"
        state = {f"mask{i}": layer.mask for i, layer in enumerate(layers)} | net.state_dict()
        torch.save(state, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    port, out_dir = int(sys.argv[1]), sys.argv[2]
    mp.start_processes(_worker, args=(2, port, out_dir), nprocs=2, start_method="fork")
