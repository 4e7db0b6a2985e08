"""The automatic backend of the masked linear ops: the library (reference) on the weight as stored for masks whose
tiles are all occupied, the Triton kernels only where the mask empties tiles; forward and backward agree, every
path matches the float64 oracle, and pruned weights stay exactly zero through optimizer steps on every path."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lth_kernels import ops
from lth_kernels.nn import MaskedConv2d, MaskedLinear
from lth_kernels.ops import _mask_cache, _registry, masked_matmul
from lth_kernels.ops import _masked_matmul_dispatch as D

from ..conftest import assert_close, require_live

LINEAR_OPS = ("masked_linear", "masked_linear_grad_input", "masked_linear_grad_weight",
              "masked_linear_grad_weight_and_scores")


def _block_diagonal(n: int, block: int) -> torch.Tensor:
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(0, n, block):
        mask[i:i + block, i:i + block] = True
    return mask


def _checkerboard(n: int, block: int) -> torch.Tensor:
    i = torch.arange(n) // block
    return (i[:, None] + i[None, :]) % 2 == 0


# --------------------------------------------------------------------------------------------- the rule


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_unstructured_masks_take_the_library_at_the_gpu_tile(sparsity):
    mask = torch.rand(768, 3072) >= sparsity  # a ViT-B fc1 ticket: no 64x64 tile is empty even at 99 %
    meta = _mask_cache.MaskMeta.from_mask(mask, (64, 64))
    assert meta.occupied_fraction == 1.0
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        assert D.choose_for(meta, 64 * 197, dtype) == "reference"


def test_occupied_fraction_counts_the_widest_tile_groups():
    # 512x512 at 64x64 tiles, fan-out 4 = groups of 256 rows (forward) / 256 columns (dX).
    diag = _block_diagonal(512, 64)  # each 256-row group holds 4 of the 8 K-tiles, and likewise for dX
    assert _mask_cache.MaskMeta.from_mask(diag, (64, 64)).occupied_fraction == 0.5
    corner = torch.zeros(512, 512, dtype=torch.bool)
    corner[:64, :128] = True  # forward: 2 of 8 K-tiles in group 0, none in group 1; dX: 1 of 8 N-tiles in group 0
    assert _mask_cache.MaskMeta.from_mask(corner, (64, 64)).occupied_fraction == pytest.approx((2 / 16 + 1 / 16) / 2)
    columns = torch.zeros(512, 512, dtype=torch.bool)
    columns[:, :384] = True  # input features pruned: the forward skips 2 of 8 K-tiles, dX nothing
    assert _mask_cache.MaskMeta.from_mask(columns, (64, 64)).occupied_fraction == pytest.approx((6 / 8 + 1) / 2)
    empty = torch.zeros(512, 512, dtype=torch.bool)
    assert _mask_cache.MaskMeta.from_mask(empty, (64, 64)).occupied_fraction == 0.0


def test_triton_only_for_masks_with_enough_empty_tiles():
    cases = {"diag64": (_block_diagonal(512, 64), "triton"),  # half the tile steps skipped: the default crossover
             "diag128": (_block_diagonal(512, 128), "triton"),
             "diag256": (_block_diagonal(512, 256), "triton"),
             # half of the 64x64 tiles are empty, but no group of 4 is: a wide output tile would skip nothing
             "checker64": (_checkerboard(512, 64), "reference"),
             "ones": (torch.ones(512, 512, dtype=torch.bool), "reference"),
             "zeros": (torch.zeros(512, 512, dtype=torch.bool), "triton")}
    for name, (mask, want) in cases.items():
        meta = _mask_cache.MaskMeta.from_mask(mask, (64, 64))
        assert D.choose_for(meta, 4096, torch.bfloat16) == want, name
        assert D.choose_for(meta, 4096, torch.float64) == "reference", name  # float64 always runs the reference
        assert D.choose_for(meta, 0, torch.bfloat16) == "reference", name


def test_crossover_table_lookup(tmp_path):
    table = {"default_crossover": 0.7, "entries": [
        {"dtype": "bfloat16", "batch": 12608, "in_features": 768, "out_features": 3072, "crossover": 0.3},
        {"dtype": "bfloat16", "batch": 12608, "in_features": 3072, "out_features": 768, "crossover": 0.4},
        {"dtype": "bfloat16", "batch": 256, "in_features": 768, "out_features": 3072, "crossover": 0.9},
    ]}
    assert D.crossover(12608, 768, 3072, torch.bfloat16, table) == 0.3
    assert D.crossover(10000, 3000, 800, torch.bfloat16, table) == 0.4  # nearest tokens, then nearest shape
    assert D.crossover(300, 3000, 800, torch.bfloat16, table) == 0.9
    assert D.crossover(12608, 768, 3072, torch.float16, table) == 0.7  # no entry for the dtype: the default
    assert D.crossover(1, 1, 1, torch.float16, {"entries": []}) == D.DEFAULT_CROSSOVER
    # the committed table is the conservative default until a GPU run regenerates it
    committed = json.loads(Path(D.TABLE_PATH).read_text())
    assert committed["default_crossover"] == D.DEFAULT_CROSSOVER == 0.5 and isinstance(committed["entries"], list)
    assert "masked_matmul_table.json" in D.rule_text()


def test_resolve_says_auto_only_where_the_rule_has_two_live_candidates(monkeypatch):
    cuda = _registry.resolve("masked_linear", "cuda")
    assert cuda == ("auto" if _registry.backend_status("triton", "cuda")[0] else "reference")
    assert _registry.resolve("masked_linear_grad_scores", "cuda") == "reference"  # nothing to skip: library
    assert _registry.resolve("masked_conv2d", "cuda") == "reference"
    assert set(_registry.ops()["masked_conv2d"].impls) == {"reference"}  # no Triton convolution exists
    entry = _registry.ops()["masked_linear"]
    monkeypatch.setitem(entry.rules, "cpu", entry.rules["cuda"])
    live = _registry.backend_status("triton", "cpu")[0]
    assert _registry.resolve("masked_linear", "cpu") == ("auto" if live else "reference")
    assert _registry.resolve("masked_linear", "cpu", "reference") == "reference"  # an explicit choice wins
    monkeypatch.setenv("LTH_KERNELS_BACKEND", "masked_linear=reference")
    assert _registry.resolve("masked_linear", "cpu") == "reference"


def test_env_backend_applies_to_the_ops_that_have_it(monkeypatch):
    # one name for all ops: the ops with that backend take it, the others keep their automatic choice
    monkeypatch.setenv("LTH_KERNELS_BACKEND", "triton")
    assert _registry.resolve("masked_linear", "cpu") == "triton"
    assert _registry.resolve("masked_conv2d", "cpu") == "reference"  # no Triton convolution
    # named per op, or per call, the choice is strict: a backend the op lacks is an error
    monkeypatch.setenv("LTH_KERNELS_BACKEND", "masked_conv2d=triton")
    with pytest.raises(RuntimeError, match="'triton' is not available for masked_conv2d on cpu: not implemented"):
        _registry.resolve("masked_conv2d", "cpu")
    monkeypatch.delenv("LTH_KERNELS_BACKEND")
    with pytest.raises(RuntimeError, match="not implemented"):
        _registry.resolve("masked_conv2d", "cpu", "triton")


# --------------------------------------------------------------------------------------------- through the ops


@pytest.fixture
def tile_rule(device, monkeypatch):
    """The CUDA rule on the test device (on CPU the Triton kernels run in the interpreter), with spies that record
    which implementation each op ran."""
    require_live("masked_linear", "triton", device)
    calls = []
    for op in (*LINEAR_OPS, "masked_linear_grad_scores"):
        entry = _registry.ops()[op]
        if op in LINEAR_OPS:
            monkeypatch.setitem(entry.rules, device.type, entry.rules["cuda"])
        for backend, fn in list(entry.impls.items()):
            def spy(*args, _fn=fn, _name=(op, backend)):
                calls.append(_name)
                return _fn(*args)
            monkeypatch.setitem(entry.impls, backend, spy)
    return calls


def _corner() -> torch.Tensor:
    """Only the first 64 outputs read only the first 64 inputs (pruned neurons and input features): at the
    interpreter's 32-wide tiles and at the GPU's 64-wide ones, half the tile steps of forward and dX are empty."""
    mask = torch.zeros(128, 128, dtype=torch.bool)
    mask[:64, :64] = torch.rand(64, 64) > 0.3
    return mask


MASKS = {"unstructured": lambda: torch.rand(128, 128) > 0.9, "corner": _corner}
WANT = {"unstructured": "reference", "corner": "triton"}


def _oracle(x, w, m, b, gy):
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    y = F.linear(xd, torch.where(m, wd, 0), bd)
    y.backward(gy.double())
    return y, xd.grad, torch.where(m, wd.grad, 0), bd.grad


@pytest.mark.parametrize("kind", list(MASKS))
def test_masked_linear_forward_and_backward_follow_the_rule(kind, tile_rule, device):
    mask = MASKS[kind]().to(device)
    layer = MaskedLinear(128, 128, device=device).set_mask(mask)
    x = torch.randn(2, 3, 128, device=device, requires_grad=True)
    y = layer(x)
    gy = torch.randn_like(y)
    y.backward(gy)
    ran = {backend for _, backend in tile_rule}
    assert ran == {WANT[kind]}, tile_rule
    assert [op for op, _ in tile_rule] == ["masked_linear", "masked_linear_grad_input", "masked_linear_grad_weight"]
    ry, rdx, rdw, rdb = _oracle(x, layer.weight, mask, layer.bias, gy)
    for got, want, what in ((y, ry, "y"), (x.grad, rdx, "dx"), (layer.weight.grad, rdw, "dw"),
                            (layer.bias.grad, rdb, "db")):
        assert_close(got, want, torch.float32, msg=f"{what} ({kind})")
    assert torch.all(layer.weight.grad[~mask] == 0)


@pytest.mark.parametrize("kind", list(MASKS))
def test_score_path_fuses_dw_and_scores(kind, tile_rule, device):
    mask = MASKS[kind]().to(device)
    x = torch.randn(5, 128, device=device, requires_grad=True)
    w = torch.randn(128, 128, device=device, requires_grad=True)
    b = torch.randn(128, device=device, requires_grad=True)
    scores = torch.rand(128, 128, device=device, requires_grad=True)
    y = ops.masked_linear_scores(x, w, mask, scores, b)
    gy = torch.randn_like(y)
    y.backward(gy)
    want = WANT[kind]
    assert tile_rule == [("masked_linear", want), ("masked_linear_grad_input", want),
                         ("masked_linear_grad_weight_and_scores", want)]  # one pass for dW and the scores
    xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
    md = mask.double().requires_grad_()
    ry = F.linear(xd, wd * md, bd)
    ry.backward(gy.double())
    for got, want_t, what in ((y, ry, "y"), (x.grad, xd.grad, "dx"), (w.grad, torch.where(mask, wd.grad, 0), "dw"),
                              (scores.grad, md.grad, "scores"), (b.grad, bd.grad, "db")):
        assert_close(got, want_t, torch.float32, msg=f"{what} ({kind})")
    # frozen weights (the scored layers): the score gradient alone is one library GEMM on every mask
    tile_rule.clear()
    scores.grad = None
    ops.masked_linear_scores(x.detach(), w.detach(), mask, scores).backward(gy)
    assert tile_rule == [("masked_linear", want), ("masked_linear_grad_scores", "reference")]
    assert_close(scores.grad, md.grad, torch.float32)


def test_fused_grad_weight_and_scores_every_backend_matches(device):
    for backend in ("reference", "triton"):
        require_live("masked_linear_grad_weight_and_scores", backend, device)
        for mask in (MASKS["corner"]().to(device), torch.zeros(128, 128, dtype=torch.bool, device=device)):
            g, x, w = (torch.randn(*s, device=device) for s in ((7, 128), (7, 128), (128, 128)))
            dw, ds = masked_matmul._grad_weight_and_scores_op(g, x, w, mask, backend)
            full = g.double().t() @ x.double()
            assert_close(dw, torch.where(mask, full, 0), torch.float32, msg=backend)
            assert_close(ds, full * w.double(), torch.float32, msg=backend)
            assert torch.all(dw[~mask] == 0)


# --------------------------------------------------------------------------------------------- zero invariant

OPTIMIZERS = {
    "sgd_momentum_wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=5e-4),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
}


def _steps(params, loss_fn, opt_name, steps=2):
    opt = OPTIMIZERS[opt_name](params)
    for _ in range(steps):
        opt.zero_grad(set_to_none=False)
        loss_fn().backward()
        opt.step()


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", list(MASKS))
def test_pruned_weights_stay_zero_on_every_linear_path(kind, opt_name, tile_rule, device):
    mask = MASKS[kind]().to(device)
    layer = MaskedLinear(128, 128, device=device).set_mask(mask)
    before = layer.weight.detach().clone()
    x = torch.randn(6, 128, device=device)
    _steps(layer.parameters(), lambda: layer(x).square().mean(), opt_name)
    assert {backend for _, backend in tile_rule} == {WANT[kind]}
    assert torch.all(layer.weight[~mask] == 0)
    assert not torch.equal(layer.weight[mask], before[mask]), "kept weights did not train"


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
@pytest.mark.parametrize("kind", list(MASKS))
def test_pruned_weights_stay_zero_on_the_fused_score_path(kind, opt_name, tile_rule, device):
    mask = MASKS[kind]().to(device)
    w = torch.where(mask, torch.randn(128, 128, device=device), 0).requires_grad_()
    scores = torch.rand(128, 128, device=device, requires_grad=True)
    s0 = scores.detach().clone()
    x = torch.randn(6, 128, device=device)
    _steps([w, scores], lambda: ops.masked_linear_scores(x, w, mask, scores).square().mean(), opt_name)
    assert ("masked_linear_grad_weight_and_scores", WANT[kind]) in tile_rule
    assert torch.all(w[~mask] == 0)
    assert not torch.equal(scores[mask], s0[mask]), "scores did not train"


@pytest.mark.parametrize("opt_name", list(OPTIMIZERS))
def test_pruned_weights_stay_zero_on_the_conv_path(opt_name, device):
    conv = MaskedConv2d(4, 6, 3, padding=1, device=device).set_mask(torch.rand(6, 4, 3, 3, device=device) > 0.7)
    x = torch.randn(2, 4, 7, 7, device=device)
    _steps(conv.parameters(), lambda: conv(x).square().mean(), opt_name)
    assert torch.all(conv.weight[~conv.mask] == 0)


def test_opcheck_auto(tile_rule, device):
    # "auto" is decided inside the ops at run time: the ops must still pass torch.library's checks with it.
    lk = torch.ops.lth_kernels
    mask = _corner().to(device)
    x = torch.randn(3, 128, device=device, requires_grad=True)
    w = torch.where(mask, torch.randn(128, 128, device=device), 0).requires_grad_()
    g = torch.randn(3, 128, device=device)
    for op, args in ((lk.masked_linear.default, (x, w, mask, None, True, "auto")),
                     (lk.masked_linear_grad_weight_and_scores.default, (g, x.detach(), w.detach(), mask, "auto"))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration", "test_faketensor"))
    assert {backend for _, backend in tile_rule} == {"triton"}


def test_decision_follows_mask_changes(tile_rule, device):
    layer = MaskedLinear(128, 128, device=device).set_mask(MASKS["unstructured"]().to(device))
    x = torch.randn(2, 128, device=device)
    with torch.no_grad():
        layer(x)
        layer.set_mask(_corner().to(device))  # same mask tensor, written in place: the choice is made again
        y = layer(x)
        want = F.linear(x.double(), layer.weight.double(), layer.bias.double())
        layer.set_mask(MASKS["unstructured"]().to(device))
        layer(x)
    assert [backend for _, backend in tile_rule] == ["reference", "triton", "reference"]
    assert_close(y, want, torch.float32)
