"""SNIP, GraSP and SynFlow against independent hand computations, plus densities and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lth_kernels.tickets import Ticket, prunable_parameters, prune
from tests.tickets._models import CNN, MLP, FakeMaskedLinear, OnceDiffMaskedLinear, classification_batches


def _expected_keep(scores: dict[str, torch.Tensor], alive: dict[str, torch.Tensor], fraction: float):
    """Global open_lth rule over alive entries, computed independently (sorting in float64)."""
    vec = torch.cat([scores[n][alive[n]].double().flatten() for n in scores])
    n = math.ceil(fraction * vec.numel())
    thr = vec.sort().values[n - 1]
    return {k: alive[k] & (scores[k].double() > thr) for k in scores}


def test_snip_hand_case_differs_from_magnitude():
    # out = w1*x1 + w2*x2 with |w1| > |w2| but x2 >> x1: |w*g| ranks w2 first, |w| ranks w1 first.
    layer = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 0.5]]))
    model = nn.Sequential(layer)
    data = [(torch.tensor([[1.0, 10.0]]), torch.tensor([[0.0]]))]
    snip = prune(model, "snip", 0.5, data=data, loss_fn=F.mse_loss)
    mag = prune(model, "magnitude", 0.5)
    assert snip["0.weight"].tolist() == [[False, True]]
    assert mag["0.weight"].tolist() == [[True, False]]
    assert layer.weight.grad is None  # the caller's model is left alone


def test_snip_matches_independent_scores():
    torch.manual_seed(0)
    model = MLP()
    data = classification_batches(n_batches=2)
    current = prune(model, "magnitude", 0.3)
    t = prune(model, "snip", 0.4, current=current, data=data, loss_fn=F.cross_entropy)
    # independent: the masked network's loss summed over batches, |w * dL/dw|
    ref = MLP()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        for n, p in ref.named_parameters():
            if n in current:
                p.mul_(current[n])
    for x, y in data:
        F.cross_entropy(ref(x), y).backward()
    names = list(prunable_parameters(model))
    params = dict(ref.named_parameters())
    scores = {n: (params[n].grad * params[n]).abs().detach() for n in names}
    expected = _expected_keep(scores, {n: current[n] for n in names}, 0.4)
    for n in names:
        assert torch.equal(t[n], expected[n]), n
    assert torch.equal(t["fc.weight"], current["fc.weight"])
    assert t.metadata["level"] == "2" and t.metadata["strategy"] == "snip"


@pytest.mark.parametrize("T,num_batches,pruned", [(200.0, None, False), (1.0, 1, True), (0.5, None, True)])
def test_grasp_matches_hessian_gradient_product(T, num_batches, pruned):
    torch.manual_seed(0)
    # float64 end to end, so the ranking can be compared exactly with the explicit Hessian
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    data = [(x.double(), y) for x, y in classification_batches(n_batches=2, batch=8, shape=(4,), classes=3)]
    current = prune(model, "random", 0.3, generator=torch.Generator().manual_seed(0), use_default_exclude=False) \
        if pruned else None
    t = prune(model, "grasp", 0.5, current=current, data=data, loss_fn=F.cross_entropy, use_default_exclude=False,
              temperature=T, num_batches=num_batches)
    # independent: flatten both weights (the masked network's), H from torch.autograd.functional.hessian
    alive = {k: current[k] if pruned else torch.ones_like(m.weight, dtype=torch.bool)
             for k, m in (("0.weight", model[0]), ("2.weight", model[2]))}
    w0, w1 = model[0].weight.detach() * alive["0.weight"], model[2].weight.detach() * alive["2.weight"]
    b0, b1 = model[0].bias.detach(), model[2].bias.detach()
    used = data[:num_batches] if num_batches else data

    def loss(flat):
        a, b = flat[:20].view(5, 4), flat[20:].view(3, 5)
        return sum(F.cross_entropy(F.linear(torch.tanh(F.linear(x, a, b0)), b, b1) / T, y) for x, y in used)

    flat = torch.cat([w0.flatten(), w1.flatten()]).requires_grad_(True)
    m = torch.cat([alive["0.weight"].flatten(), alive["2.weight"].flatten()]).double()
    g = torch.autograd.grad(loss(flat), flat)[0] * m  # the masked network's gradient
    H = torch.autograd.functional.hessian(loss, flat.detach())
    keep_score = flat.detach() * (H @ g)  # -S of the paper: remove the lowest
    scores = {"0.weight": keep_score[:20].view(5, 4), "2.weight": keep_score[20:].view(3, 5)}
    expected = _expected_keep(scores, alive, 0.5)
    for k in expected:
        assert torch.equal(t[k], expected[k]), k
    remaining = sum(int(a.sum()) for a in alive.values())
    assert t.num_kept == remaining - math.ceil(0.5 * remaining)
    mag = prune(model, "magnitude", 0.5, current=current, use_default_exclude=False)
    assert not t.equal(mag)


def _synflow_scores_reference(weights):
    """|w * dR/dw| with R = 1^T |W_L| ... |W_1| 1 for a bias-free ReLU MLP (ReLU is the identity on >= 0)."""
    ws = [w.detach().double().abs().requires_grad_(True) for w in weights]
    v = torch.ones(ws[0].shape[1], dtype=torch.float64)
    for w in ws:
        v = w @ v
    v.sum().backward()
    return [(w.grad * w).abs().detach() for w in ws]


def test_synflow_one_shot_matches_reference():
    torch.manual_seed(0)
    model = MLP(d_in=12, hidden=(10, 8), d_out=4, bias=False)
    t = prune(model, "synflow", 0.6, input_shape=(12,), iterations=1, use_default_exclude=False)
    names = ["layers.0.weight", "layers.1.weight", "fc.weight"]
    ref = _synflow_scores_reference([model.layers[0].weight, model.layers[1].weight, model.fc.weight])
    scores = dict(zip(names, ref))
    expected = _expected_keep(scores, {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}, 0.6)
    for n in names:
        assert torch.equal(t[n], expected[n]), n
    assert t.metadata["strategy"] == "synflow"


@pytest.mark.parametrize("scope", ["global", "layerwise"])
def test_synflow_iterative_density(scope):
    torch.manual_seed(0)
    model = CNN()
    data = classification_batches(n_batches=1, batch=2, shape=(3, 8, 8), classes=4)
    t = prune(model, "synflow", 0.9, data=data, scope=scope, iterations=20, use_default_exclude=False)
    names = list(prunable_parameters(model))
    total = sum(t[n].numel() for n in names)
    if scope == "global":
        assert t.num_kept == total - math.ceil(0.9 * total)
    else:
        for n in names:
            assert int(t[n].sum()) == t[n].numel() - math.ceil(0.9 * t[n].numel())
    one = prune(model, "synflow", 0.9, data=data, scope=scope, iterations=1, use_default_exclude=False)
    assert one.num_kept == t.num_kept
    # the model's BN statistics and weights were not touched by the abs() of the scoring copy
    assert bool((model.bn1.running_mean == 0).all()) and bool((model.conv1.weight < 0).any())


def test_synflow_iterative_avoids_layer_collapse_better_than_magnitude():
    # A wide layer of small weights next to narrow layers of large ones: global magnitude at 99 % empties
    # the wide layer (layer collapse); iterative SynFlow keeps every layer connected (the paper's claim).
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256, bias=False), nn.ReLU(), nn.Linear(256, 8, bias=False))
    with torch.no_grad():
        model[0].weight.mul_(0.01)
    mag = prune(model, "magnitude", 0.97, use_default_exclude=False)
    syn = prune(model, "synflow", 0.97, input_shape=(64,), iterations=100, use_default_exclude=False)
    assert int(mag["0.weight"].sum()) == 0
    assert int(syn["0.weight"].sum()) > 0 and int(syn["2.weight"].sum()) > 0
    assert syn.num_kept == mag.num_kept


def test_prune_at_init_with_masked_layers_and_structures():
    torch.manual_seed(0)
    model = MLP()
    model.layers[0] = FakeMaskedLinear(20, 30)
    model.layers[0].set_mask(torch.rand(30, 20) > 0.5)
    data = classification_batches()
    pre = Ticket.from_model(model)
    for strategy in ("snip", "grasp", "synflow"):
        t = prune(model, strategy, 0.5, data=data, loss_fn=F.cross_entropy, **({"iterations": 5}
                  if strategy == "synflow" else {}))
        assert not bool((t["layers.0.weight"] & ~pre["layers.0.weight"]).any()), strategy
        b = prune(model, strategy, 0.5, structure="block4", data=data, loss_fn=F.cross_entropy)
        assert b.density < pre.density
        nm = prune(model, strategy, structure="2:4", data=data, loss_fn=F.cross_entropy)
        groups = nm["layers.1.weight"][:, :28].reshape(16, 7, 4)  # (16, 30): 7 full groups + one of 2
        assert bool((groups.sum(-1) == 2).all()) and bool(nm["layers.1.weight"][:, 28:].all()), strategy


def test_bad_inputs():
    with pytest.raises(ValueError, match="data: strategy 'snip' needs"):
        prune(MLP(), "snip", 0.5, loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="loss_fn: strategy 'grasp' needs"):
        prune(MLP(), "grasp", 0.5, data=classification_batches())
    with pytest.raises(ValueError, match="synflow needs the input shape"):
        prune(MLP(), "synflow", 0.5)
    with pytest.raises(ValueError, match="input_shape: "):
        prune(MLP(), "synflow", 0.5, input_shape=(0, 3))
    with pytest.raises(ValueError, match="iterations: "):
        prune(MLP(), "synflow", 0.5, input_shape=(20,), iterations=0)
    with pytest.raises(ValueError, match="data: every batch must be an"):
        prune(MLP(), "snip", 0.5, data=[torch.ones(2, 20)], loss_fn=F.cross_entropy)
    with pytest.raises(ValueError, match="temperature: "):
        prune(MLP(), "grasp", 0.5, data=classification_batches(), loss_fn=F.cross_entropy, temperature=0)


@pytest.mark.gpu
@pytest.mark.parametrize("strategy,structure", [("magnitude", "unstructured"), ("magnitude", "block16"),
                                                ("magnitude", "2:4"), ("random", "unstructured"),
                                                ("snip", "unstructured"), ("synflow", "unstructured")])
def test_cuda_model_gives_the_cpu_ticket(strategy, structure):
    torch.manual_seed(0)
    model = MLP(d_in=256, hidden=(512, 384), d_out=10)
    data = classification_batches(n_batches=2, batch=32, shape=(256,), classes=10)
    kw = dict(structure=structure, data=data, loss_fn=F.cross_entropy, generator=torch.Generator().manual_seed(0))
    kw = {k: v for k, v in kw.items() if strategy in ("snip",) or k not in ("data", "loss_fn")}
    if strategy == "synflow":
        kw.update(input_shape=(256,), iterations=10)
    fraction = None if structure == "2:4" else 0.7
    cpu = prune(model, strategy, fraction, **kw)
    kw["generator"] = torch.Generator().manual_seed(0)
    gpu = prune(model.cuda(), strategy, fraction, **kw)
    assert all(m.device.type == "cpu" for m in gpu.values())
    # gradient-based scores may differ in the last bits between devices: allow a few swaps at the threshold
    assert cpu.distance(gpu) <= (0.0 if strategy in ("magnitude", "random") else 1e-3)
    assert cpu.num_kept == gpu.num_kept


def test_scoring_copy_runs_masked_layers_densely():
    # GraSP differentiates twice; a masked layer whose op supports one backward only (here the default-excluded
    # output layer) must be run as its plain torch base class in the scoring copy.
    torch.manual_seed(0)
    model = MLP()
    model.fc = OnceDiffMaskedLinear(16, 5)
    model.fc.set_mask(torch.rand(5, 16) > 0.5)
    data = classification_batches()
    with pytest.raises(RuntimeError):  # the premise: double backward through it fails
        x, y = data[0]
        w = [p for p in model.parameters()]
        g = torch.autograd.grad(F.cross_entropy(model(x), y), w, create_graph=True)
        sum(gi.sum() for gi in g).backward()
    t = prune(model, "grasp", 0.5, data=data, loss_fn=F.cross_entropy)
    assert torch.equal(t["fc.weight"], model.fc.mask) and t.density < 1.0
    assert type(model.fc) is OnceDiffMaskedLinear  # the caller's model keeps its layers


# ------------------------------------------------------------------------------------ options and data


def _bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))


def _data(n_batches=3, batch=10, d=6, classes=4):
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(batch, d, generator=g) * (1 + i), torch.randint(0, classes, (batch,), generator=g))
            for i in range(n_batches)]


def _prune(strategy, model, data, **kw):
    return prune(model, strategy, 0.5, data=data, loss_fn=F.cross_entropy, use_default_exclude=False, **kw)


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
def test_num_batches_uses_the_first_batches_only(strategy):
    model, data = _bn_net(), _data()
    one = _prune(strategy, model, data, num_batches=1)
    assert one.equal(_prune(strategy, model, data[:1]))
    two = _prune(strategy, model, data, num_batches=2)
    assert two.equal(_prune(strategy, model, data[:2]))
    assert _prune(strategy, model, data).equal(_prune(strategy, model, data, num_batches=None))
    assert not one.equal(_prune(strategy, model, data))


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
def test_train_mode_decides_the_batch_norm_statistics(strategy):
    model, data = _bn_net(), _data()
    model.eval()
    train = _prune(strategy, model, data)  # default: batch statistics, as in the papers
    assert train.equal(_prune(strategy, model, data, train_mode=True))
    evaluated = _prune(strategy, model, data, train_mode=False)
    assert not train.equal(evaluated)
    assert not model.training and int(model[1].num_batches_tracked) == 0  # the caller's model is untouched


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
def test_a_weight_outside_the_graph_scores_zero(strategy):
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(6, 4), nn.Linear(6, 4)

        def forward(self, x):
            return self.used(x)

    torch.manual_seed(0)
    t = _prune(strategy, Unused(), _data(n_batches=1))
    spare = t["spare.weight"]
    if strategy == "snip":  # |w g| >= 0: the spare layer's zeros go first
        assert t.num_kept == 24 and not spare.any() and t["used.weight"].all()
    else:  # signed scores: the spare layer's equal zeros go or stay together
        assert spare.all() or not spare.any()


def test_labels_need_not_be_tensors():
    model, data = _bn_net(), _data(n_batches=1)
    listed = [(x, y.tolist()) for x, y in data]
    loss = lambda out, y: F.cross_entropy(out, torch.as_tensor(y))
    a = prune(model, "snip", 0.5, data=listed, loss_fn=loss, use_default_exclude=False)
    assert a.equal(_prune("snip", model, data))


@pytest.mark.parametrize("strategy", ["snip", "grasp"])
@pytest.mark.parametrize("bad", [0, -1, True, "2", 1.5])
def test_num_batches_must_be_a_positive_int_or_none(strategy, bad):
    with pytest.raises(ValueError, match=rf"^num_batches: expected a positive integer or None, got {bad!r}$"):
        _prune(strategy, _bn_net(), _data(), num_batches=bad)


@pytest.mark.parametrize("bad", [0, None, True, "3", 2.0])
def test_synflow_iterations_must_be_a_positive_int(bad):
    with pytest.raises(ValueError, match=rf"^iterations: expected a positive integer, got {bad!r}$"):
        prune(_bn_net(), "synflow", 0.5, input_shape=(6,), iterations=bad)


@pytest.mark.parametrize("bad", [0, -2.0, True, "hot"])
def test_grasp_temperature_must_be_positive(bad):
    with pytest.raises(ValueError, match=rf"^temperature: expected a positive number, got {bad!r}$"):
        _prune("grasp", _bn_net(), _data(), temperature=bad)


def test_grasp_takes_a_temperature_below_one():
    model, data = _bn_net(), _data()
    assert not _prune("grasp", model, data, temperature=0.5).equal(_prune("grasp", model, data))


@pytest.mark.parametrize("bad,why", [([(torch.ones(2, 6),)], "got tuple at batch 0"),
                                     ([(torch.ones(2, 6), torch.zeros(2, dtype=torch.long)), 7], "got int at batch 1")])
def test_batches_must_be_pairs(bad, why):
    with pytest.raises(ValueError, match=rf"^data: every batch must be an \(x, y\) pair, {why}$"):
        _prune("snip", _bn_net(), bad)


def test_empty_data_is_refused():
    with pytest.raises(ValueError, match=r"^data: no batches \(an iterable of \(x, y\) batches is required\)$"):
        _prune("snip", _bn_net(), [])


@pytest.mark.parametrize("data,got", [([], "NoneType"), ([()], "tuple"), ([7], "int"), ([(7, 1)], "tuple")])
def test_synflow_needs_a_tensor_batch_for_its_input_shape(data, got):
    with pytest.raises(ValueError, match=rf"^data: the first batch must be an \(x, y\) pair of tensors, got {got}$"):
        prune(_bn_net(), "synflow", 0.5, data=data, iterations=1)
