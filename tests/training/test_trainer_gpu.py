"""Trainer on a CUDA device: bf16 autocast by default, fp16 with a grad scaler, masked weights stay zero."""

import math

import pytest
import torch

from lth_kernels.training import Trainer, TrainingHparams
from tests.training.tiny import tiny_data, tiny_mlp


@pytest.mark.gpu
@pytest.mark.parametrize("amp,dtype", [("auto", torch.bfloat16), ("fp16", torch.float16), ("off", torch.float32)])
def test_amp_on_gpu(tmp_path, amp, dtype):
    train, test = tiny_data(n_train=256)
    model = tiny_mlp()
    mask = torch.rand(model[0].weight.shape) > 0.5
    model[0].set_mask(mask)
    seen = []
    model[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    hp = TrainingHparams(training_steps="4ep", lr=0.05, amp=amp, optimizer="adamw", weight_decay=0.1)
    t = Trainer(model, train, test, hp, batch_size=32, out_dir=tmp_path, device="cuda")
    assert t.amp_dtype == (None if dtype == torch.float32 else dtype)
    assert (t.scaler is not None) == (amp == "fp16")
    r = t.train()
    assert seen[0] == dtype
    assert math.isfinite(r.metrics["train_loss"]) and r.metrics["test_acc"] > 0.3
    assert torch.count_nonzero(model[0].weight.detach().cpu()[~mask]) == 0
    # resume state includes the scaler; a second run is skipped
    assert Trainer(tiny_mlp(), train, test, hp, batch_size=32, out_dir=tmp_path, device="cuda").train().skipped
