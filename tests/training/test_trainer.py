import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from lth_kernels.training import Callback, Trainer, TrainingHparams
from lth_kernels.training.checkpoint import load_step, load_weights, step_paths
from lth_kernels.training.metrics import read_metrics
from tests.training.tiny import DenseGradMaskedLinear, ListDataset, tiny_data, tiny_mlp


class Recorder(Callback):
    """Records, per step, the lr used and a fingerprint of the batch."""

    def __init__(self):
        self.lr, self.batches, self.epoch_starts = {}, {}, []

    def on_epoch_start(self, trainer, epoch):
        self.epoch_starts.append(epoch)

    def on_after_optimizer_step(self, trainer, step):
        self.lr[step - 1] = trainer.optimizer.param_groups[0]["lr"]


class BatchTap(nn.Module):
    def __init__(self, rec):
        super().__init__()
        self.rec = rec

    def forward(self, x):
        if self.training:
            self.rec.append(x.detach().clone())
        return x


def _hp(**kw):
    base = {"training_steps": "6ep", "milestone_steps": "2ep,4ep", "warmup_steps": "3it", "lr": 0.2,
            "weight_decay": 1e-3, "eval_every": "0it"}
    return TrainingHparams(**{**base, **kw})


def _params(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


@pytest.mark.parametrize("loader", ["tensors", "dataloader"])
@pytest.mark.parametrize("rewind", ["2ep", "7it"])  # at an epoch boundary and mid-epoch
def test_rewind_reproduces_order_schedule_and_weights(tmp_path, loader, rewind):
    train, test = tiny_data()
    if loader == "dataloader":
        train = ListDataset(train)
    hp = _hp()
    torch.manual_seed(1)
    seen_a = []
    model_a = nn.Sequential(BatchTap(seen_a), tiny_mlp())
    rec_a = Recorder()
    ta = Trainer(model_a, train, test, hp, batch_size=20, out_dir=tmp_path / "a", save_steps=[rewind],
                 callbacks=[rec_a])
    assert ta.steps_per_epoch == 4  # 96 // 20, tail dropped
    ta.train()
    k = ta.to_step(rewind)
    assert step_paths(tmp_path / "a", k)[0].exists()

    torch.manual_seed(2)  # another init: everything must come from the rewind files
    seen_b = []
    model_b = nn.Sequential(BatchTap(seen_b), tiny_mlp())
    rec_b = Recorder()
    tb = Trainer(model_b, train, test, hp, batch_size=20, callbacks=[rec_b])
    load_step(tmp_path / "a", k, model_b, tb.optimizer)
    tb.train(start_step=k)
    assert len(seen_b) == ta.total_steps - k
    for i, x in enumerate(seen_b):
        assert torch.equal(x, seen_a[k + i]), f"batch of step {k + i} differs"
    assert {s: lr for s, lr in rec_a.lr.items() if s >= k} == rec_b.lr
    assert torch.equal(_params(model_a), _params(model_b))
    assert rec_b.epoch_starts == list(range(math.ceil(k / 4), 6))


def test_data_order_depends_only_on_seed_and_epoch():
    train, test = tiny_data()
    t1 = Trainer(tiny_mlp(), train, test, _hp(), batch_size=16)
    t2 = Trainer(tiny_mlp(), train, test, _hp(), batch_size=16)
    t3 = Trainer(tiny_mlp(), train, test, _hp(data_order_seed=1), batch_size=16)
    for e in range(3):
        a = t1.sampler.batch_indices(e)
        assert torch.equal(a, t2.sampler.batch_indices(e))
        assert not torch.equal(a, t3.sampler.batch_indices(e))
        assert a.unique().numel() == a.numel() == 96  # a permutation, no repeats
    assert not torch.equal(t1.sampler.batch_indices(0), t1.sampler.batch_indices(1))


def test_lr_per_step_matches_schedule():
    train, test = tiny_data()
    rec = Recorder()
    t = Trainer(tiny_mlp(), train, test, _hp(), batch_size=24, callbacks=[rec])  # 4 steps/epoch
    t.train()
    expected = {s: 0.2 * min(1, s / 3) * 0.1 ** ((s >= 8) + (s >= 16)) for s in range(24)}
    assert rec.lr.keys() == expected.keys()
    for s in expected:
        assert rec.lr[s] == pytest.approx(expected[s], rel=1e-12, abs=1e-15), s


def test_evaluation_hand_checkable():
    # logits = x itself (identity model); test set of 4 samples with hand-computable loss and accuracy
    x = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    test = TensorDataset(x, y)
    model = nn.Identity()
    model.register_parameter("dummy", nn.Parameter(torch.zeros(1)))
    expected_loss = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))
                     + math.log(2)) / 4
    for ds in (test, ListDataset(test)):
        t = Trainer(model, test, ds, _hp(), batch_size=2, eval_batch_size=3)
        r = t.evaluate()
        # argmax of [0, 0] is class 0 (first maximum): correct; [1, 0] for label 1: wrong
        assert r["test_acc"] == 0.75 and r["test_n"] == 4
        assert r["test_loss"] == pytest.approx(expected_loss, rel=1e-6)
        v = Trainer(model, test, test, _hp(), batch_size=2, val_ds=ds).evaluate("val")
        assert v == {"val_loss": pytest.approx(expected_loss, rel=1e-6), "val_acc": 0.75, "val_n": 4}
    with pytest.raises(ValueError, match="needs a Trainer built with val_ds"):
        t.evaluate("val")


