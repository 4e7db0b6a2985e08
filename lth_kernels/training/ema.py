"""Model EMA (``--training.ema_decay``): an exponential moving average of the weights beside the trained model.

After every optimizer step (and the mask guard), ``ema = decay * ema + (1 - decay) * weights`` for every
floating-point tensor of the state dict; integer and bool buffers (masks, BN's batch count) are copied. The
average is timm's ``ModelEmaV3`` (what DeiT's ``--model-ema`` is, there as ``ModelEma``), started from the
weights the training starts from (a rewound model: its rewind weights). As in DeiT's ``main.py`` the trained
model stays the run's model (its ``test_acc`` is reported and its weights are the stage's result); the average
is evaluated beside it at every evaluation (``ema_test_acc``, ``ema_test_loss``) and saved as
``ema.safetensors`` when the stage ends. Its state is in the rolling checkpoint, so a resumed run averages
on bit-exactly. Masks are not weights (non-persistent buffers): the average's masked layers take the model's
current masks (``set_mask``, which zeroes the average's pruned weights) when it starts, is evaluated and is
saved, so a mask changed during training (a callback's swap, a resumed run's masks) is the one it is used with.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from lth_kernels.training.checkpoint import model_state, save_weights

EMA_WEIGHTS = "ema.safetensors"


class WeightAverage:
    """timm's ``ModelEmaV3`` of ``model`` with ``decay`` per update, its state for checkpoints, and its file."""

    def __init__(self, model: nn.Module, decay: float):
        from timm.utils import ModelEmaV3

        if not 0 < decay < 1:
            raise ValueError(f"--training.ema_decay: must be in (0, 1), got {decay}")
        self.decay = decay
        self.ema = ModelEmaV3(model, decay=decay)

    @property
    def module(self) -> nn.Module:
        return self.ema.module

    def reset(self, model: nn.Module) -> None:
        """Start the average at ``model``'s weights (a training that starts rather than resumes)."""
        self.ema.set(model)
        self.synced(model)

    @torch.no_grad()
    def synced(self, model: nn.Module) -> nn.Module:
        """The averaged module with ``model``'s current masks."""
        for (_, mine), (_, theirs) in zip(self.module.named_modules(), model.named_modules()):
            mask = getattr(theirs, "mask", None)
            if hasattr(mine, "set_mask") and isinstance(mask, torch.Tensor) and not torch.equal(
                    mine.mask, mask.to(mine.mask.device)):
                mine.set_mask(mask)
        return self.module

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.ema.update(model)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "weights": model_state(self.module)}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["weights"])

    def save(self, directory: str | Path, step: int, model: nn.Module) -> None:
        save_weights(self.synced(model), Path(directory) / EMA_WEIGHTS,
                     {"step": str(step), "ema_decay": str(self.decay)})
