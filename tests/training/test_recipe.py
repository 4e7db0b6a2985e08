"""The DeiT recipe options of the Trainer: model EMA, repeated augmentation and the cosine's min-lr, each against
values computed by hand, with the defaults leaving runs (and their names) as they were."""

import math

import pytest
import torch
from safetensors.torch import load_file

from lth_kernels.training import Callback, Trainer, TrainingHparams
from lth_kernels.training.ema import EMA_WEIGHTS
from lth_kernels.training.hparams import HparamsError
from lth_kernels.training.metrics import read_metrics
from tests.training.tiny import tiny_data, tiny_mlp


def _hp(**kw):
    base = {"training_steps": "3ep", "lr": 0.2, "weight_decay": 1e-3, "eval_every": "0it"}
    return TrainingHparams(**{**base, **kw})


class Weights(Callback):
    """The model's state after every step (after the mask guard: what the average reads)."""

    def __init__(self):
        self.after = {}

    def on_train_start(self, trainer, step):
        self.after[step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}

    def on_step_end(self, trainer, step):
        self.after[step] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, trainer, step):
        if step == self.at:
            raise RuntimeError("crash")


def test_ema_is_the_hand_computed_average(tmp_path):
    train, test = tiny_data()
    torch.manual_seed(0)
    model = tiny_mlp()
    model[0].set_mask(torch.rand(16, 8) > 0.4)
    rec = Weights()
    decay = 0.7
    t = Trainer(model, train, test, _hp(ema_decay=decay, eval_every="4it"), batch_size=24, out_dir=tmp_path,
                callbacks=[rec])
    t.train()
    assert sorted(rec.after) == list(range(13))
    expected = {k: v.double() for k, v in rec.after[0].items() if v.is_floating_point()}
    for step in range(1, 13):
        expected = {k: decay * e + (1 - decay) * rec.after[step][k].double() for k, e in expected.items()}
    saved = load_file(tmp_path / EMA_WEIGHTS)
    for k, e in expected.items():
        assert torch.allclose(saved[k].double(), e, rtol=1e-5, atol=1e-6), k
        assert not torch.allclose(saved[k], rec.after[12][k])  # an average, not the last weights
    assert torch.equal(saved["0.weight"][~model[0].mask], torch.zeros(int((~model[0].mask).sum())))
    # evaluated beside the model: the logged ema accuracy is the saved average's; the model's is unchanged
    recs = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 4, 8, 12]
    assert recs[0]["ema_test_acc"] == recs[0]["test_acc"]  # the average starts at the model
    averaged = tiny_mlp()
    averaged[0].set_mask(model[0].mask)
    averaged.load_state_dict(saved)
    assert recs[-1]["ema_test_acc"] == Trainer(averaged, train, test, _hp(), batch_size=24).evaluate()["test_acc"]
    plain = tiny_mlp()
    plain.load_state_dict(rec.after[0])
    plain[0].set_mask(model[0].mask)
    Trainer(plain, train, test, _hp(), batch_size=24, out_dir=tmp_path / "plain").train()
    assert read_metrics(tmp_path / "plain" / "metrics.jsonl")[-1]["test_acc"] == recs[-1]["test_acc"]
    assert not (tmp_path / "plain" / EMA_WEIGHTS).exists()


def test_ema_resumes_bit_exactly(tmp_path):
    train, test = tiny_data()

    def run(out, callbacks=()):
        torch.manual_seed(0)
        return Trainer(tiny_mlp(), train, test, _hp(ema_decay=0.9), batch_size=24, out_dir=out,
                       callbacks=callbacks).train()

    run(tmp_path / "ref")
    with pytest.raises(RuntimeError, match="crash"):
        run(tmp_path / "run", [Crash(6)])  # after the epoch-1 checkpoint (step 4)
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    res = run(tmp_path / "run")
    assert res.resumed_from == 4
    ref, got = load_file(tmp_path / "ref" / EMA_WEIGHTS), load_file(tmp_path / "run" / EMA_WEIGHTS)
    assert all(torch.equal(ref[k], got[k]) for k in ref)


