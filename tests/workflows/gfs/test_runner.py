"""Greedy forward selection: the argmin rule on a two-layer net, gate folding, the workflow and the budget study."""

from __future__ import annotations

import itertools
import json
import logging

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from lth_kernels.tickets.gfs import fold_gate_, select_layer
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.gfs.budget import fit_log, threshold
from lth_kernels.workflows.gfs.cli import main
from lth_kernels.workflows.gfs.hparams import GfsHparams, GfsOptions
from lth_kernels.workflows.gfs.runner import run
from tests.workflows.gfs._greedy import assert_greedy_steps


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
    k0, k1 = (x["kept"] for x in summary["layers"])
    assert (k0, k1) != (24, 12)  # something was pruned, so the subnetwork must be strictly narrower
    out = tmp_path / f"gfs-{hp.hashname()}"
    # the saved subnetwork is the narrow network itself: each hidden layer has exactly its kept channels
    pruned = load_file(out / "pruned.safetensors")
    shapes = {k: tuple(v.shape) for k, v in pruned.items() if not k.endswith("num_batches_tracked")}
    assert shapes == {"fc_layers.0.weight": (k0, 64), "fc_layers.0.bias": (k0,), "fc_layers.1.weight": (k1, k0),
                      "fc_layers.1.bias": (k1,), "fc.weight": (10, k1), "fc.bias": (10,),
                      **{f"bns.{i}.{p}": (k,) for i, k in enumerate((k0, k1))
                         for p in ("weight", "bias", "running_mean", "running_var")}}
    params = (64 + 1 + 2) * k0 + (k0 + 1 + 2) * k1 + (k1 + 1) * 10  # weights, biases, BN scale and shift
    assert summary["subnetwork"]["params"] == params < summary["dense"]["params"]
    kept = json.loads((out / "channels.json").read_text())["after"]
    assert kept["bns.0"] == summary["layers"][0]["kept"]
    assert (out / "plots" / "gfs.png").stat().st_size > 0  # the greedy curves and the kept widths
    curve = summary["layers"][0]["curve"]
    assert len(curve) == summary["layers"][0]["steps"] and curve[-1]["kept"] == summary["layers"][0]["kept"]
    assert all(x["target_acc"] is not None for x in summary["layers"])
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


# ---- fidelity to mobile2_prune.py / mobile2_finetune.py and to the budget theorem


def test_balanced_subset_covers_every_class():
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.workflows.common.structured import balanced_subset

    # a class-sorted set (like ImageFolder): the first 12 examples would all be class 0
    labels = torch.tensor([0] * 20 + [1] * 20 + [2] * 5)
    ds = TensorImageDataset(torch.arange(45.0).view(45, 1, 1, 1), labels)
    sub = balanced_subset(ds, 12, seed=0)
    counts = torch.bincount(sub.tensors[1], minlength=3).tolist()
    assert counts == [4, 4, 4]
    again = balanced_subset(ds, 12, seed=0)
    torch.testing.assert_close(sub.tensors[0], again.tensors[0])  # fixed (seeded)
    assert torch.bincount(balanced_subset(ds, 40, seed=1).tensors[1]).tolist() == [18, 17, 5]  # class 2 runs out


def test_layer_targets_follow_the_current_network(monkeypatch):
    """The reference re-evaluates the top-1 at the start of every layer; "dense" keeps the first value."""
    import lth_kernels.workflows.gfs.prune as prune_mod
    from lth_kernels.data.tensor import TensorImageDataset

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 5),
                          nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3))
    ds = TensorImageDataset(torch.randn(30, 4, 1, 1), torch.arange(30) % 3)
    evals = iter([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1] * 10)
    monkeypatch.setattr(prune_mod, "accuracy", lambda *a, **k: {"acc": next(evals), "loss": 0.0})
    seen = []
    real_select = prune_mod.select_layer

    def fake_select(model, name, batches, *, target_acc=None, **kw):
        seen.append(target_acc)
        return real_select(model, name, batches, target_acc=None, max_steps=2,
                                      num_candidates=kw["num_candidates"], generator=kw["generator"])

    monkeypatch.setattr(prune_mod, "select_layer", fake_select)
    for target, expected in (("current", [0.8, 0.7]), ("dense", [0.9, 0.9])):
        evals = iter([0.9, 0.8, 0.7, 0.6])
        seen.clear()
        prune_mod.gfs_prune(model, ds, ds, GfsOptions(target=target, layer_finetune_steps="0it"), batch_size=10,
                            example=ds.tensors[0][:2], finetune_between=False)
        assert seen == expected, target


