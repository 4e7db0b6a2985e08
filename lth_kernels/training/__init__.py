"""The one Trainer, hparams, schedules, checkpoints, run directories, metrics, distributed helpers."""
