"""Keeping pruned weights at exactly zero during training: the guard lives beside the masked layers
(``lth_kernels.nn.mask_guard``), so that code without the Trainer gets the same guarantee."""

from lth_kernels.nn.mask_guard import MaskGuard, guard_optimizer, guarded_modules

masked_modules = guarded_modules  # (qualified name, module) of every module with a ``mask`` beside its ``weight``

__all__ = ["MaskGuard", "guard_optimizer", "masked_modules"]
