"""masked_linear / masked_linear_scores / masked_conv2d: every live backend against a float64 autograd oracle."""

import pytest
import torch
import torch.nn.functional as F

from lth_kernels import ops

from ..conftest import assert_close, assert_within_torch_error, backends, require_live

LINEAR_SHAPES = [  # (batch dims of x, K, N)
    ((1,), 1, 1),
    ((7,), 97, 129),
    ((129,), 7, 97),
    ((2, 3), 33, 1),
    ((97,), 129, 7),
    ((0,), 5, 3),
]
MASKS = ["zeros", "ones", "0.5", "0.9", "0.99", "blocks"]



def _mask(kind, shape, device):
    if kind == "zeros":
        return torch.zeros(shape, dtype=torch.bool, device=device)
    if kind == "ones":
        return torch.ones(shape, dtype=torch.bool, device=device)
    if kind == "blocks":  # 4x4 blocks of the (first two dims of the) weight, kept or pruned together
        rows, cols = shape[0], shape[1]
        blocks = torch.rand(-(-rows // 4), -(-cols // 4), device=device) > 0.5
        m = blocks.repeat_interleave(4, 0)[:rows].repeat_interleave(4, 1)[:, :cols]
        return m.reshape(rows, cols, *([1] * (len(shape) - 2))).expand(shape).contiguous()
    return torch.rand(shape, device=device) > float(kind)


def _linear_oracle(x, w, m, b, gy, scores=False, dtype=torch.float64):
    """float64 autograd on torch.where(m, w, 0); the score gradient is d/d(float mask) of x·(w ⊙ mask)ᵀ. With a
    low-precision ``dtype``: torch's own result in that dtype (the GPU tolerance rule's yardstick)."""
    xd, wd = x.detach().to(dtype).requires_grad_(), w.detach().to(dtype).requires_grad_()
    bd = b.detach().to(dtype).requires_grad_() if b is not None else None
    md = m.to(dtype).requires_grad_()
    y = F.linear(xd, torch.where(m, wd, 0) if not scores else wd * md, bd)
    y.backward(gy.to(dtype))
    return y, xd.grad, torch.where(m, wd.grad, 0) if scores else wd.grad, bd.grad if b is not None else None, md.grad


def _inputs(batch, k, n, dtype, device, bias=True):
    x = torch.randn(*batch, k, dtype=dtype, device=device)
    w = torch.randn(n, k, dtype=dtype, device=device)
    b = torch.randn(n, dtype=dtype, device=device) if bias else None
    return x, w, b


def _grads(y, gy, *tensors):
    y.backward(gy)
    return [t.grad if t is not None else None for t in tensors]


@pytest.mark.parametrize("backend", backends("masked_linear"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("batch,k,n", LINEAR_SHAPES)
def test_masked_linear_matches_oracle(backend, dtype, batch, k, n, device):
    require_live("masked_linear", backend, device)
    for kind in MASKS:
        x, w, b = (t.requires_grad_() for t in _inputs(batch, k, n, dtype, device))
        m = _mask(kind, (n, k), device)
        y = ops.masked_linear(x, w, m, b, backend=backend)
        gy = torch.randn_like(y)
        dx, dw, db = _grads(y, gy, x, w, b)
        ry, rdx, rdw, rdb, _ = _linear_oracle(x, w, m, b, gy)
        assert y.shape == (*batch, n) and y.dtype == dtype
        for got, want, what in ((y, ry, "y"), (dx, rdx, "dx"), (dw, rdw, "dw"), (db, rdb, "db")):
            assert_close(got, want, dtype, msg=f"{what} mask={kind}")
        assert torch.all(dw[~m] == 0), f"dw not exactly 0 at pruned entries (mask={kind})"


@pytest.mark.parametrize("backend", backends("masked_linear"))
def test_masked_linear_no_bias_non_contiguous_and_batched(backend, device):
    require_live("masked_linear", backend, device)
    k, n = 97, 33
    x = torch.randn(5, k, 2, 3, device=device).permute(2, 3, 0, 1)[:, :, ::2]  # (2, 3, 3, k), non-contiguous
    assert not x.is_contiguous()
    x.requires_grad_()
    w = torch.randn(k, n, device=device).t().requires_grad_()  # non-contiguous weight too
    m = _mask("0.9", (n, k), device)
    y = ops.masked_linear(x, w, m, backend=backend)
    gy = torch.randn_like(y).transpose(0, 1).contiguous().transpose(0, 1)  # non-contiguous upstream gradient
    dx, dw = _grads(y, gy, x, w)
    ry, rdx, rdw, _, _ = _linear_oracle(x, w, m, None, gy)
    for got, want in ((y, ry), (dx, rdx), (dw, rdw)):
        assert_close(got, want, torch.float32)


@pytest.mark.parametrize("backend", backends("masked_linear"))
def test_weight_is_masked_and_non_finite_pruned_weights(backend, device):
    require_live("masked_linear", backend, device)
    x, w, b = _inputs((9,), 13, 11, torch.float32, device)
    m = _mask("0.5", w.shape, device)
    zeroed = torch.where(m, w, 0)
    want = F.linear(x.double(), zeroed.double(), b.double())
    assert_close(ops.masked_linear(x, zeroed, m, b, backend=backend, weight_is_masked=True), want, torch.float32)
    # where semantics: a pruned inf/nan contributes exactly 0 when the op applies the mask itself
    poisoned = w.masked_fill(~m, float("nan"))
    poisoned[~m & (torch.rand_like(w) > 0.5)] = float("inf")
    y = ops.masked_linear(x, poisoned, m, b, backend=backend)
    assert torch.isfinite(y).all()
    assert_close(y, want, torch.float32)


@pytest.mark.parametrize("backend", backends("masked_linear"))
@pytest.mark.parametrize("batch,k,n", LINEAR_SHAPES[:5])
def test_masked_linear_scores_matches_oracle(backend, batch, k, n, device):
    require_live("masked_linear", backend, device)
    for kind in ("zeros", "ones", "0.5", "0.99", "blocks"):
        x, w, b = (t.requires_grad_() for t in _inputs(batch, k, n, torch.float32, device))
        m = _mask(kind, (n, k), device)
        scores = torch.rand(n, k, device=device, requires_grad=True)
        y = ops.masked_linear_scores(x, w, m, scores, b, backend=backend)
        gy = torch.randn_like(y)
        dx, dw, ds, db = _grads(y, gy, x, w, scores, b)
        ry, rdx, rdw, rdb, rds = _linear_oracle(x, w, m, b, gy, scores=True)
        for got, want, what in ((y, ry, "y"), (dx, rdx, "dx"), (dw, rdw, "dw"), (ds, rds, "dscores"), (db, rdb, "db")):
            assert_close(got, want, torch.float32, msg=f"{what} mask={kind}")
        assert torch.all(dw[~m] == 0)
        if kind == "zeros" and x.numel():  # pruned entries get score gradient too: the point of the variant
            assert ds.abs().sum() > 0


def test_scores_only_path_and_dtype():
    x, w, _ = _inputs((6,), 10, 4, torch.float32, "cpu")
    m = _mask("0.5", w.shape, "cpu")
    scores = torch.rand(4, 10, dtype=torch.float64, requires_grad=True)  # frozen weights, float64 scores
    ops.masked_linear_scores(x, w, m, scores).sum().backward()
    assert scores.grad.dtype == torch.float64
    want = (torch.ones(6, 4, dtype=torch.float64).t() @ x.double()) * w.double()
    assert_close(scores.grad, want, torch.float32)


def test_gradcheck_float64():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    m = _mask("0.5", w.shape, "cpu")
    assert torch.autograd.gradcheck(lambda x, w, b: ops.masked_linear(x, w, m, b), (x, w, b))
    s = torch.rand(4, 5, dtype=torch.float64)  # scores get a straight-through gradient: not a true derivative
    assert torch.autograd.gradcheck(lambda x, w, b: ops.masked_linear_scores(x, w, m, s, b), (x, w, b))
    xc = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    wc = torch.randn(6, 2, 3, 2, dtype=torch.float64, requires_grad=True)
    bc = torch.randn(6, dtype=torch.float64, requires_grad=True)
    mc = _mask("0.5", wc.shape, "cpu")
    assert torch.autograd.gradcheck(lambda x, w, b: ops.masked_conv2d(x, w, mc, b, (2, 1), 1, (1, 2), 2), (xc, wc, bc))


CONV_CASES = [  # (B, C, H, W), (O, kh, kw), stride, padding, dilation, groups
    ((2, 3, 9, 7), (5, 3, 3), 1, 1, 1, 1),
    ((1, 4, 11, 13), (6, 3, 2), (2, 1), (1, 0), (1, 2), 2),
    ((3, 6, 8, 8), (6, 3, 3), 2, 0, 1, 6),  # depthwise
    ((2, 1, 7, 97), (7, 1, 1), 1, 0, 1, 1),  # 1x1
    ((2, 2, 10, 9), (3, 4, 3), 1, "same", (2, 1), 1),  # even kernel: asymmetric 'same'
    ((1, 3, 6, 5), (4, 2, 2), 1, "valid", 1, 1),
]


@pytest.mark.parametrize("backend", backends("masked_conv2d"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("xs,ws,stride,padding,dilation,groups", CONV_CASES)
def test_masked_conv2d_matches_oracle(backend, dtype, xs, ws, stride, padding, dilation, groups, device):
    require_live("masked_conv2d", backend, device)
    wshape = (ws[0], xs[1] // groups, ws[1], ws[2])
    for kind in ("zeros", "ones", "0.5", "0.9", "blocks"):
        x = torch.randn(xs, dtype=dtype, device=device, requires_grad=True)
        w = torch.randn(wshape, dtype=dtype, device=device, requires_grad=True)
        b = torch.randn(ws[0], dtype=dtype, device=device, requires_grad=True)
        m = _mask(kind, wshape, device)
        y = ops.masked_conv2d(x, w, m, b, stride, padding, dilation, groups, backend=backend)
        gy = torch.randn_like(y)
        dx, dw, db = _grads(y, gy, x, w, b)
        xd, wd, bd = (t.detach().double().requires_grad_() for t in (x, w, b))
        ry = F.conv2d(xd, torch.where(m, wd, 0), bd, stride, padding, dilation, groups)
        ry.backward(gy.double())
        for got, want, what in ((y, ry, "y"), (dx, xd.grad, "dx"), (dw, wd.grad, "dw"), (db, bd.grad, "db")):
            assert_close(got, want, dtype, msg=f"{what} mask={kind}")
        assert torch.all(dw[~m] == 0)


def test_masked_conv2d_unbatched_and_channels_last():
    x = torch.randn(3, 8, 8)
    w = torch.randn(4, 3, 3, 3)
    m = _mask("0.5", w.shape, "cpu")
    want = F.conv2d(x.double(), torch.where(m, w, 0).double(), padding=1)
    assert_close(ops.masked_conv2d(x, w, m, padding=1), want, torch.float32)
    xl = torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)
    y = ops.masked_conv2d(xl, w, m, padding=1)
    assert y.is_contiguous()
    assert_close(y, F.conv2d(xl.double(), torch.where(m, w, 0).double(), padding=1), torch.float32)


def test_autocast_cpu_bf16():
    x = torch.randn(5, 16)
    w = torch.randn(8, 16, requires_grad=True)
    m = _mask("0.5", w.shape, "cpu")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = ops.masked_linear(x, w, m)
        yc = ops.masked_conv2d(torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3), _mask("0.5", (3, 2, 3, 3), "cpu"))
    assert y.dtype == torch.bfloat16 and yc.dtype == torch.bfloat16
    y.float().sum().backward()
    assert w.grad.dtype == torch.float32 and torch.all(w.grad[~m] == 0)
    assert_close(y, F.linear(x.double(), torch.where(m, w, 0).double()), torch.bfloat16)


def test_opcheck():
    x = torch.randn(3, 5, requires_grad=True)
    w = torch.randn(4, 5, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    m = _mask("0.5", w.shape, "cpu")
    s = torch.rand(4, 5, requires_grad=True)
    gy = torch.randn(3, 4)
    lk = torch.ops.lth_kernels
    cases = [
        (lk.masked_linear.default, (x, w, m, b, False, "reference")),
        (lk.masked_linear.default, (x.detach()[None], w, m, None, True, "reference")),
        (lk.masked_linear_scores.default, (x, w, m, s, b, "reference")),
        (lk.masked_linear_grad_input.default, (gy, w.detach(), m, False, "reference")),
        (lk.masked_linear_grad_weight.default, (gy, x.detach(), m, "reference")),
        (lk.masked_linear_grad_scores.default, (gy, x.detach(), w.detach(), "reference")),
        (lk.masked_linear_grad_weight_and_scores.default, (gy, x.detach(), w.detach(), m, "reference")),
    ]
    xc = torch.randn(2, 4, 7, 6, requires_grad=True)
    wc = torch.randn(6, 2, 3, 3, requires_grad=True)
    mc = _mask("0.5", wc.shape, "cpu")
    conv = ([2, 1], [1, 0], [1, 2], 2)
    gyc = torch.randn(2, 6, 4, 2)
    cases += [
        (lk.masked_conv2d.default, (xc, wc, mc, torch.randn(6, requires_grad=True), *conv, False, "reference")),
        (lk.masked_conv2d_grad_input.default, (gyc, list(xc.shape), wc.detach(), mc, *conv, False, "reference")),
        (lk.masked_conv2d_grad_weight.default, (gyc, xc.detach(), mc, *conv, "reference")),
    ]
    for op, args in cases:
        torch.library.opcheck(op, args)


def test_compile_fullgraph_cpu_trace():
    # Tracing only (aot_eager: no C++ toolchain needed); the inductor run is the gpu test below.
    x = torch.randn(4, 6, requires_grad=True)
    w = torch.randn(5, 6, requires_grad=True)
    m = _mask("0.5", w.shape, "cpu")
    xc = torch.randn(1, 2, 6, 6, requires_grad=True)
    wc = torch.randn(3, 2, 3, 3, requires_grad=True)
    mc = _mask("0.5", wc.shape, "cpu")

    def f(x, w, xc, wc):
        return ops.masked_linear(x, w, m).sum() + ops.masked_conv2d(xc, wc, mc, None, 1, "same").sum()

    out = torch.compile(f, fullgraph=True, backend="aot_eager")(x, w, xc, wc)
    out.backward()
    got = [t.grad.clone() for t in (x, w, xc, wc)]
    for t in (x, w, xc, wc):
        t.grad = None
    f(x, w, xc, wc).backward()
    for g, t in zip(got, (x, w, xc, wc), strict=True):
        torch.testing.assert_close(g, t.grad)


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda x, w, m: ops.masked_linear(x, w, m.t()), ValueError, r"^mask: expected shape \(4, 5\)"),
        (lambda x, w, m: ops.masked_linear(x, w, m.float()), TypeError, r"^mask: expected dtype torch.bool"),
        (lambda x, w, m: ops.masked_linear(x, w.double(), m), ValueError, r"^weight: expected dtype torch.float32"),
        (lambda x, w, m: ops.masked_linear(x.int(), w, m), TypeError, r"^x: expected a float16"),
        (lambda x, w, m: ops.masked_linear(x[:, :3], w, m), ValueError, r"^x: expected last dim 5"),
        (lambda x, w, m: ops.masked_linear(x, w, m, torch.zeros(3)), ValueError, r"^bias: expected shape \(4,\)"),
        (lambda x, w, m: ops.masked_linear(x, w[None], m), ValueError, r"^weight: expected 2 dims"),
        (lambda x, w, m: ops.masked_linear(x, w, m, backend="nope"), ValueError, r"^backend: unknown backend"),
        (lambda x, w, m: ops.masked_linear_scores(x, w, m, w[:2]), ValueError, r"^scores: expected shape \(4, 5\)"),
        (lambda x, w, m: ops.masked_linear_scores(x, w, m, m), TypeError, r"^scores: expected a float16"),
        (lambda x, w, m: ops.masked_conv2d(x, w, m), ValueError, r"^x: expected \(B, C, H, W\)"),
    ],
)
def test_bad_input_linear(call, err, match):
    x, w, _ = _inputs((3,), 5, 4, torch.float32, "cpu")
    with pytest.raises(err, match=match):
        call(x, w, _mask("0.5", w.shape, "cpu"))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"groups": 3}, r"^groups: needs x.shape\[1\]"),
        ({"stride": 2, "padding": "same"}, r"^padding: 'same' needs stride 1"),
        ({"padding": (1, 2, 3)}, r"^padding: expected an int or two ints"),
        ({"padding": -1}, r"^padding: expected non-negative"),
        ({"stride": 0}, r"^stride/dilation: expected positive"),
        ({"dilation": 9}, r"^x: spatial size \(8, 8\)"),
    ],
)
def test_bad_input_conv(kwargs, match):
    x, w = torch.randn(2, 4, 8, 8), torch.randn(6, 2, 3, 3)
    args = {"stride": 1, "padding": 0, "dilation": 1, "groups": 2, **kwargs}
    with pytest.raises(ValueError, match=match):
        ops.masked_conv2d(x, w, _mask("0.5", w.shape, "cpu"), None, **args)


