"""Greedy forward selection: the argmin rule on a two-layer net, gate folding, the workflow and the budget study."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.tickets.gfs import fold_gate_, select_layer
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.gfs.budget import fit_log, threshold
from lth_kernels.workflows.gfs.cli import main
from lth_kernels.workflows.gfs.hparams import GfsHparams, GfsOptions
from lth_kernels.workflows.gfs.runner import run


class TwoLayer(nn.Module):
    def __init__(self, d_in=5, hidden=7, classes=3):
        super().__init__()
        self.hidden, self.out = nn.Linear(d_in, hidden), nn.Linear(hidden, classes)

    def forward(self, x):
        return self.out(F.relu(self.hidden(x)))


@torch.no_grad()
def _loss_of(model, alpha, x, y):
    """Independent oracle: f_alpha(x) = W2 (D * alpha * relu(W1 x + b1)) + b2."""
    d = alpha.numel()
    h = F.relu(x.double() @ model.hidden.weight.double().T + model.hidden.bias.double())
    out = (h * (d * alpha)) @ model.out.weight.double().T + model.out.bias.double()
    return float(F.cross_entropy(out, y))


@pytest.mark.parametrize("repeats", [False, True])
def test_gfs_picks_the_loss_minimising_neuron(repeats):
    torch.manual_seed(3)
    model = TwoLayer()
    x, y = torch.randn(32, 5), torch.randint(0, 3, (32,))
    res = select_layer(model, "hidden", itertools.repeat((x, y)), num_candidates=100, allow_repeats=repeats,
                       max_steps=6)
    alpha = torch.zeros(7, dtype=torch.float64)
    chosen = []
    for k, step in enumerate(res.steps):
        pool = range(7) if repeats else [i for i in range(7) if i not in chosen]
        eta = 1.0 / (k + 1)
        losses = {}
        for i in pool:
            trial = alpha * (1 - eta)
            trial[i] += eta
            losses[i] = _loss_of(model, trial, x, y)
        best = min(losses, key=lambda i: (losses[i], i))
        assert step.chosen == best
        assert step.loss == pytest.approx(losses[best], rel=1e-4, abs=1e-5)
        alpha = alpha * (1 - eta)
        alpha[best] += eta
        chosen.append(best)
    assert len(res.steps) == 6
    torch.testing.assert_close(res.alpha, alpha)
    assert float(res.alpha.sum()) == pytest.approx(1.0)
    assert res.kept == len(set(chosen))
    if not repeats:
        assert len(set(chosen)) == 6  # without repeats every step adds a new neuron


def test_gfs_samples_candidates_and_stops_at_target():
    torch.manual_seed(0)
    model = TwoLayer(hidden=20)
    x, y = torch.randn(16, 5), torch.randint(0, 3, (16,))
    res = select_layer(model, "hidden", itertools.repeat((x, y)), num_candidates=4,
                       generator=torch.Generator().manual_seed(0))
    assert all(len(s.candidates) <= 4 for s in res.steps)
    assert res.kept == 20  # no target: every channel
    res = select_layer(model, "hidden", itertools.repeat((x, y)), num_candidates=20, target_acc=0.01)
    assert len(res.steps) == 1 and res.eval_acc is not None  # any subnetwork reaches 1 % accuracy


def test_fold_gate_is_exact():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].bias.normal_()
    x = torch.randn(8, 4)
    res = select_layer(model, "1", itertools.repeat((x, torch.zeros(8, dtype=torch.long))), max_steps=3)
    scale = (6 * res.alpha).float()
    with torch.no_grad():
        h = model[1](model[0](x)) * scale
        expected = model[3](F.relu(h))
        fold_gate_(model, "1", res.alpha)
        torch.testing.assert_close(model(x), expected)
    assert int((model[1].weight != 0).sum()) <= 3


def test_threshold_and_fit():
    pts = [(0, 0.1), (10, 0.5), (50, 0.9), (100, 0.95), (200, 0.94)]
    assert threshold(pts, 0.02) == 100
    assert threshold(pts, 0.06) == 50
    assert threshold([], 0.02) is None
    import math

    fit = fit_log({10: 2 + 3 * math.log(10), 100: 2 + 3 * math.log(100), 1000: 2 + 3 * math.log(1000), 5: None})
    assert fit["a"] == pytest.approx(2) and fit["b"] == pytest.approx(3) and fit["r2"] == pytest.approx(1)
    assert fit_log({10: 5, 20: None}) is None


def test_hparams_validation():
    with pytest.raises(HparamsError, match="train_sizes"):
        GfsOptions(train_sizes=("100", "x"))
    with pytest.raises(HparamsError, match="pretrain_steps"):
        GfsOptions(pretrain_steps=("10", "20it"))


def test_prune_run_end_to_end(tmp_path, capsys):
    hp = GfsHparams().with_overrides({"model.name": "mlp_bn_24_12", "training.training_steps": "3ep",
                                      "training.milestone_steps": "", "finetune.training_steps": "10it",
                                      "gfs.layer_finetune_steps": "5it", "gfs.candidates": 8})
    summary = run(hp, tmp_path)
    layers = [x["layer"] for x in summary["layers"]]
    assert layers == ["bns.0", "bns.1"]  # bottom-up
    assert all(1 <= x["kept"] <= x["channels"] for x in summary["layers"])
    assert summary["subnetwork"]["params"] <= summary["dense"]["params"]
    out = tmp_path / f"gfs-{hp.hashname()}"
    kept = json.loads((out / "channels.json").read_text())["after"]
    assert kept["bns.0"] == summary["layers"][0]["kept"]
    assert "GFS subnetwork" in capsys.readouterr().out


def test_budget_study_end_to_end(tmp_path, capsys):
    rc = main(["--root", str(tmp_path), "--budget-study", "--model.name", "mlp_bn_16",
               "--gfs.train_sizes", "100,300", "--gfs.pretrain_steps", "0it,5it,15it", "--gfs.candidates", "6",
               "--gfs.layer_finetune_steps", "0it", "--dataset.batch_size", "50"])
    assert rc == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert {(r["m"], r["pretrain_it"]) for r in summary["rows"]} == {(m, t) for m in (100, 300) for t in (0, 5, 15)}
    assert set(summary["thresholds"]) == {"100", "300"}
    assert all(t in (0, 5, 15) for t in summary["thresholds"].values())
    assert (run_dir / "plots" / "budget.png").stat().st_size > 0
    assert (run_dir / "m_100" / "pretrain" / "step_5.safetensors").exists()
    assert "m = 300" in capsys.readouterr().out
