"""Triton masked matmul (design A1): kernels and launchers against a float64 oracle, tile skipping, split-K dW,
the metadata cache, the backend through the public op, and full-size GPU checks."""

import pytest
import torch

from lth_kernels.nn.masked import MaskedLinear
from lth_kernels.ops import _mask_cache, _registry
from lth_kernels.ops import _masked_matmul_triton as T
from lth_kernels.ops.masked_matmul import masked_linear

from ..conftest import assert_close, assert_within_torch_error


@pytest.fixture(autouse=True)
def _triton_live(device):
    live, why = _registry.backend_status("triton", device)
    if not live:
        pytest.skip(f"triton: {why}")


def _mask(kind, n, k, device):
    if kind == "zeros":
        return torch.zeros(n, k, dtype=torch.bool, device=device)
    if kind == "ones":
        return torch.ones(n, k, dtype=torch.bool, device=device)
    if kind == "blocks64":  # 64x64 blocks kept or pruned together, random inside the kept ones
        blocks = torch.rand(-(-n // 64), -(-k // 64), device=device) > 0.5
        blocks.view(-1)[0] = True
        keep = blocks.repeat_interleave(64, 0)[:n].repeat_interleave(64, 1)[:, :k]
        return keep & (torch.rand(n, k, device=device) > 0.3)
    return torch.rand(n, k, device=device) > float(kind)


def _oracle(x, w, mask, bias, g, dtype=torch.float64):
    """float64: y, dX, masked dW, score gradient (dYᵀX ⊙ W), dbias; with a low-precision ``dtype``, torch's own
    result in that dtype (the GPU tolerance rule's yardstick)."""
    xd, wd, gd = x.to(dtype), w.to(dtype), g.to(dtype)
    wm = torch.where(mask, wd, 0)
    y = xd @ wm.t() + (0 if bias is None else bias.to(dtype))
    full = gd.t() @ xd
    return y, gd @ wm, torch.where(mask, full, 0), full * wd, gd.sum(0)


def _check_all(x, w, mask, bias, g, dtype, **kw):
    meta = T.mask_meta(mask)
    y, dx, dw, ds, _ = _oracle(x, w, mask, bias, g)
    assert_close(T.masked_matmul_forward(x, w, meta, bias, **kw.get("fwd", {})), y, dtype, msg="y")
    assert_close(T.masked_matmul_forward(g, w, meta, grad_input=True, **kw.get("fwd", {})), dx, dtype, msg="dx")
    got_dw, got_ds = T.masked_matmul_grad_weight(g, x, bits=meta.bits, weight=w, **kw.get("gw", {}))
    assert_close(got_dw, dw, dtype, msg="dw")
    assert_close(got_ds, ds, dtype, msg="scores")
    assert torch.all(got_dw[~mask] == 0), "dw must be exactly 0 at pruned entries"
    only_dw = T.masked_matmul_grad_weight(g, x, bits=meta.bits, **kw.get("gw", {}))
    assert only_dw[1] is None and torch.equal(only_dw[0], got_dw)
    only_ds = T.masked_matmul_grad_weight(g, x, weight=w, **kw.get("gw", {}))
    assert only_ds[0] is None and torch.equal(only_ds[1], got_ds)


CASES = [  # (M, N, K, mask kind, dtype): odd sizes, every mask kind, both CPU-testable dtypes
    (1, 1, 1, "ones", torch.float32),
    (7, 97, 129, "0.5", torch.float32),
    (97, 33, 70, "0.9", torch.float32),
    (33, 129, 7, "0.99", torch.float32),
    (40, 7, 97, "zeros", torch.float32),
    (20, 128, 130, "blocks64", torch.float32),
    (7, 97, 129, "0.5", torch.float16),
    (50, 64, 64, "blocks64", torch.float16),
    (0, 5, 3, "0.5", torch.float32),
    (3, 5, 0, "ones", torch.float32),
]


@pytest.mark.parametrize("m,n,k,kind,dtype", CASES)
def test_kernels_match_oracle(m, n, k, kind, dtype, device):
    x = torch.randn(m, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    b = torch.randn(n, dtype=dtype, device=device)
    g = torch.randn(m, n, dtype=dtype, device=device)
    _check_all(x, w, _mask(kind, n, k, device), b, g, dtype)


@pytest.mark.parametrize("fanout", [2, 4])
def test_wide_output_tiles_use_grouped_tables(fanout, device):
    # BLOCK_OUT = 2 or 4 base tiles reads the fan-out 2/4 rows of the tables (the GPU autotuner's wide configs).
    tile = T._tile(device)
    n, k = 3 * tile + 5, 2 * tile + 9
    x, w = torch.randn(9, k, device=device), torch.randn(n, k, device=device)
    mask = _mask("blocks64", n, k, device)
    _check_all(x, w, mask, None, torch.randn(9, n, device=device), torch.float32,
               fwd={"config": {"BLOCK_M": 16, "BLOCK_OUT": fanout * tile}},
               gw={"config": {"BLOCK_N": 64, "BLOCK_K": 32, "BLOCK_M": 32}, "split": 1})


def test_split_k_is_deterministic_and_matches(device):
    m, n, k = 97, 33, 40
    x, w, g = torch.randn(m, k, device=device), torch.randn(n, k, device=device), torch.randn(m, n, device=device)
    mask = _mask("0.5", n, k, device)
    bits = T.mask_meta(mask).bits
    _, _, dw, ds, _ = _oracle(x, w, mask, None, g)
    one = T.masked_matmul_grad_weight(g, x, bits=bits, weight=w, split=1)
    for split in (2, 3):
        got = T.masked_matmul_grad_weight(g, x, bits=bits, weight=w, split=split)
        assert_close(got[0], dw, torch.float32)
        assert_close(got[1], ds, torch.float32)
        assert torch.equal(got[0], T.masked_matmul_grad_weight(g, x, bits=bits, weight=w, split=split)[0])
        assert torch.all(got[0][~mask] == 0)
    assert_close(one[0], dw, torch.float32)


def test_block_mask_tables_skip_empty_tiles(device):
    tile = T._tile(device)
    n, k = 4 * tile, 3 * tile + 7
    mask = torch.zeros(n, k, dtype=torch.bool, device=device)
    mask[0:tile, tile:2 * tile] = True  # tile (0, 1)
    mask[3 * tile + 1, 3 * tile + 2] = True  # tile (3, 3), a single weight
    mask[2 * tile:3 * tile, 0] = True  # tile (2, 0)
    meta = _mask_cache.MaskMeta.from_mask(mask, (tile, tile))
    assert meta.tiles("fwd") == [[1], [], [0], [3]]
    assert meta.tiles("fwd", 2) == [[1], [0, 3]]
    assert meta.tiles("fwd", 4) == [[0, 1, 3]]
    assert meta.tiles("bwd") == [[2], [0], [], [3]]
    assert meta.tiles("bwd", 2) == [[0, 2], [3]]
    # Poison every weight outside the listed tiles: with the mask trusted (apply_mask=False) the kernels never
    # load those tiles, so the result stays finite and exact; a kernel that loaded them would return nan.
    occ_full = meta.occupancy.repeat_interleave(tile, 0)[:n].repeat_interleave(tile, 1)[:, :k]
    w = torch.where(mask, torch.randn(n, k, device=device), 0).masked_fill(~occ_full, float("nan"))
    x, g = torch.randn(11, k, device=device), torch.randn(11, n, device=device)
    wm = torch.where(mask, w, 0).double()
    one_tile = {"config": {"BLOCK_M": 16, "BLOCK_OUT": tile}}  # wider groups would load the poisoned neighbours
    assert_close(T.masked_matmul_forward(x, w, meta, apply_mask=False, **one_tile), x.double() @ wm.t())
    assert_close(T.masked_matmul_forward(g, w, meta, apply_mask=False, grad_input=True, **one_tile), g.double() @ wm)


def test_pruned_entries_contribute_zero_even_if_non_finite(device):
    n, k = 37, 45
    mask = _mask("0.5", n, k, device)
    w = torch.randn(n, k, device=device).masked_fill(~mask, float("inf"))
    x, g = torch.randn(5, k, device=device), torch.randn(5, n, device=device)
    meta = T.mask_meta(mask)
    wm = torch.where(mask, w, 0).double()
    assert_close(T.masked_matmul_forward(x, w, meta), x.double() @ wm.t())
    assert_close(T.masked_matmul_forward(g, w, meta, grad_input=True), g.double() @ wm)
    dw = T.masked_matmul_grad_weight(g, x, bits=meta.bits)[0]
    assert_close(dw, torch.where(mask, g.double().t() @ x.double(), 0))


def test_registered_backend_batch_dims_and_non_contiguous(device):
    n, k = 29, 70
    mask = _mask("0.5", n, k, device)
    w_store = torch.randn(k, n, device=device)
    w = w_store.t()  # non-contiguous weight
    x = torch.randn(3, k, 2, 5, device=device).permute(0, 2, 3, 1)  # (3, 2, 5, K), non-contiguous
    b = torch.randn(n, device=device)
    g = torch.randn(3, 2, 5, n, device=device)
    y, dx, dw, ds, _ = _oracle(x.reshape(-1, k), w, mask, b, g.reshape(-1, n))
    for masked_store in (False, True):
        ww = torch.where(mask, w, 0) if masked_store else w
        got = T.masked_linear_triton(x, ww, mask, b, masked_store)
        assert got.shape == (3, 2, 5, n)
        assert_close(got.reshape(-1, n), y)
        assert_close(T.masked_linear_grad_input_triton(g, ww, mask, masked_store).reshape(-1, k), dx)
    assert_close(T.masked_linear_grad_weight_triton(g, x, mask), dw)
    assert_close(T.masked_linear_grad_scores_triton(g, x, w), ds)
    fused = T.masked_linear_grad_weight_and_scores(g, x, w, mask)
    assert_close(fused[0], dw)
    assert_close(fused[1], ds)


def test_metadata_cache_hits_and_invalidates(device):
    mask = _mask("0.5", 70, 64, device)
    _mask_cache.clear()
    builds = _mask_cache.stats["builds"]
    first = T.mask_meta(mask)
    assert T.mask_meta(mask) is first and _mask_cache.stats["builds"] == builds + 1
    assert T.mask_meta(mask.clone()) is not first  # another tensor, another entry
    with torch.no_grad():
        mask[:40] = False  # in place: bumps the version, as MaskedLinear.set_mask (copy_) does
    second = T.mask_meta(mask)
    assert second is not first
    assert torch.equal(second.bits, _mask_cache.MaskMeta.from_mask(mask, second.tile).bits)
    # The kernels see the new mask.
    x, w = torch.randn(4, 64, device=device), torch.randn(70, 64, device=device)
    assert_close(T.masked_linear_triton(x, w, mask, None, False), x.double() @ torch.where(mask, w, 0).double().t())
    with torch.inference_mode():
        frozen = _mask("0.5", 8, 32, device)
        assert T.mask_meta(frozen) is not T.mask_meta(frozen)  # no version counter: never cached


@pytest.mark.parametrize("bad,match", [
    (lambda d: _mask_cache.MaskMeta.from_mask(torch.zeros(3, 4, device=d), (32, 32)), "mask: expected a 2-D"),
    (lambda d: _mask_cache.MaskMeta.from_mask(torch.zeros(3, 4, dtype=torch.bool, device=d), (32, 48)),
     "block: expected two positive ints"),
    (lambda d: T.masked_matmul_grad_weight(torch.zeros(2, 3, device=d), torch.zeros(2, 4, device=d)), "bits/weight"),
])
def test_bad_input_names_the_argument(bad, match, device):
    with pytest.raises((TypeError, ValueError), match=match):
        bad(device)


def test_pruned_weights_stay_zero_under_sgd_momentum_wd(device):
    n, k = 33, 70
    mask = _mask("0.9", n, k, device)
    w = torch.where(mask, torch.randn(n, k, device=device), 0).requires_grad_()
    b = torch.zeros(n, device=device, requires_grad=True)
    opt = torch.optim.SGD([w, b], lr=0.1, momentum=0.9, weight_decay=5e-4)
    for _ in range(3):
        x = torch.randn(6, k, device=device)
        loss = masked_linear(x, w, mask, b, backend="triton", weight_is_masked=True).square().mean()
        opt.zero_grad()
        loss.backward()
        assert torch.all(w.grad[~mask] == 0)
        assert_close(b.grad, (2 / (6 * n)) * (x.double() @ w.detach().double().t() + b.detach().double()).sum(0))
        opt.step()
    assert torch.all(w.detach()[~mask] == 0) and torch.any(w.detach()[mask] != 0)


# --------------------------------------------------------------------------------------------- GPU, full size

VIT_B = [(768, 2304), (768, 768), (768, 3072), (3072, 768)]  # (K, N): QKV, proj, fc1, fc2


def _rel_err(got, want):
    return ((got.double() - want).norm() / want.norm().clamp_min(1e-30)).item()


@pytest.mark.gpu
@pytest.mark.parametrize("k,n", VIT_B)
@pytest.mark.parametrize("kind", ["0.9", "blocks64"])
def test_gpu_vit_b_bf16(k, n, kind):
    m = 8 * 197
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
    b = torch.randn(n, device="cuda", dtype=torch.bfloat16)
    g = torch.randn(m, n, device="cuda", dtype=torch.bfloat16)
    mask = _mask(kind, n, k, "cuda")
    meta = T.mask_meta(mask)
    want, own = _oracle(x, w, mask, b, g), _oracle(x, w, mask, b, g, torch.bfloat16)  # own: cuBLAS in bf16
    got_dw, got_ds = T.masked_matmul_grad_weight(g, x, bits=meta.bits, weight=w)
    got = (T.masked_matmul_forward(x, w, meta, b), T.masked_matmul_forward(g, w, meta, grad_input=True), got_dw, got_ds)
    for ours, r, o, what in zip(got, want, own, ("y", "dx", "dw", "dscores")):
        assert_within_torch_error(ours, r, o, msg=what)
    assert torch.all(got_dw[~mask] == 0)


@pytest.mark.gpu
def test_gpu_fp32_tf32_switch():
    m, k, n = 1024, 768, 768
    x, w = torch.randn(m, k, device="cuda"), torch.randn(n, k, device="cuda")
    mask = _mask("0.5", n, k, "cuda")
    want = x.double() @ torch.where(mask, w, 0).double().t()
    old = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False  # full fp32: the tolerance rule against cuBLAS fp32
        own = x @ torch.where(mask, w, 0).t()
        assert_within_torch_error(T.masked_matmul_forward(x, w, T.mask_meta(mask)), want, own, msg="fp32")
        torch.backends.cuda.matmul.allow_tf32 = True
        assert _rel_err(T.masked_matmul_forward(x, w, T.mask_meta(mask)), want) < 5e-3
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old


@pytest.mark.gpu
def test_gpu_compile_fullgraph_masked_linear_model():
    torch.manual_seed(1)
    layers = [MaskedLinear(768, 3072), torch.nn.GELU(), MaskedLinear(3072, 768)]
    model = torch.nn.Sequential(*layers).cuda().to(torch.bfloat16)
    for layer in (layers[0], layers[2]):
        layer.set_mask(torch.rand(layer.weight.shape, device="cuda") > 0.8)
    x = torch.randn(4, 197, 768, device="cuda", dtype=torch.bfloat16)
    compiled = torch.compile(model, fullgraph=True)
    y = compiled(x)

    def plain(dtype):  # the same network by plain torch ops (the weights hold zeros where pruned)
        h = torch.nn.functional.linear(x.to(dtype), layers[0].weight.to(dtype), layers[0].bias.to(dtype))
        return torch.nn.functional.linear(torch.nn.functional.gelu(h), layers[2].weight.to(dtype),
                                          layers[2].bias.to(dtype))

    with torch.no_grad():
        want, own = plain(torch.float64), plain(torch.bfloat16)
    assert_within_torch_error(y.detach(), want, own, msg="compiled")
    y.float().square().mean().backward()
    for layer in (layers[0], layers[2]):
        assert torch.all(layer.weight.grad[~layer.mask] == 0)
