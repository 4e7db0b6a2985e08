"""The one Trainer, hparams, schedules, checkpoints, run directories, metrics, distributed helpers.

Names are imported lazily, so ``lth_kernels.training.hparams`` (and a CLI's ``--help``) does not pay for
the torch-side modules.
"""

import importlib

_EXPORTS = {
    "hparams": ["Hparams", "HparamsError", "HparamsParser", "DatasetHparams", "ModelHparams", "TrainingHparams",
                "PruningHparams", "hfield", "parse_cli", "presets", "register_preset"],
    "steps": ["Step", "StepError", "parse_steps", "parse_step_list"],
    "schedule": ["LRSchedule"],
    "data_order": ["EpochSampler", "epoch_seed"],
    "trainer": ["Callback", "TrainResult", "Trainer", "build_optimizer"],
    "checkpoint": ["load_checkpoint", "load_step", "load_weights", "save_checkpoint", "save_step", "save_weights",
                   "step_paths"],
    "rundir": ["atomic_save", "atomic_write_json", "atomic_write_text", "prepare_run_dir", "run_dir", "stage_done"],
    "distributed": ["broadcast_masks", "destroy_distributed", "init_distributed", "is_main_process", "wrap_ddp",
                    "unwrap"],
    "masks": ["MaskGuard", "guard_optimizer", "masked_modules"],
    "metrics": ["MetricsLogger", "read_metrics"],
    "seed": ["seed_everything", "get_rng_state", "set_rng_state"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
