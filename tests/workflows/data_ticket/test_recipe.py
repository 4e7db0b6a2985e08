"""``lth data-ticket`` recipe settings: the reference's keep-rate ramp (values by hand, what the selector's
training forwards keep, the clock through a fine-tune) and the DeiT presets' EMA, repeated augmentation, min-lr
and bicubic resize, with the embedded preset's run name unchanged."""

import math

import pytest
import torch

from lth_kernels.models import create_model
from lth_kernels.training import Callback, Trainer, TrainingHparams
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.data_ticket.hparams import DataTicketHparams, SelectorHparams
from lth_kernels.workflows.data_ticket.selector import KeepRateClock, PatchSelector
from lth_kernels.workflows.data_ticket.sizes import scheduled_keep_rate, stage_counts


def test_cosine_keep_rate_ramp_by_hand():
    # r = 0.7, hold 2 epochs, ramp 4 epochs, 10 steps per epoch (EViT's adjust_keep_rate per iteration)
    def rate(step):
        return scheduled_keep_rate(step, 10, 0.7, 2, 4)

    assert [rate(s) for s in (0, 9, 19)] == [1.0, 1.0, 1.0]  # the hold
    assert rate(20) == pytest.approx(1.0)  # the ramp starts at 1
    assert rate(30) == pytest.approx(0.7 + 0.3 * 0.5 * (1 + math.cos(math.pi / 4)))  # a quarter: 0.9561
    assert rate(40) == pytest.approx(0.85)  # half way
    assert rate(55) == pytest.approx(0.7 + 0.3 * 0.5 * (1 + math.cos(math.pi * 35 / 40)))
    assert rate(59) > 0.7 and rate(60) == rate(100) == 0.7  # r from epoch 6 on
    assert all(rate(s) >= rate(s + 1) for s in range(80))  # never rises
    assert scheduled_keep_rate(0, 10, 0.5, 0, 0) == 0.5  # no hold, no ramp: constant r


def _vit():
    return create_model("vit_tiny", num_classes=10, in_chans=1, img_size=(8, 8), patch_size=2, embed_dim=16, depth=4,
                        num_heads=2)


def test_selector_trains_at_the_scheduled_rate_and_selects_at_its_own():
    sel = PatchSelector(_vit(), 0.5)  # 16 patches, stages at blocks 1, 2, 3: 8, 4, 2
    x = torch.randn(2, 1, 8, 8)
    sel.set_training_keep_rate(0.75)
    sel.train()
    _, stages = sel.features(x)
    assert [s.shape[1] for s in stages] == stage_counts(16, 0.75, 3) == [12, 9, 7]
    sel.eval()
    _, stages = sel.features(x)
    assert [s.shape[1] for s in stages] == [8, 4, 2]
    assert sel.select(x).shape == (2, 2)


def test_keep_rate_clock_through_a_fine_tune():
    sel = PatchSelector(_vit(), 0.5)
    kept = {}

    class Record(Callback):
        def on_after_optimizer_step(self, trainer, step):
            kept[step - 1] = sel.training_counts[-1]

    images, labels = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    ds = torch.utils.data.TensorDataset(images, labels)
    hp = TrainingHparams(optimizer="adamw", lr=1e-3, training_steps="6ep", eval_every="0it")
    Trainer(sel, ds, ds, hp, batch_size=10, callbacks=[KeepRateClock(sel, 1, 3), Record()]).train()  # 4 steps/epoch
    expected = {s: stage_counts(16, scheduled_keep_rate(s, 4, 0.5, 1, 3), 3)[-1] for s in range(24)}
    assert kept == expected
    assert kept[0] == kept[3] == 16 and kept[16] == kept[23] == 2 and 2 < kept[10] < 16


def test_deit_presets_follow_the_references_main():
    small = DataTicketHparams.from_preset("deit_small-imagenet")
    for training in (small.training, small.dense_training):
        assert (training.ema_decay, training.repeated_augment, training.min_lr) == (0.99996, 3, 1e-5)
    assert small.selector.training.ema_decay == 0.99996 and small.selector.training.repeated_augment == 3
    assert small.selector.training.min_lr == 0.0  # its peak lr (4e-5) is close to DeiT's min-lr
    assert small.dataset.interpolation == "bicubic"
    assert small.keep_rate == ("0.95", "0.9", "0.85", "0.8", "0.75")
    tiny = DataTicketHparams.from_preset("deit_tiny-cifar10")
    assert tiny.training.min_lr == 1e-5 and tiny.dataset.interpolation == "bilinear"  # 32x32: no resize
    assert small.selector.keep_rate_schedule == "constant"
    # the embedded preset and the new fields' defaults leave run names as they were
    assert DataTicketHparams().non_default() == {}
    assert DataTicketHparams().hashname() == DataTicketHparams(selector=SelectorHparams(
        keep_rate_schedule="constant", shrink_start_epoch=10, shrink_epochs=100)).hashname()
    cosine = DataTicketHparams().with_overrides({"selector.keep_rate_schedule": "cosine"})
    assert cosine.hashname() != DataTicketHparams().hashname()
    with pytest.raises(HparamsError, match="--shrink_epochs: must be >= 0"):
        SelectorHparams(shrink_epochs=-1)


def test_recipe_options_run_through_the_workflow(tmp_path, caplog):
    import json

    from lth_kernels.training.ema import EMA_WEIGHTS
    from lth_kernels.training.metrics import read_metrics
    from lth_kernels.workflows import data_ticket

    argv = ["--root", str(tmp_path), "--keep-rate", "0.5", "--students", "ticket", "--quiet", "--replicates", "1",
            "--speed_batch", "8", "--stability_images", "0", "--training.training_steps", "3it",
            "--dataset.batch_size", "512",  # 2 steps per epoch: the one-epoch ramp is two steps
            "--dense_training.training_steps", "2it", "--selector.training.training_steps", "1ep",
            "--selector.keep_rate_schedule", "cosine", "--selector.shrink_start_epoch", "0",
            "--selector.shrink_epochs", "1", "--training.ema_decay", "0.9", "--training.repeated_augment", "3",
            "--training.min_lr", "1e-4"]
    with caplog.at_level("WARNING"):
        assert data_ticket.main(argv) == 0
    assert "keep-rate ramp" not in caplog.text  # the ramp fits the one-epoch fine-tune
    (run,) = tmp_path.iterdir()
    student = run / "keep_0.5" / "ticket" / "replicate_0"
    assert (student / EMA_WEIGHTS).exists() and "ema_test_acc" in read_metrics(student / "metrics.jsonl")[-1]
    assert json.loads((run / "hparams.json").read_text())["selector"]["keep_rate_schedule"] == "cosine"
    assert read_metrics(run / "keep_0.5" / "selector" / "metrics.jsonl")[-1]["test_acc"] >= 0
