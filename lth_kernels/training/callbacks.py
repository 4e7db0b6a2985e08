"""The hooks a workflow gives the Trainer (early stopping, mask swaps, clocks), in the order it calls them."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lth_kernels.training.trainer import Trainer


class Callback:
    """Hooks for workflows; every method is optional. ``step`` is the absolute step *state* (steps done).

    Order per iteration s: ``on_epoch_start`` (when s is an epoch boundary), ``on_step_start(s)``, forward /
    backward / optimizer step, ``on_after_optimizer_step(s + 1)`` (mask swaps go here: the mask guard then
    zeroes newly pruned weights and their optimizer state), save/eval, ``on_step_end(s + 1)``,
    ``on_epoch_end`` (then the per-epoch checkpoint). ``trainer.request_stop()`` ends training after the
    current step (from a start hook: before it). Callbacks with state implement ``state_dict`` /
    ``load_state_dict`` (saved in checkpoints).
    """

    def on_train_start(self, trainer: Trainer, step: int) -> None: ...
    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None: ...
    def on_step_start(self, trainer: Trainer, step: int) -> None: ...
    def on_after_optimizer_step(self, trainer: Trainer, step: int) -> None: ...
    def on_step_end(self, trainer: Trainer, step: int) -> None: ...
    def on_epoch_end(self, trainer: Trainer, epoch: int) -> None: ...
    def on_eval(self, trainer: Trainer, step: int, record: dict) -> None: ...
    def on_train_end(self, trainer: Trainer, step: int) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None: ...
