"""Checkpoint files (``training/checkpoint.py``): weights at named steps with their optimizer state, the rolling
``checkpoint.pt`` with its digest and previous copy, and the fall-back order when one is damaged."""

from __future__ import annotations

import hashlib
import logging

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from lth_kernels.training import checkpoint as ckpt
from lth_kernels.training.seed import get_rng_state


def _net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


class _Wrapper(nn.Module):  # what DDP looks like from outside: the model as ``.module``
    def __init__(self, module):
        super().__init__()
        self.module = module


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_strip_prefixes_removes_every_leading_wrapper_prefix():
    state = {"module._orig_mod.module.0.weight": 1, "_orig_mod.bias": 2, "encoder.module.weight": 3, "plain": 4}
    assert ckpt.strip_prefixes(state) == {"0.weight": 1, "bias": 2, "encoder.module.weight": 3, "plain": 4}


def test_model_state_is_an_independent_contiguous_cpu_copy_without_wrapper_prefixes():
    net = _net()
    with torch.no_grad():
        net[0].weight.set_(net[0].weight.detach().t().contiguous().t())  # a non-contiguous parameter
    assert not net[0].weight.is_contiguous()
    state = ckpt.model_state(_Wrapper(net))
    assert set(state) == set(net.state_dict())  # no "module." prefix
    assert all(v.is_contiguous() and v.device.type == "cpu" and not v.requires_grad for v in state.values())
    before = {k: v.clone() for k, v in state.items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)  # the model keeps training
    assert all(torch.equal(state[k], before[k]) for k in state)


def test_weights_round_trip_with_string_metadata(tmp_path):
    a, b = _net(0), _net(1)
    path = tmp_path / "w.safetensors"
    ckpt.save_weights(_Wrapper(a), path, {"step": 7, "note": "x"})
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"step": "7", "note": "x"}
    ckpt.load_weights(_Wrapper(b), path)
    assert _same(a, b)
    ckpt.save_weights(a, tmp_path / "plain.safetensors")  # no metadata
    ckpt.load_weights(b, tmp_path / "plain.safetensors")
    assert _same(a, b)


def test_load_weights_strips_prefixes_and_is_strict_by_default(tmp_path):
    a, b = _net(0), _net(1)
    path = tmp_path / "ddp.safetensors"
    save_file({f"module.{k}": v.contiguous() for k, v in a.state_dict().items()}, str(path))
    ckpt.load_weights(b, path)
    assert _same(a, b)
    partial = tmp_path / "partial.safetensors"
    save_file({"0.weight": a[0].weight.detach().clone()}, str(partial))
    with pytest.raises(RuntimeError, match="Missing key"):
        ckpt.load_weights(b, partial)
    c = _net(2)
    ckpt.load_weights(c, partial, strict=False)
    assert torch.equal(c[0].weight, a[0].weight) and not torch.equal(c[2].weight, a[2].weight)
    missing = tmp_path / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match=f"^weights file {missing} does not exist$"):
        ckpt.load_weights(b, missing)


def test_step_files_hold_weights_and_optimizer_state(tmp_path):
    net = _net()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    w, o = ckpt.step_paths(tmp_path, 12)
    assert (w, o) == (tmp_path / "step_12.safetensors", tmp_path / "step_12.optim.pt")
    ckpt.save_step(tmp_path, 12, net, opt, metadata={"level": 3})
    with safe_open(str(w), "pt") as f:
        assert f.metadata() == {"step": "12", "level": "3"}

    net2 = _net(1)
    opt2 = torch.optim.SGD(net2.parameters(), lr=0.1, momentum=0.9)
    ckpt.load_step(tmp_path, 12, net2, opt2)
    assert _same(net, net2)
    m1 = opt.state_dict()["state"][0]["momentum_buffer"]
    assert torch.equal(opt2.state_dict()["state"][0]["momentum_buffer"], m1)

    ckpt.save_step(tmp_path, 13, net)  # weights only
    assert ckpt.step_paths(tmp_path, 13)[0].exists() and not ckpt.step_paths(tmp_path, 13)[1].exists()
    ckpt.load_step(tmp_path, 13, _net(1))  # loading weights only needs no optimizer file
    with pytest.raises(FileNotFoundError, match=r"optimizer state .*step_13\.optim\.pt does not exist \(saved "
                                                r"without an optimizer\?\)"):
        ckpt.load_step(tmp_path, 13, _net(1), torch.optim.SGD(_net(1).parameters(), lr=0.1))


def test_a_step_weights_file_exists_only_when_its_optimizer_state_was_written(tmp_path, monkeypatch):
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    real = ckpt.atomic_save

    def failing(obj, path, **kw):
        if str(path).endswith(".optim.pt"):
            raise OSError("disk full")
        return real(obj, path, **kw)

    monkeypatch.setattr(ckpt, "atomic_save", failing)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_step(tmp_path, 3, net, opt)
    assert not ckpt.step_paths(tmp_path, 3)[0].exists()


