"""semi_structured: the 2:4 mask builder vs a brute force, the masked fallback vs a float64 oracle
(forward and backward), the dispatch-table file, and on GPUs the cuSPARSELt path."""

import pytest
import torch

from lth_kernels.ops import semi_structured as ss

from ..conftest import assert_close, assert_within_torch_error


def _brute_force_2to4(w):
    mask = torch.zeros_like(w, dtype=torch.bool)
    for i in range(w.shape[0]):
        for g in range(0, w.shape[1], 4):
            vals = [(-abs(w[i, j].item()), j) for j in range(g, min(g + 4, w.shape[1]))]
            for _, j in sorted(vals)[:2]:  # largest magnitude first, ties to the lower index
                mask[i, j] = True
    return mask


@pytest.mark.parametrize("shape", [(3, 8), (5, 13), (1, 1), (4, 2), (7, 64)])
def test_mask_2to4_matches_brute_force(shape):
    w = torch.randn(shape)
    assert torch.equal(ss.mask_2to4(w), _brute_force_2to4(w))


def test_mask_2to4_ties_batch_dims_and_validity():
    w = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]])
    assert ss.mask_2to4(w).tolist() == [[True, True, False, False, True, True, False, False]]
    w = torch.randn(2, 6, 32, dtype=torch.float16)
    m = ss.mask_2to4(w)
    assert m.shape == w.shape and ss.is_2to4(m) and int(m.sum()) == w.numel() // 2
    assert not ss.is_2to4(torch.ones(4, 8, dtype=torch.bool)) and not ss.is_2to4(torch.zeros(4, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="weight: expected a floating-point"):
        ss.mask_2to4(torch.ones(4, 4, dtype=torch.int32))


def _oracle_2to4_linear(x, w, mask, b, gy):
    """y = x (W * mask)^T + b and its gradients written out by hand in float64 (no autograd): dx = gy (W * mask),
    dW = (gy^T x) * mask, db = sum of gy over the rows."""
    x2, gy2 = x.double().reshape(-1, x.shape[-1]), gy.double().reshape(-1, gy.shape[-1])
    wm = torch.where(mask, w.double(), 0.0)
    y = (x2 @ wm.t() + b.double()).reshape(gy.shape)
    return y, (gy2 @ wm).reshape(x.shape), (gy2.t() @ x2) * mask, gy2.sum(0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("shape", [(64, 128, 16), (33, 20, 7), (8, 12, 1)])
def test_fallback_fwd_bwd_vs_float64(dtype, shape):
    # On CPU the automatic choice (None) is the dense masked path, as "reference": both against the oracle.
    N, K, M = shape
    w = torch.randn(N, K, dtype=dtype)
    mask = ss.mask_2to4(w)
    b = torch.randn(N, dtype=dtype)
    x = torch.randn(2, M, K, dtype=dtype)
    gy = torch.randn(2, M, N, dtype=dtype)
    want = _oracle_2to4_linear(x, w, mask, b, gy)
    for backend in (None, "reference"):
        xp, wp, bp = (t.clone().requires_grad_() for t in (x, w, b))
        y = ss.semi_structured_linear(xp, wp, mask, bp, backend=backend)
        y.backward(gy)
        assert y.dtype == dtype
        for got, ref in zip((y, xp.grad, wp.grad, bp.grad), want):
            assert_close(got, ref, dtype, msg=f"backend {backend}")
        assert torch.all(wp.grad[~mask] == 0)


def test_cusparselt_backend_refuses_cpu_and_bad_input():
    w = torch.randn(32, 64)
    with pytest.raises(RuntimeError, match="backend: 'cusparselt' unavailable here: needs CUDA"):
        ss.semi_structured_linear(torch.randn(4, 64), w, ss.mask_2to4(w), backend="cusparselt")
    with pytest.raises(ValueError, match="mask: expected a bool tensor"):
        ss.semi_structured_linear(torch.randn(4, 64), w, torch.ones(32, 64))
    with pytest.raises(ValueError, match="x: expected"):
        ss.semi_structured_linear(torch.randn(4, 63), w, ss.mask_2to4(w))
    with pytest.raises(ValueError, match="backend: expected"):
        ss.semi_structured_linear(torch.randn(4, 64), w, ss.mask_2to4(w), backend="triton")
    assert ss.sparse_supported(torch.randn(4, 64), w) == (False, "needs CUDA tensors")


def test_opcheck():
    w = torch.randn(16, 32, requires_grad=True)
    args = (torch.randn(3, 32, requires_grad=True), w, ss.mask_2to4(w), torch.randn(16, requires_grad=True), "auto")
    torch.library.opcheck(torch.ops.lth_kernels.semi_structured_linear, args)


def test_dispatch_table_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("LTH_KERNELS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ss, "_TABLE", {"dev|torch|bfloat16|m64|n128|k256|b0": True})
    ss._save_table()
    assert (tmp_path / "semi_structured_dispatch.json").exists()
    monkeypatch.setattr(ss, "_TABLE", {})
    ss._load_table()
    assert ss._TABLE == {"dev|torch|bfloat16|m64|n128|k256|b0": True}
    monkeypatch.setenv("LTH_KERNELS_CACHE_DIR", "")
    assert ss._cache_path() is None
    assert [ss._m_bucket(m) for m in (1, 16, 17, 200)] == [16, 16, 32, 256]


# --------------------------------------------------------------------------------------------- GPU


def _needs_2to4():
    ok, why = ss.sparse_supported(torch.empty(16, 64, device="cuda", dtype=torch.float16),
                                  torch.empty(128, 64, device="cuda", dtype=torch.float16))
    if not ok:
        pytest.skip(why)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M,N,K", [(1024, 3072, 768), (197, 768, 768), (8, 256, 512)])
def test_gpu_cusparselt_matches_reference(dtype, M, N, K):
    _needs_2to4()
    w = (torch.randn(N, K, device="cuda") / K**0.5).to(dtype)
    mask = ss.mask_2to4(w)
    x = torch.randn(M, K, device="cuda", dtype=dtype, requires_grad=True)
    wp = w.clone().requires_grad_()
    b = torch.randn(N, device="cuda", dtype=dtype, requires_grad=True)
    y = ss.semi_structured_linear(x, wp, mask, b, backend="cusparselt")
    gy = torch.randn_like(y)
    y.backward(gy)
    want = _oracle_2to4_linear(x, w, mask, b, gy)
    own = _torch_2to4_linear(x, w, mask, b, gy)  # cuBLAS in the dtype on the masked weight
    for got, r, o, what in zip((y, x.grad, wp.grad, b.grad), want, own, ("y", "dx", "dw", "db")):
        assert_within_torch_error(got, r, o, msg=what)
    assert torch.all(wp.grad[~mask] == 0)
    # auto: whichever path the measured table picks computes the same function
    with torch.no_grad():
        assert_within_torch_error(ss.semi_structured_linear(x, w, mask, b), want[0], own[0], msg="auto")


def _torch_2to4_linear(x, w, mask, b, gy):
    """torch's own y, dx, dW, db in the inputs' dtype (autograd on the masked weight), the error yardstick."""
    xl, wl, bl = (t.detach().clone().requires_grad_() for t in (x, w, b))
    y = torch.nn.functional.linear(xl, torch.where(mask, wl, 0), bl)
    y.backward(gy)
    return y, xl.grad, wl.grad, bl.grad


@pytest.mark.gpu
def test_gpu_compile_fullgraph():
    _needs_2to4()
    w = torch.randn(1024, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    mask = ss.mask_2to4(w)
    x = torch.randn(512, 768, device="cuda", dtype=torch.bfloat16)
    fn = torch.compile(lambda x, w: ss.semi_structured_linear(x, w, mask, backend="cusparselt").float().sum(),
                       fullgraph=True)
    fn(x, w).backward()
    ones = torch.ones(512, 1024, device="cuda")
    want = (x.double().t() @ ones.double()).t() * mask  # d(sum y)/dW, masked
    own = (x.t() @ ones.to(x.dtype)).t() * mask  # torch's own bf16 GEMM
    assert_within_torch_error(w.grad, want, own, msg="dw")