def test_full_layer_restores_the_dense_layer():
    """Every channel selected: the layer is left as it was (exact), nor fine-tuned."""
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.workflows.gfs.prune import gfs_prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()
    ds = TensorImageDataset(torch.randn(40, 4, 1, 1), torch.arange(40) % 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = gfs_prune(model, ds, ds, GfsOptions(layer_finetune_steps="5it"), batch_size=10,
                    example=ds.tensors[0][:2], fixed_size=5)
    (layer,) = res["layers"]
    assert layer["kept"] == 5 and layer["restored_dense"]
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])  # not folded, and not fine-tuned although 5it were asked
    # the two-layer form with repeats folds re-weighted gates; the old behaviour stays one switch away
    torch.manual_seed(0)
    model2 = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()
    model2.load_state_dict(before)
    gfs_prune(model2, ds, ds, GfsOptions(restore_full=False, layer_finetune_steps="0it"), batch_size=10,
              example=ds.tensors[0][:2], fixed_size=5)
    # fixed size = width, no repeats: uniform alpha, so folding D * alpha = 1 leaves the layer too
    torch.testing.assert_close(model2[2].weight, before["2.weight"])


def test_full_selection_is_restored_not_folded(monkeypatch):
    """With repeats, a layer can select every channel with unequal weights; restore_full keeps it dense."""
    import lth_kernels.workflows.gfs.prune as prune_mod
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.tickets.gfs import GfsLayerResult

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    ds = TensorImageDataset(torch.randn(20, 4, 1, 1), torch.arange(20) % 2)
    alpha = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64)
    monkeypatch.setattr(prune_mod, "select_layer", lambda *a, **k: GfsLayerResult("2", alpha.clone()))
    w = model[2].weight.clone()
    for restore, expected in ((True, w), (False, w * 3 * alpha.float())):
        model[2].weight.data.copy_(w)
        res = prune_mod.gfs_prune(model, ds, ds, GfsOptions(restore_full=restore, layer_finetune_steps="0it"),
                                  batch_size=10, example=ds.tensors[0][:2])
        assert res["layers"][0]["restored_dense"] is restore
        torch.testing.assert_close(model[2].weight, expected)


def test_layer_finetune_fraction_of_an_epoch():
    from lth_kernels.workflows.gfs.prune import layer_finetune_steps

    assert GfsOptions().layer_finetune_steps == "0.1ep" and GfsOptions().finetune_lr == 2.5e-3
    assert layer_finetune_steps("0.1ep", 1280, 128) == "1it"  # 10 batches per epoch
    assert layer_finetune_steps("0.5ep", 1280, 64) == "10it"
    assert layer_finetune_steps("0.01ep", 100, 10) == "1it"  # at least one step
    assert layer_finetune_steps("20it", 1280, 128) == "20it"
    with pytest.raises(HparamsError, match="layer_finetune_steps"):
        GfsOptions(layer_finetune_steps="0.1x")


def test_no_decay_on_bn_and_bias():
    from lth_kernels.workflows.common.structured import no_decay_on_bn_and_bias

    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2, bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=4e-5, nesterov=True, momentum=0.9)
    no_decay_on_bn_and_bias(opt, model)
    groups = {g["weight_decay"]: {id(p) for p in g["params"]} for g in opt.param_groups}
    assert groups[4e-5] == {id(model[0].weight), id(model[2].weight)}
    assert groups[0.0] == {id(model[0].bias), id(model[1].weight), id(model[1].bias)}
    assert all(g["nesterov"] for g in opt.param_groups)


def test_reference_presets_state_their_fine_tune():
    from lth_kernels.training.hparams import presets

    hp = GfsHparams().with_overrides(presets("gfs")["cifar_resnet_20-cifar10"])
    ft = hp.finetune
    assert (ft.lr, ft.lr_schedule, ft.nesterov, ft.label_smoothing) == (0.1, "cosine", True, 0.1)
    assert hp.gfs.finetune_no_decay_bn_bias and hp.gfs.finetune_tail_lr == 5e-4
    mb = GfsHparams().with_overrides(presets("gfs")["mobilenetv2-imagenet"])
    assert mb.model.name == "timm:mobilenetv2_100" and mb.dataset.name == "imagefolder"
    assert mb.finetune.training_steps == "150ep" and mb.gfs.finetune_tail_steps == "10ep"


def test_fits_and_bootstrap():
    import math

    from lth_kernels.workflows.gfs.budget import bootstrap_threshold, fit, mean_curve

    pts = [(m, 5 + 10 * math.log(m)) for m in (100, 200, 400, 800)]
    log_fit, lin, const = fit(pts, "log"), fit(pts, "linear"), fit(pts, "constant")
    assert log_fit["a"] == pytest.approx(5) and log_fit["b"] == pytest.approx(10)
    assert log_fit["aic"] < lin["aic"] < const["aic"]  # the true law wins
    assert const["a"] == pytest.approx(sum(t for _, t in pts) / 4) and const["b"] == 0.0
    # AIC by hand for the constant: n ln(RSS / n) + 2
    rss = sum((t - const["a"]) ** 2 for _, t in pts)
    assert const["aic"] == pytest.approx(4 * math.log(rss / 4) + 2)
    assert fit([(100, 3)], "log") is None and fit([(100, 3)], "constant")["a"] == 3
    a, b = [(0, 0.1), (10, 0.9), (20, 0.9)], [(0, 0.1), (10, 0.5), (20, 0.9)]
    assert mean_curve([a, b]) == [(0, pytest.approx(0.1)), (10, pytest.approx(0.7)), (20, pytest.approx(0.9))]
    assert bootstrap_threshold([a], 0.02, 100) == (10, 10)  # one replicate: the point
    lo, hi = bootstrap_threshold([a, b], 0.02, 200, seed=0)
    assert (lo, hi) == (10, 20)  # all-a resamples give 10, all-b ones 20


