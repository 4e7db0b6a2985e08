"""The Trainer's two pipelines on CIFAR- and MNIST-shaped files: the device pipeline and the loader (0 and 2
workers) keep the data order, rewinding and bit-exact resume; the loader's augmentation does not depend on the
worker count; compiled and channels-last training match eager."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.data_files import unchecked_cifar, write_cifar, write_mnist
from lth_kernels.data import create_dataset
from lth_kernels.training import Callback, Trainer, TrainingHparams
from lth_kernels.training.checkpoint import load_step
from tests.training.test_trainer import BatchTap
from tests.training.tiny import TinyMaskedLinear

HP = TrainingHparams(training_steps="3ep", lr=0.05, momentum=0.9, eval_every="0it")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    write_cifar(str(root), 120, 40)
    write_mnist(str(root), 120, 40)
    return root


def _data(root, name="cifar10", pipeline="auto", workers=0):
    with unchecked_cifar():
        return create_dataset(name, data_dir=root, pipeline=pipeline, num_workers=workers)


def _model(seen=None, features=3 * 32 * 32):
    torch.manual_seed(0)
    layers = [BatchTap(seen)] if seen is not None else []
    return nn.Sequential(*layers, nn.Flatten(), TinyMaskedLinear(features, 16), nn.ReLU(), nn.Linear(16, 10))


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.state_dict().values()])


class Crash(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_start(self, trainer, step):
        if step == self.at:
            raise KeyboardInterrupt


PIPELINES = [("device", 0), ("loader", 0), ("loader", 2)]


@pytest.mark.parametrize("pipeline, workers", PIPELINES)
def test_rewind_and_resume_on_every_pipeline(root, tmp_path, pipeline, workers):
    train, test, _ = _data(root, pipeline=pipeline, workers=workers)
    seen_a = []
    model_a = _model(seen_a)
    ta = Trainer(model_a, train, test, HP, batch_size=20, out_dir=tmp_path / "a", save_steps=[8], progress=False)
    assert ta.feed.pipeline == pipeline and ta.num_workers == workers and ta.steps_per_epoch == 6
    ta.train()

    seen_b = []  # rewound mid-epoch: the same (augmented) batches from step 8 on, the same weights
    model_b = _model(seen_b)
    tb = Trainer(model_b, train, test, HP, batch_size=20, progress=False)
    load_step(tmp_path / "a", 8, model_b, tb.optimizer)
    tb.train(start_step=8)
    assert len(seen_b) == 10 and all(torch.equal(x, seen_a[8 + i]) for i, x in enumerate(seen_b))
    assert torch.equal(_weights(model_a), _weights(model_b))
    assert not torch.equal(seen_a[0], seen_a[6]) or pipeline == "device" and not train.augments

    model_c = _model()  # killed in the second epoch, rerun: resumes from the epoch-1 checkpoint, bit-exact
    with pytest.raises(KeyboardInterrupt):
        Trainer(model_c, train, test, HP, batch_size=20, out_dir=tmp_path / "c", callbacks=[Crash(9)],
                progress=False).train()
    model_c = _model()
    result = Trainer(model_c, train, test, HP, batch_size=20, out_dir=tmp_path / "c", progress=False).train()
    assert result.resumed_from == 6 and torch.equal(_weights(model_c), _weights(model_a))


def test_loader_augmentation_does_not_depend_on_workers_and_mnist_pipelines_agree(root):
    finals = {}
    for name, pipeline, workers in [("cifar10", "loader", 0), ("cifar10", "loader", 2), ("cifar10", "device", 0),
                                    ("mnist", "loader", 2), ("mnist", "device", 0)]:
        train, test, _ = _data(root, name, pipeline, workers)
        model = _model(features=28 * 28 if name == "mnist" else 3 * 32 * 32)
        metrics = Trainer(model, train, test, HP, batch_size=20, progress=False).train().metrics
        finals[name, pipeline, workers] = _weights(model), metrics["test_loss"]
        assert metrics["test_n"] == 40
    assert torch.equal(finals["cifar10", "loader", 0][0], finals["cifar10", "loader", 2][0])
    # The device pipeline draws its crops from its own generator: the same order, other crops.
    assert not torch.equal(finals["cifar10", "loader", 0][0], finals["cifar10", "device", 0][0])
    # MNIST has no augmentation: the device pipeline's batches are torchvision's, bit for bit.
    assert torch.equal(finals["mnist", "loader", 2][0], finals["mnist", "device", 0][0])


def _conv_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                         nn.Flatten(), TinyMaskedLinear(8 * 15 * 15, 10))


def test_channels_last_matches_and_saves_contiguous_weights(root, tmp_path):
    train, test, _ = _data(root)
    hp = HP.replace(training_steps="1ep")
    finals = []
    for cl in (False, True):
        model = _conv_model()
        t = Trainer(model, train, test, hp, batch_size=20, out_dir=tmp_path / str(cl), channels_last=cl,
                    progress=False)
        assert t.channels_last == cl and not Trainer(_conv_model(), train, test, hp, batch_size=20).channels_last
        t.train()
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last) == cl
        fresh = _conv_model()
        load_step(tmp_path / str(cl), 6, fresh)  # the saved step file loads into a standard-layout model
        finals.append(_weights(fresh))
    torch.testing.assert_close(finals[0], finals[1], atol=1e-5, rtol=1e-4)


def _compiled_vs_eager(options):
    train, test, _ = create_dataset("synthetic", num_train=120, num_test=40, img_size=4, in_chans=1)
    finals = []
    for compile_ in (False, True):
        model = _model(features=16)
        mask = torch.rand(16, 16, generator=torch.Generator().manual_seed(1)) < 0.3
        model[1].set_mask(mask)
        t = Trainer(model, train, test, HP.replace(compile=compile_), batch_size=20, progress=False,
                    compile_options=options)
        assert (t.train_model is not t.ddp_model) == compile_
        finals.append((t.train().metrics, _weights(model)))
        assert torch.all(model[1].weight[~mask] == 0)  # pruned weights stay exactly zero
    (m_eager, w_eager), (m_comp, w_comp) = finals
    torch.testing.assert_close(w_comp, w_eager, atol=1e-5, rtol=1e-4)
    assert abs(m_comp["test_loss"] - m_eager["test_loss"]) < 1e-4


def test_compiled_training_matches_eager_capture():
    _compiled_vs_eager({"backend": "aot_eager"})  # Dynamo capture + AOTAutograd backward, no code generation


@pytest.mark.slow
def test_compiled_training_matches_eager_inductor():
    _compiled_vs_eager(None)  # the default backend: Inductor's generated CPU kernels


@pytest.mark.gpu
def test_device_pipeline_on_cuda(root, tmp_path):
    train, test, _ = _data(root)
    model = _conv_model()
    t = Trainer(model, train, test, HP.replace(amp="off"), batch_size=20, device="cuda", out_dir=tmp_path,
                progress=False)
    assert t.feed.pipeline == "device" and t.feed.train_tensors[0].is_cuda and t.channels_last
    batches = [x for x, _ in t.feed.train_batches(0, 0)]
    again = [x for x, _ in t.feed.train_batches(0, 0)]
    assert batches[0].is_cuda and batches[0].dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(batches, again))  # seeded per step on the device
    # The CUDA generator draws other crops than the CPU one, from the same distribution and normalisation:
    cpu = [x for x, _ in Trainer(_conv_model(), train, test, HP, batch_size=20, device="cpu").feed.train_batches(0, 0)]
    assert abs(float(torch.cat(batches).mean().cpu()) - float(torch.cat(cpu).mean())) < 0.1
    r = t.train()
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last) and r.metrics["test_n"] == 40
