import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.nn.scored import ScoredConv2d, ScoredLinear, score_layers, scored_layers, unscore_layers
from lth_kernels.tickets import Ticket
from lth_kernels.training import Callback, TrainingHparams, parse_cli, presets
from lth_kernels.workflows.jackpot.hparams import JackpotHparams
from lth_kernels.workflows.jackpot.runner import resolve_weights, run
from lth_kernels.workflows.jackpot.search import (
    classifier_name,
    initial_ticket,
    restricted_swap,
    rho_at,
    run_search,
    top_k_update,
)


def _layer():
    # kept: 1 (0.1), 3 (0.2), 4 (0.7), 6 (0.6); pruned: 0 (0.9), 2 (0.8), 5 (0.3), 7 (0.4).
    # tau = 4th smallest = 0.4 -> R = {0, 2}, D = {1, 3}
    scores = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.7, 0.3, 0.6, 0.4]).reshape(2, 4)
    mask = torch.tensor([0, 1, 0, 1, 1, 0, 1, 0], dtype=torch.bool).reshape(2, 4)
    return scores, mask


def _kept(mask):
    return set(mask.flatten().nonzero().flatten().tolist())


@pytest.mark.parametrize(("rho", "swaps", "kept"), [(1.0, 2, {0, 2, 4, 6}), (0.5, 1, {0, 3, 4, 6}),
                                                    (0.3, 1, {0, 3, 4, 6}), (0.0, 0, {1, 3, 4, 6})])
def test_restricted_swap_hand_built(rho, swaps, kept):
    scores, mask = _layer()
    assert restricted_swap(scores, mask, rho) == swaps
    assert _kept(mask) == kept


def test_restricted_swap_ties_change_nothing_edge_popup_prefers_current():
    scores, mask = _layer()
    scores.view(-1)[4] = 0.4  # kept weight tied with pruned weight 7 at tau: |R| = 2 != |D| = 3
    assert restricted_swap(scores, mask, 1.0) == 0 and _kept(mask) == {1, 3, 4, 6}
    assert top_k_update(scores, mask) == 2 and _kept(mask) == {0, 2, 4, 6}  # tie keeps 4, not 7
    full = torch.ones(2, 4, dtype=torch.bool)
    assert restricted_swap(scores, full, 1.0) == 0 and top_k_update(scores, full) == 0 and bool(full.all())


def test_rho_schedules():
    assert rho_at(0.5, "constant", 0.7) == 0.5
    assert rho_at(1.0, "cosine", 0.0) == 1.0 and abs(rho_at(1.0, "cosine", 0.5) - 0.5) < 1e-12
    assert rho_at(1.0, "poly4", 0.5) == 0.0625 and rho_at(1.0, "poly4", 1.0) == 0.0
    with pytest.raises(ValueError, match="rho_schedule"):
        rho_at(1.0, "step", 0.1)


# ------------------------------------------------------------------------------------------- STE gradient


def test_ste_gradient_linear_equals_dyx_times_w():
    torch.manual_seed(1)
    lin = nn.Linear(13, 7).double()
    mask = torch.rand(7, 13) < 0.3
    (layer,) = score_layers(nn.Sequential(lin), {"0.weight": mask}).values()
    assert isinstance(layer, ScoredLinear) and not lin.weight.requires_grad and not lin.bias.requires_grad
    x, g = torch.randn(5, 3, 13, dtype=torch.float64), torch.randn(5, 3, 7, dtype=torch.float64)
    y = layer(x)
    torch.testing.assert_close(y, F.linear(x, lin.weight * mask, lin.bias))
    (y * g).sum().backward()
    expected = (g.reshape(-1, 7).t() @ x.reshape(-1, 13)) * lin.weight  # (dY^T X) ⊙ W over all entries
    torch.testing.assert_close(layer.scores.grad, expected.float())
    assert bool((layer.scores.grad[~mask] != 0).any())  # pruned entries get a gradient too
    assert lin.weight.grad is None