class NoisyListDataset(ListDataset):
    """A per-sample random transform drawing from torch's global generator, as torchvision's do."""

    def __getitem__(self, i):
        x, y = super().__getitem__(i)
        return x + 0.1 * torch.randn(x.shape), y


def test_how_often_it_evaluates_does_not_change_training():
    """Evaluation draws nothing from the global RNG, so per-sample augmentation (and thus the weights) does
    not depend on --training.eval_every: it can stay out of the run's name."""
    train, test = tiny_data()
    finals = []
    for every in ("0it", "1it", "5it"):
        torch.manual_seed(0)
        model = tiny_mlp()
        t = Trainer(model, NoisyListDataset(train), ListDataset(test), _hp(training_steps="2ep", eval_every=every),
                    batch_size=16, val_ds=ListDataset(test))
        res = t.train()
        assert res.metrics["val_acc"] == res.metrics["test_acc"]  # val_ds is evaluated with the test set
        finals.append(_params(model))
    assert torch.equal(finals[0], finals[1]) and torch.equal(finals[0], finals[2])


def test_grad_clip_is_applied():
    train, test = tiny_data()
    hp = TrainingHparams(training_steps="1it", lr=1.0, momentum=0.0, grad_clip=0.01, eval_every="0it")
    torch.manual_seed(0)
    model = tiny_mlp(masked=False)
    t = Trainer(model, train, test, hp, batch_size=32, eval_at_start=False)
    before = [p.detach().clone() for p in model.parameters()]
    idx = t.sampler.batch_indices(0)[0]
    x, y = train.tensors[0][idx], train.tensors[1][idx]
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    norm = torch.sqrt(sum((g * g).sum() for g in grads))
    assert norm > 0.01 * 10  # the clip is active
    t.train()
    for p0, p, g in zip(before, model.parameters(), grads):
        torch.testing.assert_close(p0 - p, g * (0.01 / norm), rtol=1e-4, atol=1e-7)


def test_amp_bf16_on_cpu_smoke():
    train, test = tiny_data()
    dtypes = []
    model = tiny_mlp()
    model[0].register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    t = Trainer(model, train, test, _hp(amp="bf16", training_steps="2ep"), batch_size=24)
    r = t.train()
    assert torch.bfloat16 in dtypes
    assert math.isfinite(r.metrics["train_loss"]) and 0 <= r.metrics["test_acc"] <= 1
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="--training.amp: fp16 needs a CUDA device"):
        Trainer(tiny_mlp(), train, test, _hp(amp="fp16"), batch_size=24, device="cpu")


class PruneAt(Callback):
    """Prunes the first layer mid-training with a bare mask write (no weight zeroing), as a pruning event
    that happens while SGD momentum is non-zero."""

    def __init__(self, step, mask):
        self.step, self.mask = step, mask

    def on_after_optimizer_step(self, trainer, step):
        if step == self.step:
            with torch.no_grad():
                trainer.model[0].mask.copy_(self.mask)


class PrunedAfterEachStep(Callback):
    """Counts, after every step from the pruning event on, the non-zero weights at pruned positions.

    ``on_step_end`` runs after the guard's ``after_step`` and before the next step, so this sees what the next
    forward sees; the final evaluation's ``verify()`` repairs the weights, so the end state alone proves nothing.
    """

    def __init__(self, start, mask):
        self.start, self.mask, self.nonzero = start, mask, {}

    def on_step_end(self, trainer, step):
        if step >= self.start:
            self.nonzero[step] = int(torch.count_nonzero(trainer.model[0].weight.detach()[~self.mask]))


@pytest.mark.parametrize("mode", ["auto", "always", "off"])
@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_pruned_weights_stay_zero(mode, optimizer):
    train, test = tiny_data()
    torch.manual_seed(0)
    model = tiny_mlp()
    mask = torch.rand(model[0].weight.shape) > 0.5
    hp = _hp(optimizer=optimizer, lr=0.01, weight_decay=0.1, training_steps="3ep")
    seen = PrunedAfterEachStep(3, mask)
    t = Trainer(model, train, test, hp, batch_size=24, callbacks=[PruneAt(3, mask), seen], mask_mode=mode)
    t.train()
    assert sorted(seen.nonzero) == list(range(3, 13))
    pruned = model[0].weight.detach()[~mask]
    if mode == "off":
        assert pruned.abs().max() > 0  # momentum / Adam state revives pruned weights without the guard
        assert all(n > 0 for step, n in seen.nonzero.items() if step < 12)  # nothing zeroed them mid-training
    else:
        # zero right after the mask change and after every later step, not only once the final check repaired it
        assert seen.nonzero == dict.fromkeys(range(3, 13), 0)
        assert torch.count_nonzero(pruned) == 0
        state = t.optimizer.state[model[0].weight]
        for v in state.values():
            if torch.is_tensor(v) and v.shape == mask.shape:
                assert torch.count_nonzero(v[~mask]) == 0