# --------------------------------------------------------------------------------------------- gpu


@pytest.mark.gpu
@pytest.mark.parametrize("backend", backends("masked_linear"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,k,n", [((8, 197), 384, 1536), ((4097,), 769, 129)])
def test_masked_linear_gpu_full_size(backend, dtype, batch, k, n, no_tf32):
    require_live("masked_linear", backend, "cuda")
    for kind in ("zeros", "ones", "0.5", "0.9", "0.99", "blocks"):
        x, w, b = (t.requires_grad_() for t in _inputs(batch, k, n, dtype, "cuda"))
        m = _mask(kind, (n, k), "cuda")
        scores = torch.rand(n, k, device="cuda", requires_grad=True)
        for with_scores in (False, True):
            for t in (x, w, b, scores):
                t.grad = None
            if with_scores:
                y = ops.masked_linear_scores(x, w, m, scores, b, backend=backend)
            else:
                y = ops.masked_linear(x, w, m, b, backend=backend)
            gy = torch.randn_like(y)
            y.backward(gy)
            want = _linear_oracle(x, w, m, b, gy, scores=True)
            own = _linear_oracle(x, w, m, b, gy, scores=True, dtype=dtype)  # cuBLAS in the dtype
            for got, r, o, what in zip((y, x.grad, w.grad, b.grad), want, own, ("y", "dx", "dw", "db")):
                assert_within_torch_error(got, r, o, msg=f"{what} mask={kind} scores={with_scores}")
            assert torch.all(w.grad[~m] == 0)
            if scores.grad is not None:
                assert_within_torch_error(scores.grad, want[4], own[4], msg=f"dscores mask={kind}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_masked_conv2d_gpu(dtype, no_tf32):
    x = torch.randn(8, 64, 32, 32, dtype=dtype, device="cuda", requires_grad=True)
    w = torch.randn(128, 64, 3, 3, dtype=dtype, device="cuda", requires_grad=True)
    m = _mask("0.9", w.shape, "cuda")
    y = ops.masked_conv2d(x, w, m, None, 1, 1)
    gy = torch.randn_like(y)
    y.backward(gy)
    want, own = (_conv_oracle(x, w, m, gy, d) for d in (torch.float64, dtype))  # own: cuDNN in the dtype
    for got, r, o, what in zip((y, x.grad, w.grad), want, own, ("y", "dx", "dw")):
        assert_within_torch_error(got, r, o, msg=what)
    assert torch.all(w.grad[~m] == 0)


def _conv_oracle(x, w, m, gy, dtype):
    xd, wd = (t.detach().to(dtype).requires_grad_() for t in (x, w))
    y = F.conv2d(xd, torch.where(m, wd, 0), None, 1, 1)
    y.backward(gy.to(dtype))
    return y, xd.grad, torch.where(m, wd.grad, 0)


@pytest.mark.gpu
def test_compile_fullgraph_gpu_masked_linear_model():
    from lth_kernels.nn import MaskedLinear

    torch._dynamo.reset()
    model = torch.nn.Sequential(MaskedLinear(64, 128), torch.nn.GELU(), MaskedLinear(128, 32)).cuda()
    for layer in (model[0], model[2]):
        layer.set_mask(torch.rand_like(layer.weight) > 0.7)
    ref = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 32)).cuda()
    ref.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(16, 64, device="cuda")
    y = compiled(x)
    y.square().sum().backward()
    ref(x).square().sum().backward()
    torch.testing.assert_close(y, ref(x), atol=1e-4, rtol=1e-4)
    for layer, dense in ((model[0], ref[0]), (model[2], ref[2])):
        torch.testing.assert_close(layer.weight.grad, dense.weight.grad * layer.mask)
        assert torch.all(layer.weight.grad[~layer.mask] == 0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_mask_grad_is_exact_where_semantics(dtype):
    from lth_kernels.ops.masked_matmul import _mask_grad_

    mask = _mask("0.5", (37, 29), "cpu")
    g = torch.randn(37, 29, dtype=dtype)
    g[0, :4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0])
    want = g.masked_fill(~mask, 0)
    got = _mask_grad_(g.clone(), mask)
    assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))  # bit for bit: +0.0 at pruned, kept untouched
    mask.fill_(True)  # an in-place write: the remembered integer mask must follow
    assert torch.equal(_mask_grad_(g.clone(), mask).view(torch.uint8), g.view(torch.uint8))