@pytest.mark.filterwarnings("ignore:Using padding='same'")
@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=1, stride=2),
                                dict(kernel_size=(3, 2), padding="same", bias=False), dict(kernel_size=3, dilation=2)])
def test_ste_gradient_conv_equals_dyx_times_w(kw):
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, **kw).double()
    mask = torch.rand(conv.weight.shape) < 0.4
    model = nn.Sequential(conv)
    score_layers(model, {"0.weight": mask})
    assert isinstance(conv, ScoredConv2d)
    x = torch.randn(2, 3, 9, 8, dtype=torch.float64)
    y = conv(x)
    ref = F.conv2d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding, conv.dilation)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    (y * g).sum().backward()
    same = conv.padding == "same"  # odd total padding is asymmetric: pad explicitly for the reference
    xp, padding = (F.pad(x, conv._reversed_padding_repeated_twice), 0) if same else (x, conv.padding)
    dw = torch.nn.grad.conv2d_weight(xp, conv.weight.shape, g, conv.stride, padding, conv.dilation)
    torch.testing.assert_close(conv.scores.grad, (dw * conv.weight).float())
    # the F.conv2d + STE path against the unfold + matmul path it replaced: outputs and all gradients
    ste_grad = conv.scores.grad.clone()
    conv.scores.grad = None
    xu = x.clone().requires_grad_(True)
    xc = x.clone().requires_grad_(True)
    yu = conv.forward_unfold(xu)
    torch.testing.assert_close(yu, y)
    (yu * g).sum().backward()
    torch.testing.assert_close(conv.scores.grad, ste_grad)
    (conv(xc) * g).sum().backward()
    torch.testing.assert_close(xc.grad, xu.grad)
    masks = unscore_layers(model)
    assert type(conv) is nn.Conv2d and torch.equal(masks["0.weight"], mask) and not hasattr(conv, "scores")


