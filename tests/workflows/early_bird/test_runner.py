"""Early-bird: masks, distances, the detector's queue condition, the callback, and the workflow end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch
from torch import nn

from lth_kernels.models import create_model
from lth_kernels.tickets.channels import (
    EarlyBirdDetector,
    bn_layers,
    bn_scale_masks,
    distance_matrix,
    magnitude_masks,
    mask_distance,
    slimming_penalty,
)
from lth_kernels.training.hparams import HparamsError
from lth_kernels.workflows.early_bird.cli import main
from lth_kernels.workflows.early_bird.hparams import EarlyBirdHparams, EarlyBirdOptions
from lth_kernels.workflows.early_bird.runner import run


def _queue_condition(history, queue, eps):
    """The reference rule written out: the last ``queue`` masks exist and the newest is within ``eps`` of
    every other one."""
    if len(history) < queue:
        return False
    window = history[-queue:]
    newest = window[-1]
    return all(float((m != newest).sum()) / newest.numel() <= eps for m in window[:-1])


@pytest.mark.parametrize("seed", range(6))
def test_detector_fires_exactly_when_queue_condition_holds(seed):
    rnd = random.Random(seed)
    n = 40
    mask = torch.tensor([rnd.random() < 0.5 for _ in range(n)])
    det = EarlyBirdDetector(queue=5, epsilon=0.1)
    history, fired_any = [], False
    for _ in range(60):
        flips = rnd.choice([0, 0, 1, 2, 3, 4, 6, 10])  # 4 flips = 0.1 exactly (on the boundary)
        mask = mask.clone()
        for i in rnd.sample(range(n), flips):
            mask[i] = ~mask[i]
        history.append(mask)
        got = det.update(mask)
        assert got == _queue_condition(history, 5, 0.1)
        fired_any |= got
    assert fired_any


def test_detector_needs_a_full_queue_and_boundary():
    det = EarlyBirdDetector(queue=3, epsilon=0.25)
    same = torch.tensor([True, False, True, False])
    assert det.update(same) is False
    assert det.update(same) is False  # only two masks: the distance slots still hold 1
    assert det.distances[1] == 1.0
    assert det.update(same) is True
    one_flip = torch.tensor([True, False, True, True])  # distance 0.25 to the others: <= epsilon fires
    assert det.update(one_flip) is True
    two_flips = torch.tensor([False, False, True, True])  # 0.5 to one of the queue
    assert det.update(two_flips) is False
    state = det.state_dict()
    other = EarlyBirdDetector(queue=3, epsilon=0.25)
    other.load_state_dict(state)
    assert other.update(two_flips) == det.update(two_flips)


def test_distances_match_hand_computation():
    a = {"l1": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "l2": torch.tensor([1, 0], dtype=torch.bool)}
    b = {"l1": torch.tensor([1, 0, 0, 1], dtype=torch.bool), "l2": torch.tensor([1, 1], dtype=torch.bool)}
    # 3 of 6 entries differ: 1 - 3/6
    assert mask_distance(a, b) == pytest.approx(0.5)
    c = {"l1": torch.tensor([1, 1, 0, 0], dtype=torch.bool), "l2": torch.tensor([0, 0], dtype=torch.bool)}
    mat = distance_matrix([a, b, c])
    expected = torch.tensor([[0, 3, 1], [3, 0, 4], [1, 4, 0]], dtype=torch.float64) / 6
    torch.testing.assert_close(mat, expected)
    with pytest.raises(ValueError, match="different layers"):
        mask_distance(a, {"x": a["l1"], "l2": a["l2"]})


def test_bn_scale_masks_global_threshold():
    model = create_model("mlp_bn_4_2", num_classes=3, in_chans=1, img_size=2)
    with torch.no_grad():
        model.bns[0].weight.copy_(torch.tensor([0.5, -0.1, 0.9, 0.3]))
        model.bns[1].weight.copy_(torch.tensor([0.2, -0.7]))
    # |gamma| sorted: .1 .2 .3 .5 .7 .9; ratio 0.5 -> thr = sorted[3] = .5; keep |gamma| > .5
    t = bn_scale_masks(model, 0.5)
    assert list(t) == ["bns.0.weight", "bns.1.weight"]
    assert t["bns.0.weight"].tolist() == [False, False, True, False]
    assert t["bns.1.weight"].tolist() == [False, True]
    assert t.metadata["structure"] == "channel"
    assert bn_scale_masks(model, 0.0)["bns.0.weight"].tolist() == [True, False, True, True]  # > the minimum
    assert [n for n, _ in bn_layers(model, exclude=("bns.1",))] == ["bns.0"]
    with pytest.raises(ValueError, match="ratio"):
        bn_scale_masks(model, 1.0)
    with pytest.raises(ValueError, match="no affine BatchNorm"):
        bn_scale_masks(create_model("mlp_4", num_classes=3, in_chans=1, img_size=2), 0.5)


def test_slimming_penalty_gradient_is_s_sign_gamma():
    model = create_model("mlp_bn_4", num_classes=3, in_chans=1, img_size=2)
    with torch.no_grad():
        model.bns[0].weight.copy_(torch.tensor([0.5, -0.1, 0.0, 0.3]))
    slimming_penalty(bn_layers(model), 1e-2).backward()
    assert model.bns[0].weight.grad.tolist() == pytest.approx([1e-2, -1e-2, 0.0, 1e-2])


def test_unstructured_masks_are_global_magnitude():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -6.0, 2.0], [5.0, 0.5, -3.0]]))
        model[1].weight.copy_(torch.tensor([[4.0, -0.1], [7.0, 8.0]]))
    t = magnitude_masks(model, 0.5)  # 10 weights, the 5 smallest |w| go: .1 .5 1 2 3
    assert t["0.weight"].tolist() == [[False, True, False], [True, False, False]]
    assert t["1.weight"].tolist() == [[True, False], [True, True]]


def test_hparams_validation():
    with pytest.raises(HparamsError, match="ratios"):
        EarlyBirdOptions(ratios=("0.3", "1.2"))
    with pytest.raises(HparamsError, match="retrain"):
        EarlyBirdOptions(retrain=("eb_train", "nope"))


def _tiny(**eb):
    return EarlyBirdHparams().with_overrides({
        "model.name": "mlp_bn_16", "training.training_steps": "8ep", "training.milestone_steps": "6ep",
        "dataset.batch_size": 128, "early_bird.epsilon": 0.3, "early_bird.queue": 3, **eb})


def test_workflow_end_to_end_channel(tmp_path, capsys):
    hp = _tiny()
    summary = run(hp, tmp_path)
    out = tmp_path / f"early-bird-{hp.hashname()}"
    found = json.loads((out / "search" / "early_bird.json").read_text())
    assert set(found["epochs"]) == {"30", "50", "70"}
    assert (out / "plots" / "mask_distance.png").stat().st_size > 0
    mat = found["history"]["distances"]["50"]
    assert len(mat) == len(found["history"]["epochs"]) == 8 and all(mat[i][i] == 0 for i in range(8))
    methods = [r["method"] for r in summary["rows"]]
    assert methods[0] == "dense (full training)"
    for r in summary["rows"][1:]:
        if r["eb_epoch"] is None or not r["method"].startswith("EB train"):
            continue
        assert r["eb_epoch"] >= 2  # a queue of 3 needs epochs 0, 1, 2
        d = out / f"eb_{r['ratio']}"
        assert (d / "ticket.safetensors").exists() and (d / "channels.json").exists()
        assert r["params"] < summary["rows"][0]["params"] and 0 <= r["test_acc"] <= 1
    assert "EB train" in (out / "table.md").read_text()
    # Table 2 baselines from the fully trained dense net, with their training FLOPs (dense training included)
    dense = summary["rows"][0]
    for ratio in ("30", "50", "70"):
        lt = next(r for r in summary["rows"] if r["method"] == "LT (one-shot magnitude)" and r["ratio"] == ratio)
        ns = next(r for r in summary["rows"] if r["method"] == "network slimming" and r["ratio"] == ratio)
        assert lt["train_flops"] == 2 * dense["train_flops"]  # dense training + a masked (dense-cost) retrain
        assert dense["train_flops"] < ns["train_flops"] < 2 * dense["train_flops"] and ns["params"] < dense["params"]
        assert 0 <= lt["test_acc"] <= 1 and 0 <= ns["test_acc"] <= 1
    from lth_kernels.models import create_model as _cm
    from lth_kernels.training.checkpoint import load_step
    from lth_kernels.workflows.early_bird.search import magnitude_masks as _mm

    trained = _cm("mlp_bn_16", num_classes=10, in_chans=1, img_size=(8, 8))
    total = summary["found"]["total_steps"]
    load_step(out / "search", total, trained)
    lt_final = _cm("mlp_bn_16", num_classes=10, in_chans=1, img_size=(8, 8))
    load_step(out / "eb_50" / "lt_oneshot", total, lt_final)
    for name, m in _mm(trained, 0.5).items():  # the one-shot magnitude mask of the trained net stayed applied
        assert torch.all(lt_final.get_parameter(name)[~m] == 0)
    assert "network slimming" in (out / "table.md").read_text()
    # A rerun resumes everything from disk (nothing retrained) and gives the same table.
    again = run(hp, tmp_path)
    assert [r.get("test_acc") for r in again["rows"]] == [r.get("test_acc") for r in summary["rows"]]


def test_workflow_unstructured_masked_cli(tmp_path, capsys):
    rc = main(["--root", str(tmp_path), "--model.name", "mlp_bn_16", "--training.training_steps", "5ep",
               "--early_bird.structure", "unstructured", "--early_bird.ratios", "0.5", "--early_bird.queue", "2",
               "--early_bird.epsilon", "0.5", "--early_bird.retrain", "eb_train", "--early_bird.full_dense",
               "false"])
    assert rc == 0
    (run_dir,) = tmp_path.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    row = summary["rows"][1]
    assert row["method"] == "EB train" and row["eb_epoch"] == 1
    assert summary["found"]["stopped_at"] < summary["found"]["total_steps"]  # the search stopped early
    # The unstructured ticket was kept: its pruned weights are zero in the retrained model.
    from safetensors.torch import load_file

    from lth_kernels.tickets import Ticket

    ticket = Ticket.load(run_dir / "eb_50" / "ticket.safetensors")

    final = sorted((run_dir / "eb_50" / "eb_train").glob("step_*.safetensors"))[-1]
    weights = load_file(str(final))
    w = weights["fc_layers.0.weight"]
    assert torch.all(w[~ticket["fc_layers.0.weight"]] == 0)
    assert "EB train" in capsys.readouterr().out


def test_bn_init_options_and_presets():
    from lth_kernels.data import create_dataset
    from lth_kernels.training.hparams import presets
    from lth_kernels.workflows.common.structured import build_model
    from lth_kernels.workflows.early_bird.hparams import EarlyBirdModelHparams

    info = create_dataset("digits")[2]
    half = build_model(EarlyBirdModelHparams(name="mlp_bn_16", bn_init="0.5"), info, 0)
    (bn,) = [m for _, m in bn_layers(half)]
    assert torch.equal(bn.weight, torch.full((16,), 0.5)) and not bn.bias.any()
    ones = build_model(EarlyBirdModelHparams(name="mlp_bn_16", bn_init="ones"), info, 0)
    assert torch.equal(bn_layers(ones)[0][1].weight, torch.ones(16))
    uni = build_model(EarlyBirdModelHparams(name="mlp_bn_16", bn_init="uniform"), info, 0)
    uni = bn_layers(uni)[0][1].weight.detach()
    assert 0 <= float(uni.min()) < float(uni.max()) < 1
    own = build_model(EarlyBirdModelHparams(name="mlp_bn_16", bn_init="model"), info, 0)
    torch.manual_seed(0)  # the seeding build_model does
    ref = create_model("mlp_bn_16", num_classes=10, in_chans=1, img_size=(8, 8))
    assert torch.equal(bn_layers(own)[0][1].weight, bn_layers(ref)[0][1].weight)  # open_lth's U[0, 1) draw
    assert EarlyBirdHparams().model.bn_init == "0.5"
    for name, overrides in presets("early-bird").items():
        assert EarlyBirdHparams().with_overrides(overrides).model.bn_init == "0.5", name


def test_physical_mode_keeps_residual_tied_channels_zero():
    """A channel one residual branch masks but the group keeps survives in the narrow model, zeroed: it must
    stay zero while retraining (the mask callback stays on)."""
    from lth_kernels.data import create_dataset
    from lth_kernels.nn.channel_prune import channel_param_masks, prune_channels
    from lth_kernels.training.hparams import TrainingHparams
    from lth_kernels.training.trainer import Trainer
    from lth_kernels.workflows.common.structured import ParamMaskCallback
    from lth_kernels.workflows.early_bird.search import zeroed_in_narrow

    torch.manual_seed(0)
    model = create_model("cifar_resnet_8_4", num_classes=10, in_chans=1, img_size=(8, 8))
    masks = {name: torch.ones(m.num_features, dtype=torch.bool) for name, m in bn_layers(model)}
    masks["blocks.0.bn2"][1] = False  # the residual stream (bn, blocks.0.bn2) keeps channel 1 through bn
    masks["blocks.0.bn1"][2] = False  # an inner channel: removed physically
    narrow, record = prune_channels(model, masks, torch.randn(2, 1, 8, 8))
    assert record.after["blocks.0.bn1"] == 3 and record.after["blocks.0.bn2"] == 4
    tied = zeroed_in_narrow(masks, record)
    assert set(tied) == {"blocks.0.bn2"} and tied["blocks.0.bn2"].tolist() == [True, False, True, True]
    bn2 = narrow.get_submodule("blocks.0.bn2")
    assert float(bn2.weight.detach()[1]) == 0.0 and float(bn2.bias.detach()[1]) == 0.0
    train, test, _ = create_dataset("digits")
    cb = ParamMaskCallback(narrow, channel_param_masks(narrow, tied))
    Trainer(narrow, train, test, TrainingHparams(training_steps="5it", lr=0.1, weight_decay=1e-4, eval_every="0it"),
            batch_size=32, callbacks=[cb], progress=False, eval_at_start=False).train()
    assert float(bn2.weight.detach()[1]) == 0.0 and float(bn2.bias.detach()[1]) == 0.0
    assert bool((bn2.weight[[0, 2, 3]] != 0).all())
