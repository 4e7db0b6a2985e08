import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lth_kernels.training import Trainer, TrainingHparams
from lth_kernels.training.augment import AugmentHparams, BatchAugment
from lth_kernels.training.hparams import HparamsError
from tests.training.tiny import ListDataset, tiny_data, tiny_mlp


def _batch(b=8, c=3, s=8, classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, c, s, s, generator=g), torch.randint(0, classes, (b,), generator=g)


def _smooth(y, classes, eps):
    return F.one_hot(y, classes).double() * (1 - eps) + eps / classes


def test_mixup_is_a_convex_pair_with_matching_soft_targets():
    x, y = _batch()
    aug = BatchAugment(AugmentHparams(mixup=0.8), 5, label_smoothing=0.1, seed=3)
    xm, t = aug(x, y, step=7)
    # timm's batch mode mixes image i with image B-1-i by one lambda; recover it from the pixels.
    d = (x - x.flip(0)).double()
    lam = ((xm.double() - x.flip(0).double()) * d).sum() / (d * d).sum()
    torch.testing.assert_close(xm.double(), lam * x.double() + (1 - lam) * x.flip(0).double(), rtol=0, atol=1e-5)
    want = lam * _smooth(y, 5, 0.1) + (1 - lam) * _smooth(y.flip(0), 5, 0.1)
    torch.testing.assert_close(t.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(t.sum(1), torch.ones(8), rtol=0, atol=1e-5)
    assert torch.equal(x, _batch()[0])  # the caller's batch is not mixed in place


def test_cutmix_pastes_one_box_and_weights_targets_by_its_area():
    x, y = _batch(b=4, s=16)
    xm, t = BatchAugment(AugmentHparams(cutmix=1.0), 5, seed=1)(x, y, step=0)
    pasted = (xm != x).any(1)  # (B, H, W): pixels taken from the partner image
    assert torch.equal(pasted[0], pasted[1]) and pasted.any()  # one box for the whole batch
    frac = pasted[0].double().mean()
    want = (1 - frac) * _smooth(y, 5, 0.0) + frac * _smooth(y.flip(0), 5, 0.0)
    torch.testing.assert_close(t.double(), want, rtol=0, atol=1e-6)


def test_random_erasing_only_touches_a_rectangle_per_image():
    x, y = _batch(b=6, s=16)
    xe, ye = BatchAugment(AugmentHparams(random_erasing=1.0), 5)(x, y, step=2)
    assert torch.equal(ye, y)  # hard labels stay hard
    for i in range(6):
        changed = (xe[i] != x[i]).any(0)
        rows, cols = changed.any(1).nonzero(), changed.any(0).nonzero()
        assert changed.any()
        box = changed[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
        assert box.all()  # one solid rectangle


def test_draws_depend_on_step_only_and_leave_global_generators_alone():
    x, y = _batch()
    aug = BatchAugment(AugmentHparams(mixup=0.8, cutmix=1.0, random_erasing=0.5), 5, seed=0)
    np.random.seed(1)
    random.seed(1)
    torch.manual_seed(1)
    before = (np.random.get_state()[1].copy(), random.getstate(), torch.get_rng_state())
    a1, t1 = aug(x, y, step=5)
    after = (np.random.get_state()[1], random.getstate(), torch.get_rng_state())
    assert np.array_equal(before[0], after[0]) and before[1] == after[1] and torch.equal(before[2], after[2])
    a2, t2 = BatchAugment(AugmentHparams(mixup=0.8, cutmix=1.0, random_erasing=0.5), 5, seed=0)(x, y, step=5)
    assert torch.equal(a1, a2) and torch.equal(t1, t2)
    a3, _ = aug(x, y, step=6)
    assert not torch.equal(a1, a3)


def test_bad_values_are_one_line_errors():
    with pytest.raises(HparamsError, match="--mixup"):
        AugmentHparams(mixup=-1)
    with pytest.raises(HparamsError, match="--random_erasing"):
        AugmentHparams(random_erasing=1.5)
    with pytest.raises(HparamsError, match="--randaugment"):
        AugmentHparams(randaugment="autoaug")
    x, y = _batch(b=5)
    with pytest.raises(ValueError, match="batch_size: .* got 5"):
        BatchAugment(AugmentHparams(mixup=0.2), 5)(x, y, step=0)
    assert not AugmentHparams().batch_level and AugmentHparams(random_erasing=0.1).batch_level


@pytest.mark.parametrize("loader", ["tensors", "dataloader"])
def test_trainer_trains_on_augmented_batches_reproducibly(loader):
    train, test = tiny_data(in_features=8)
    train = torch.utils.data.TensorDataset(train.tensors[0].view(-1, 2, 2, 2), train.tensors[1])
    if loader == "dataloader":
        train = ListDataset(train)
    test = torch.utils.data.TensorDataset(test.tensors[0].view(-1, 2, 2, 2), test.tensors[1])
    hp = TrainingHparams(training_steps="3ep", lr=0.1, label_smoothing=0.1, eval_every="0it")
    seen = []

    class Spy(BatchAugment):
        def __call__(self, x, y, step):
            out = super().__call__(x, y, step)
            seen.append((step, out[1].dtype))
            return out

    def run(aug):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), tiny_mlp())
        Trainer(model, train, test, hp, batch_size=16, progress=False, batch_augment=aug).train()
        return torch.cat([p.flatten() for p in model.parameters()])

    mix = AugmentHparams(mixup=0.8, cutmix=1.0)
    w1 = run(Spy(mix, 3, label_smoothing=0.1))
    assert [s for s, _ in seen] == list(range(18)) and all(d == torch.float32 for _, d in seen)
    w2 = run(BatchAugment(mix, 3, label_smoothing=0.1))
    plain = run(None)
    assert torch.equal(w1, w2) and not torch.equal(w1, plain)


def test_randaugment_policy_for_pil_data_sets():
    from PIL import Image

    from lth_kernels.data import create_dataset
    from lth_kernels.data.vision import _randaugment

    (ra,) = _randaugment("rand-m9-mstd0.5-inc1", 32, (0.49, 0.48, 0.45))
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert ra(img).size == (32, 32)
    assert _randaugment("", 32, (0.5,)) == []
    with pytest.raises(ValueError, match="randaugment: not a timm RandAugment policy"):
        _randaugment("rand-q9", 32, (0.5,))
    with pytest.raises(ValueError, match="randaugment"):
        create_dataset("digits", randaugment="rand-m9")  # in-memory 8x8 tensors: no PIL pipeline