def test_kaiming_score_init_is_edge_popups():
    """Kaiming-uniform scores (a = sqrt(5)), the mask their per-layer top-k |s| at the ticket's kept counts."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = torch.rand(5, 6) < 0.3
    (layer,) = score_layers(model, {"0.weight": mask}, score_init="kaiming",
                            generator=torch.Generator().manual_seed(4)).values()
    expected = torch.empty(5, 6)
    nn.init.kaiming_uniform_(expected, a=5 ** 0.5, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(layer.scores.data, expected)
    bound = 1 / 6 ** 0.5  # gain sqrt(2 / (1 + 5)) * sqrt(3 / fan_in)
    scores = layer.scores.detach()
    assert float(scores.abs().max()) <= bound and float(scores.min()) < 0
    k = int(mask.sum())
    assert int(layer.b_mask.sum()) == k
    assert float(scores.abs()[layer.b_mask].min()) >= float(scores.abs()[~layer.b_mask].max())
    assert top_k_update(layer.scores, layer.b_mask) == 0  # edge-popup ranks |s|: already its top-k
    mag = score_layers(nn.Sequential(nn.Linear(6, 5)), {"0.weight": mask})["0.weight"]
    torch.testing.assert_close(mag.scores.detach(), torch.where(mask, 1.0, 0.99))
    assert torch.equal(mag.b_mask, mask)
    with pytest.raises(ValueError, match="score_init"):
        score_layers(nn.Sequential(nn.Linear(6, 5)), {"0.weight": mask}, score_init="normal")


def test_bn_recalibration_matches_the_batch_statistics():
    from lth_kernels.data.tensor import TensorImageDataset
    from lth_kernels.workflows.jackpot.runner import recalibrate_bn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2)).eval()
    ds = TensorImageDataset(torch.randn(32, 4, 1, 1), torch.arange(32) % 2)
    w = model[1].weight.clone()
    with torch.no_grad():
        model[2].running_mean.fill_(5.0)  # stale statistics, e.g. of the dense network
    assert recalibrate_bn(model, ds, batches=10, batch_size=32, device="cpu") == 1  # one batch: the whole set
    h = model[1](ds.tensors[0].flatten(1)).detach()
    torch.testing.assert_close(model[2].running_mean, h.mean(0))
    torch.testing.assert_close(model[2].running_var, h.var(0))  # unbiased, as BN keeps it
    assert torch.equal(model[1].weight, w) and not model.training and model[2].momentum == 0.1
    assert recalibrate_bn(nn.Sequential(nn.Linear(4, 2)), ds, batches=3, batch_size=8, device="cpu") == 0


def test_score_init_labels_and_validation():
    from lth_kernels.training.hparams import HparamsError
    from lth_kernels.workflows.jackpot.hparams import SearchHparams
    from lth_kernels.workflows.jackpot.runner import search_label

    assert search_label("restricted", "magnitude", "magnitude") == "restricted"
    assert search_label("restricted", "kaiming", "magnitude") == "restricted@kaiming"
    assert search_label("edge_popup", "kaiming", "kaiming") == "edge_popup"
    assert SearchHparams().edge_popup_init == "kaiming" and SearchHparams().score_init == ("magnitude",)
    with pytest.raises(HparamsError, match="score_init"):
        SearchHparams(score_init=("magnitude", "magnitude"))
    with pytest.raises(HparamsError, match="score_init"):
        SearchHparams(score_init=("ones",))


def test_score_layers_rejects_bad_input():
    with pytest.raises(ValueError, match="masks: 'nope.weight'"):
        score_layers(nn.Sequential(nn.Linear(2, 2)), {"nope.weight": torch.ones(2, 2)})
    with pytest.raises(ValueError, match="mask: expected a tensor of the weight's shape"):
        score_layers(nn.Sequential(nn.Linear(2, 2)), {"0.weight": torch.ones(3, 2)})
    with pytest.raises(ValueError, match="grouped"):
        score_layers(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), {"0.weight": torch.ones(4, 2, 3, 3)})


# ------------------------------------------------------------------------------------------- search


class CountChecker(Callback):
    """Asserts after every optimizer step that each layer keeps exactly its initial count."""

    def __init__(self, layers, counts):
        self.layers, self.counts, self.steps = layers, counts, 0

    def on_after_optimizer_step(self, trainer, step):
        for name, layer in self.layers.items():
            assert int(layer.b_mask.sum()) == self.counts[name], (name, step)
        self.steps += 1


@pytest.fixture(scope="module")
def digits():
    from lth_kernels.data import create_dataset

    return create_dataset("digits")


@pytest.mark.parametrize("rule", ["restricted", "edge_popup", "random_swap"])
def test_search_freezes_weights_updates_bn_and_preserves_counts(digits, rule):
    from lth_kernels.models import create_model

    train, test, info = digits
    model = create_model("cifar_resnet_8_4", num_classes=10, in_chans=1, img_size=(8, 8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ticket = initial_ticket(model, 0.8)
    assert classifier_name(model) == "fc.weight" and "fc.weight" not in ticket
    counts = {n: int(m.sum()) for n, m in ticket.items()}
    layers = {}

    class Grab(Callback):
        def on_train_start(self, trainer, step):
            layers.update(scored_layers(trainer.model))

    checker = CountChecker(layers, counts)
    result, swaps, _ = run_search(model, ticket, train, test, TrainingHparams(training_steps="8it", lr=0.1,
                                  lr_schedule="cosine", weight_decay=5e-4, eval_every="0it"),
                                  batch_size=64, rule=rule, rho=0.5, progress=False, callbacks=[Grab(), checker])
    assert checker.steps == 8 and result.step == 8
    assert sum(h["swaps"] for h in swaps.history) + sum(swaps._epoch.values()) > 0
    masks = unscore_layers(model)
    assert {n: int(m.sum()) for n, m in masks.items()} == counts
    after = model.state_dict()
    assert set(after) == set(before)
    for k, v in before.items():
        if "running" in k or "num_batches_tracked" in k:
            continue
        assert torch.equal(after[k], v), f"{k} changed during the search"  # weights, biases, BN affine
    assert not torch.equal(after["bn.running_mean"], before["bn.running_mean"])  # BN statistics did update


# ------------------------------------------------------------------------------------------- workflow


def _hp(**search):
    return JackpotHparams().with_overrides({
        "pretrain.training_steps": "8ep", "search_training.training_steps": "4ep",
        "search.baselines": [], "search.criteria": ["magnitude", "random"], **search})


def test_trained_weights_beat_random_weights_and_outputs(tmp_path, digits):
    from lth_kernels.models import create_model, load_weights

    trained = run(_hp(), tmp_path, device="cpu", progress=False)
    random = run(_hp(**{"source.random_weights": True}), tmp_path, device="cpu", progress=False)
    t, r = trained["sparsities"]["0.9"], random["sparsities"]["0.9"]
    assert random["source"] == "random" and trained["source"].startswith("trained:")
    assert t["rules"]["restricted"]["acc"] > r["rules"]["restricted"]["acc"] + 0.02
    assert t["rules"]["restricted"]["acc"] > t["magnitude_acc"]["acc"]
    assert len(t["rules"]["restricted"]["swaps"]) == 4 and 0 < t["overlap"]["magnitude"] < 1

    # the saved ticket + weights reproduce the searched network's accuracy
    run_dir = tmp_path / f"jackpot-{_hp().hashname()}"
    rd = run_dir / "sparsity_0.9" / "restricted"
    ticket = Ticket.load(rd / "mask.safetensors")
    init = Ticket.load(run_dir / "sparsity_0.9" / "magnitude_mask.safetensors")
    assert {n: int(m.sum()) for n, m in ticket.items()} == {n: int(m.sum()) for n, m in init.items()}
    assert abs(ticket.sparsity - 0.9) < 1e-3 and ticket.metadata["strategy"] == "jackpot_restricted"
    train, test, info = digits
    model = create_model("lenet_300_100", num_classes=10, in_chans=1, img_size=(8, 8))
    load_weights(model, rd / "weights.safetensors")
    with torch.no_grad():
        for name, m in ticket.items():
            model.get_parameter(name).mul_(m)
        x, y = test.tensors
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert acc == pytest.approx(t["rules"]["restricted"]["acc"], abs=1e-9)
    assert (run_dir / "plots" / "jackpot.png").stat().st_size > 0 and "restricted" in (run_dir / "table.md").read_text()
    assert json.loads((run_dir / "summary.json").read_text())["dense_acc"] == trained["dense_acc"]

    # rerun: every stage is done, same numbers; a project run directory is a weights source
    assert run(_hp(), tmp_path, device="cpu", progress=False)["sparsities"]["0.9"]["rules"]["restricted"]["acc"] \
        == t["rules"]["restricted"]["acc"]
    assert resolve_weights(run_dir / "pretrain").name.startswith("step_")


def test_both_score_inits_in_one_run(tmp_path):
    hp = JackpotHparams().with_overrides({
        "pretrain.training_steps": "2ep", "search_training.training_steps": "2ep", "search.criteria": ["magnitude"],
        "search.baselines": ["edge_popup"], "search.score_init": ["magnitude", "kaiming"]})
    e = run(hp, tmp_path, device="cpu", progress=False)["sparsities"]["0.9"]
    assert list(e["rules"]) == ["restricted", "restricted@kaiming", "edge_popup"]
    assert [r["score_init"] for r in e["rules"].values()] == ["magnitude", "kaiming", "kaiming"]
    assert e["rules"]["restricted"]["overlap_with_magnitude_init"] > e["rules"]["restricted@kaiming"][
        "overlap_with_magnitude_init"]
    assert set(e["magnitude_acc"]) == {"acc", "acc_no_recalibration", "recalibration_batches"}
    table = (tmp_path / f"jackpot-{hp.hashname()}" / "table.md").read_text()
    assert "restricted@kaiming" in table and "epochs to 99 % of best" in table and "BN running statistics" in table


def test_cli_presets_and_flags(tmp_path):
    for name in presets("jackpot"):
        hp, _ = parse_cli(JackpotHparams, ["--preset", name], workflow="jackpot")
        assert hp.search.sparsities
    hp, _ = parse_cli(JackpotHparams, ["--preset", "cifar_vgg_19-cifar10"], workflow="jackpot")
    assert hp.search.sparsities == ("0.9", "0.95") and hp.model.name == "cifar_vgg_19"
    with pytest.raises(SystemExit):
        parse_cli(JackpotHparams, ["--search.sparsities", "0.9,1.5"], workflow="jackpot")
    from lth_kernels.workflows.jackpot.cli import main
    assert main(["--preset", "resnet50-imagenet", "--root", str(tmp_path), "--dataset.data_dir",
                 str(tmp_path / "none")]) == 2  # missing data: a one-line error, no traceback
    with pytest.raises(FileNotFoundError, match="--source.weights"):
        resolve_weights(tmp_path / "missing")


def test_reference_cifar_networks():
    """ResNet-32 with 32/64/128 filters and option-A shortcuts; VGG-19 with a 1x1-conv classifier."""
    from lth_kernels.models import create_model
    from lth_kernels.models.jackpot_cifar import BlockA
    from lth_kernels.nn.channel_prune import count_parameters

    r32 = create_model("jackpot_resnet_32", num_classes=10, in_chans=3, img_size=32)
    convs = [m for m in r32.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 30 + 1 and all(c.kernel_size == (3, 3) for c in convs[:-1])  # no 1x1 shortcuts
    assert sorted({c.out_channels for c in convs[:-1]}) == [32, 64, 128]
    # 3x3 convs (no bias) + BN (2 per channel) + the 1x1-conv classifier with bias, counted by hand
    by_hand = 3 * 32 * 9 + 2 * 32 + sum(5 * (c * c * 9 * 2 + 4 * c) for c in (32, 64, 128)) \
        - (64 * 64 * 9 - 32 * 64 * 9) - (128 * 128 * 9 - 64 * 128 * 9) + 128 * 10 + 10
    assert count_parameters(r32) == by_hand == 1849898
    block = BlockA(4, 8, stride=2)
    x = torch.randn(2, 4, 6, 6)
    sc = block.shortcut(x)  # subsample, then two zero channels either side
    assert sc.shape == (2, 8, 3, 3) and torch.equal(sc[:, 2:6], x[:, :, ::2, ::2])
    assert not sc[:, :2].any() and not sc[:, 6:].any()
    assert classifier_name(r32) == "fc.weight" and "fc.weight" not in search_names_of(r32)
    vgg = create_model("jackpot_vgg_19", num_classes=100, in_chans=3, img_size=32)
    assert count_parameters(vgg) == 20081188 and isinstance(vgg.classifier, nn.Conv2d)
    assert sum(isinstance(m, nn.MaxPool2d) for m in vgg.modules()) == 5
    assert vgg(torch.randn(1, 3, 32, 32)).shape == (1, 100)
    for name in ("jackpot_resnet_32-cifar100", "jackpot_vgg_19-cifar100", "jackpot_resnet_32-cifar10"):
        hp, _ = parse_cli(JackpotHparams, ["--preset", name], workflow="jackpot")
        assert hp.model.name == name.split("-")[0] and hp.dataset.name == name.split("-")[1]


def search_names_of(model):
    from lth_kernels.workflows.jackpot.search import search_names

    return search_names(model)
