"""Checkpoint files move between machines (``training/checkpoint.py``): files written on a GPU load on a CPU-only
machine, and a step's optimizer state holds whatever the optimizer's param groups hold (not only tensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.serialization
from torch import nn

from lth_kernels.training import checkpoint as ckpt


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.fixture
def written_on_a_gpu(monkeypatch):
    """torch.save records each storage's device ("cuda:0" for a GPU run's tensors) in the file: files written in
    this fixture claim CUDA storages, as a GPU machine's would, until the test's ``monkeypatch.undo()`` (the
    move to the loading machine)."""
    monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")


def test_a_checkpoint_written_on_a_gpu_resumes_on_the_cpu(tmp_path, written_on_a_gpu, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 7, "model": {"w": torch.arange(3.0)}})
    monkeypatch.undo()
    got = ckpt.load_checkpoint(path)  # not "corrupt": the run resumes instead of starting over
    assert got is not None and got["step"] == 7
    assert got["model"]["w"].device.type == "cpu" and got["model"]["w"].tolist() == [0.0, 1.0, 2.0]


def test_step_optimizer_state_written_on_a_gpu_loads_on_the_cpu(tmp_path, written_on_a_gpu, monkeypatch):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt.save_step(tmp_path, 4, net, opt)
    monkeypatch.undo()
    opt2 = torch.optim.SGD(_net(1).parameters(), lr=0.1, momentum=0.9)
    ckpt.load_step(tmp_path, 4, _net(1), opt2)
    m = opt2.state_dict()["state"][0]["momentum_buffer"]
    assert m.device.type == "cpu" and torch.equal(m, opt.state_dict()["state"][0]["momentum_buffer"])


def test_step_optimizer_state_with_numpy_hyperparameters_round_trips(tmp_path):
    # an lr / betas computed with numpy (np.float64, not a Python float) sit in the param groups as they are
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=np.float64(1e-3), betas=(np.float64(0.9), 0.999))
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    ckpt.save_step(tmp_path, 2, net, opt)
    net2 = _net(1)
    opt2 = torch.optim.Adam(net2.parameters(), lr=0.5)
    ckpt.load_step(tmp_path, 2, net2, opt2)
    assert opt2.param_groups[0]["lr"] == 1e-3 and opt2.param_groups[0]["betas"] == (0.9, 0.999)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