def test_save_checkpoint_keeps_the_previous_one_and_both_digests(tmp_path):
    path = tmp_path / "checkpoint.pt"
    for step in (1, 2, 3):
        ckpt.save_checkpoint(path, {"step": step})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["checkpoint.pt", "checkpoint.pt.prev", "checkpoint.pt.prev.sha256", "checkpoint.pt.sha256"]
    for p in (path, tmp_path / "checkpoint.pt.prev"):
        digest = (p.parent / (p.name + ".sha256")).read_text()
        assert digest == hashlib.sha256(p.read_bytes()).hexdigest() + "\n"
    assert torch.load(tmp_path / "checkpoint.pt.prev", weights_only=False) == {"step": 2}
    assert ckpt.load_checkpoint(path) == {"step": 3}


def test_first_checkpoint_has_no_previous_one(tmp_path):
    path = tmp_path / "checkpoint.pt"
    assert ckpt.load_checkpoint(path) is None
    ckpt.save_checkpoint(path, {"step": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt", "checkpoint.pt.sha256"]


def test_a_checkpoint_round_trips_what_a_resume_needs(tmp_path):
    # RNG states (numpy's among them: not plain tensors) and optimizer state, as the Trainer writes them
    net = _net()
    opt = torch.optim.Adam(net.parameters())
    net(torch.randn(5, 4)).sum().backward()
    opt.step()
    state = {"step": 3, "rng": get_rng_state(), "optimizer": opt.state_dict(), "model": ckpt.model_state(net)}
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, state)
    got = ckpt.load_checkpoint(path)
    assert got is not None and got["step"] == 3
    assert torch.equal(got["rng"]["torch"], state["rng"]["torch"])
    assert got["rng"]["python"] == state["rng"]["python"]
    assert (got["rng"]["numpy"][1] == state["rng"]["numpy"][1]).all()
    assert all(v.device.type == "cpu" for v in got["model"].values())
    opt2 = torch.optim.Adam(_net(1).parameters())
    opt2.load_state_dict(got["optimizer"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_a_checkpoint_without_a_digest_still_loads(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"step": 4}, path)  # written before digests existed
    assert ckpt.load_checkpoint(path) == {"step": 4}


def test_an_altered_checkpoint_falls_back_to_the_previous_one_with_warnings(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 1})
    ckpt.save_checkpoint(path, {"step": 2})
    torch.save({"step": 99}, path)  # loads fine, but is not what was written
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        assert ckpt.load_checkpoint(path) == {"step": 1}
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {path} is corrupt (its sha256 does not match checkpoint.pt.sha256); trying the previous one",
        f"resuming from the previous checkpoint {path}.prev"]
    caplog.clear()
    (tmp_path / "checkpoint.pt.prev").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        assert ckpt.load_checkpoint(path) is None
    last = caplog.records[-1].getMessage()
    assert last.startswith(f"checkpoint {path}.prev is corrupt (") and last.endswith("); starting this stage over")


def test_the_reason_a_checkpoint_is_corrupt_is_one_short_line(tmp_path, caplog, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 1})

    def unreadable(p):
        raise RuntimeError("first line\n  " + "x" * 300)

    monkeypatch.setattr(ckpt, "_read_verified", unreadable)
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        assert ckpt.load_checkpoint(path) is None
    reason = caplog.records[0].getMessage().split(" is corrupt (", 1)[1].rsplit("); ", 1)[0]
    assert reason == ("first line " + "x" * 300)[:200]


def test_only_the_previous_checkpoint_left(tmp_path, caplog):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 1})
    ckpt.save_checkpoint(path, {"step": 2})
    path.unlink()  # killed between the rename and the new write
    with caplog.at_level(logging.WARNING, logger=ckpt.log.name):
        assert ckpt.load_checkpoint(path) == {"step": 1}
    assert "resuming from the previous checkpoint" in caplog.text


def test_remove_checkpoint_deletes_it_the_previous_one_and_the_digests(tmp_path):
    path = tmp_path / "checkpoint.pt"
    ckpt.save_checkpoint(path, {"step": 1})
    ckpt.save_checkpoint(path, {"step": 2})
    (tmp_path / "other.txt").write_text("kept")
    ckpt.remove_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other.txt"]
    ckpt.remove_checkpoint(path)  # nothing left to remove is fine


@pytest.mark.gpu
def test_weights_and_checkpoints_written_on_a_gpu_load_on_the_cpu(tmp_path):
    net = _net().cuda()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(5, 4, device="cuda")).sum().backward()
    opt.step()
    state = ckpt.model_state(net)
    assert all(v.device.type == "cpu" for v in state.values())
    ckpt.save_checkpoint(tmp_path / "checkpoint.pt", {"model": {k: v.cuda() for k, v in state.items()}})
    assert all(v.device.type == "cpu" for v in ckpt.load_checkpoint(tmp_path / "checkpoint.pt")["model"].values())
    ckpt.save_step(tmp_path, 1, net, opt)
    cpu_opt = torch.optim.SGD(_net().parameters(), lr=0.1, momentum=0.9)
    ckpt.load_step(tmp_path, 1, _net(), cpu_opt)
    assert cpu_opt.state_dict()["state"][0]["momentum_buffer"].device.type == "cpu"