def test_budget_fixed_size_replicates_and_report(tmp_path, capsys):
    rc = main(["--root", str(tmp_path), "--budget-study", "--model.name", "mlp_bn_16",
               "--gfs.train_sizes", "100,200", "--gfs.pretrain_steps", "0it,10it", "--gfs.candidates", "4",
               "--gfs.layer_finetune_steps", "0it", "--dataset.batch_size", "50", "--budget.fixed_size", "3",
               "--budget.replicates", "2", "--budget.bootstrap", "50"])
    assert rc == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert all(r["kept"] == 3 for r in summary["rows"])  # grown to exactly n channels
    assert {(r["m"], r["replicate"]) for r in summary["rows"]} == {(m, r) for m in (100, 200) for r in (0, 1)}
    assert set(summary["fits"]) == {"log", "linear", "constant"} and set(summary["intervals"]) == {"100", "200"}
    table = (run_dir / "table.md").read_text()
    assert "95 % bootstrap interval" in table and "AIC" in table and "grown to 3 channels" in table
    assert (run_dir / "m_200_r1" / "pretrain").is_dir()


def test_gate_after_relu6_selects_and_folds_exactly():
    """The reference gates after ReLU6: relu6(s * x) != s * relu6(x), so the gate sits on the activation's
    output and folds into the next layer's input columns (unselected channels: gamma = beta = 0)."""
    from lth_kernels.tickets.gfs import fold_gate_after_act_
    from lth_kernels.workflows.gfs.prune import gate_points

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU6(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[1].weight.mul_(8)  # large pre-activations, so ReLU6 saturates
        model[2].bias.normal_()
    x, y = torch.randn(16, 4, 1, 1), torch.randint(0, 3, (16,))
    plan = gate_points(model, x[:2], ["2"])
    assert plan == {"2": ("3", [("4", 1)])}
    relu = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))
    assert gate_points(relu, x[:2], ["2"]) == {"2": None}  # homogeneous: the BN fold is exact already

    def oracle(alpha):
        with torch.no_grad():
            h = F.relu6(model[2](model[1](x.flatten(1)))) * (6 * alpha).float()
            return model[4](h)

    res = select_layer(model, "2", itertools.repeat((x, y)), num_candidates=10, max_steps=3, gate_at="3")
    torch.testing.assert_close(res.alpha, assert_greedy_steps(res, oracle, y, 6))
    expected = oracle(res.alpha)
    import copy

    old = copy.deepcopy(model)
    fold_gate_after_act_(model, "2", res.alpha, plan["2"][1])
    fold_gate_(old, "2", res.alpha)  # the gate on the BN output: a different function under ReLU6
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected)
        assert not torch.allclose(old(x), expected, atol=1e-3)
    assert int((model[2].weight != 0).sum()) == 3


def test_progress_line_and_percent_accuracies(caplog):
    """Without a terminal the greedy loop announces itself once (no silent minutes); accuracies print in %."""
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.workflows.common.structured import markdown_table
    from lth_kernels.workflows.gfs.prune import gfs_prune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 3)).eval()
    ds = TensorImageDataset(torch.randn(40, 4, 1, 1), torch.arange(40) % 3)
    with caplog.at_level(logging.INFO, logger="lth_kernels"):
        res = gfs_prune(model, ds, ds, GfsOptions(layer_finetune_steps="0it"), batch_size=10,
                        example=ds.tensors[0][:2], fixed_size=2)
    lines = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("gfs: growing 1 layers bottom-up") for m in lines)
    assert any("kept 2/5 channels" in m and "%" in m for m in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lth_kernels"):
        gfs_prune(model, ds, ds, GfsOptions(layer_finetune_steps="0it"), batch_size=10,
                  example=ds.tensors[0][:2], fixed_size=2, progress=False)
    assert not any(r.getMessage().startswith("gfs: growing") for r in caplog.records)
    table = markdown_table([{"acc": 0.975, "n": 0.5}], [("acc", "top-1 %"), ("n", "n")], percent=("acc",))
    assert "| 97.50 | 0.5 |" in table
    assert res["layers"][0]["kept"] == 2