def test_repeated_augmentation_order():
    train, test = tiny_data()  # 96 samples, batches of 16: 6 per epoch
    plain = Trainer(tiny_mlp(), train, test, _hp(), batch_size=16).sampler
    ra = Trainer(tiny_mlp(), train, test, _hp(repeated_augment=3), batch_size=16).sampler
    for epoch in range(2):
        p, r = plain.batch_indices(epoch).reshape(-1), ra.batch_indices(epoch).reshape(-1)
        assert r.numel() == 96 and r.unique().numel() == 32  # n / 3 distinct images, each 3 times in a row
        assert torch.equal(r, p[:32].repeat_interleave(3))  # the same permutation, each element repeated
    # under DDP the copies of an image go to different ranks (rank r takes r, r + w, ... of a global batch)
    from lth_kernels.training.data_order import EpochSampler

    ranks = [EpochSampler(96, 18, 0, rank, 3, repeats=3).batch_indices(0) for rank in range(3)]
    assert torch.equal(ranks[0], ranks[1]) and torch.equal(ranks[1], ranks[2])
    with pytest.raises(HparamsError, match="--repeated_augment: must be >= 1"):
        _hp(repeated_augment=0)


class Transformed(torch.utils.data.Dataset):
    """Every read draws its own noise (a random augmentation): repeated images differ."""

    def __init__(self, ds):
        self.x, self.y = ds.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i] + torch.randn(self.x[i].shape), self.y[i]


def test_repeated_copies_get_their_own_transform():
    train, test = tiny_data()
    seen = []

    class Tap(torch.nn.Module):
        def forward(self, x):
            if self.training:
                seen.append(x.detach().clone())
            return x

    model = torch.nn.Sequential(Tap(), tiny_mlp())
    Trainer(model, Transformed(train), test, _hp(repeated_augment=3, training_steps="1it"), batch_size=24,
            num_workers=0).train()
    first = seen[0]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])
    assert (first[0] - first[1]).abs().max() < 10  # the same image under two noise draws


def test_min_lr_is_reached_at_the_end_of_training():
    train, test = tiny_data()
    lrs = {}

    class Lr(Callback):
        def on_after_optimizer_step(self, trainer, step):
            lrs[step - 1] = trainer.optimizer.param_groups[0]["lr"]

    hp = _hp(lr_schedule="cosine", min_lr=1e-3, training_steps="13it")
    Trainer(tiny_mlp(), train, test, hp, batch_size=24, callbacks=[Lr()]).train()
    assert lrs[0] == pytest.approx(0.2)
    assert lrs[12] == pytest.approx(1e-3 + (0.2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * 12 / 13)), rel=1e-12)
    assert min(lrs.values()) > 1e-3
    t = Trainer(tiny_mlp(), train, test, hp, batch_size=24)
    assert t.schedule.lr(13) == pytest.approx(1e-3, rel=1e-12)
    with pytest.raises(HparamsError, match="--min_lr: needs --training.lr_schedule cosine"):
        _hp(min_lr=1e-3)
    with pytest.raises(HparamsError, match="--ema_decay: must be in"):
        _hp(ema_decay=1.0)


def test_defaults_keep_the_run_names():
    hp = TrainingHparams()
    assert hp.non_default() == {}
    named = _hp(min_lr=0.0, ema_decay=0.0, repeated_augment=1).non_default()
    assert not {"min_lr", "ema_decay", "repeated_augment"} & set(named)
    assert "ema_decay" in _hp(ema_decay=0.5).non_default()


def test_ema_takes_the_models_current_masks(tmp_path):
    train, test = tiny_data()
    torch.manual_seed(0)
    model = tiny_mlp()
    new = torch.rand(16, 8) > 0.5

    class Swap(Callback):
        def on_after_optimizer_step(self, trainer, step):
            if step == 6:
                trainer.model[0].set_mask(new)

    t = Trainer(model, train, test, _hp(ema_decay=0.9), batch_size=24, out_dir=tmp_path, callbacks=[Swap()])
    t.train()
    assert torch.equal(t.ema.module[0].mask, new)  # evaluated and saved with the mask in force at the end
    saved = load_file(tmp_path / EMA_WEIGHTS)
    assert torch.equal(saved["0.weight"][~new], torch.zeros(int((~new).sum())))
    assert (saved["0.weight"][new] != 0).all()