def test_dense_grad_layer_is_caught_and_enforced(caplog):
    train, test = tiny_data()
    model = nn.Sequential(DenseGradMaskedLinear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    mask = torch.rand(16, 8) > 0.5
    model[0].set_mask(mask)
    t = Trainer(model, train, test, _hp(training_steps="2ep", eval_every="1ep"), batch_size=24)
    t.train()
    assert "masked weights of 0 became non-zero" in caplog.text
    assert torch.count_nonzero(model[0].weight.detach()[~mask]) == 0
    assert "0" in t.guard._always


def test_finished_stage_is_skipped_and_metrics_logged(tmp_path):
    train, test = tiny_data()
    torch.manual_seed(0)
    model = tiny_mlp()
    model[0].set_mask(torch.rand(16, 8) > 0.3)
    t = Trainer(model, train, test, _hp(training_steps="3ep", eval_every="1ep"), batch_size=24, out_dir=tmp_path)
    r = t.train()
    assert not r.skipped and r.step == 12
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [rec["step"] for rec in recs] == [0, 4, 8, 12]
    for key in ("epoch", "train_loss", "test_loss", "test_acc", "lr", "samples_per_s", "elapsed_s", "mask_density"):
        assert key in recs[-1]
    assert recs[-1]["mask_density"] == pytest.approx(model[0].mask.float().mean().item())
    assert not (tmp_path / "checkpoint.pt").exists()
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    again = tiny_mlp()
    r2 = Trainer(again, train, test, _hp(training_steps="3ep", eval_every="1ep"), batch_size=24,
                 out_dir=tmp_path).train()
    assert r2.skipped and r2.step == 12 and r2.metrics == recs[-1]
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()} == files
    assert torch.equal(_params(again), _params(model))
    load_weights(again, tmp_path / "step_12.safetensors")


def test_request_stop_and_bad_batch_size():
    train, test = tiny_data()

    class StopAt(Callback):
        def on_epoch_start(self, trainer, epoch):
            if epoch == 2:
                trainer.request_stop()

    r = Trainer(tiny_mlp(), train, test, _hp(), batch_size=24, callbacks=[StopAt()]).train()
    assert r.step == 8  # stopped at the start of epoch 2
    assert r.metrics["step"] == 8
    with pytest.raises(ValueError, match="--dataset.batch_size: 200 is larger than the training set"):
        Trainer(tiny_mlp(), train, test, _hp(), batch_size=200)


def test_digits_lenet_end_to_end():
    from lth_kernels.data import create_dataset
    from lth_kernels.models import create_model

    train, test, info = create_dataset("digits")
    model = create_model("lenet_300_100", num_classes=info.num_classes, in_chans=info.in_chans,
                         img_size=info.img_size)
    r = Trainer(model, train, test, TrainingHparams(training_steps="3ep"), batch_size=128).train()
    assert r.step == 3 * (1437 // 128) and r.metrics["test_n"] == 360
    assert r.metrics["test_acc"] > 0.85


class _Crash(Callback):
    def on_epoch_start(self, trainer, epoch):
        if epoch == 2:
            raise RuntimeError("simulated kill")


def test_progress_lines_without_a_terminal_and_the_resume_line(caplog, tmp_path):
    """Without a TTY a stage logs one start line (INFO, the trainer's logger); per-evaluation lines go to the
    ``.eval`` child logger that the CLI keeps quiet by default; a resumed run says from which step."""
    import logging

    train, test = tiny_data()
    hp = _hp(training_steps="4ep", eval_every="1ep")
    caplog.set_level(logging.INFO)
    with pytest.raises(RuntimeError, match="simulated kill"):
        Trainer(tiny_mlp(), train, test, hp, batch_size=24, out_dir=tmp_path / "stage", callbacks=[_Crash()]).train()
    start = [r for r in caplog.records if r.name == "lth_kernels.training.trainer" and "training" in r.getMessage()]
    assert len(start) == 1 and "step 0 -> " in start[0].getMessage()
    assert any(r.name == "lth_kernels.training.trainer.eval" and r.getMessage().startswith("step ")
               for r in caplog.records)
    caplog.clear()
    res = Trainer(tiny_mlp(), train, test, hp, batch_size=24, out_dir=tmp_path / "stage").train()
    resumed = [r.getMessage() for r in caplog.records if r.name == "lth_kernels.training.trainer"]
    assert res.resumed_from is not None and any("resuming from" in m and f"step {res.resumed_from}" in m
                                                for m in resumed)
