"""gather_tokens / scatter_tokens: every live backend against a float64 plain-indexing oracle, fwd and bwd."""

import pytest
import torch

from lth_kernels.ops import _registry
from lth_kernels.ops.token_gather import gather_tokens, scatter_tokens

from ..conftest import HAS_CUDA, assert_close, backends, require_live


def _index(b, n, k, device, dtype=torch.int64):
    return torch.stack([torch.randperm(n, device=device)[:k] for _ in range(b)]).to(dtype)


def _rows(t, index):
    return t[torch.arange(t.shape[0], device=t.device)[:, None], index.long()]


def _oracle_gather(x, index, grad):
    xd = x.detach().double()
    gx = torch.zeros_like(xd)
    gx[torch.arange(x.shape[0])[:, None], index.long()] = grad.double()
    return _rows(xd, index), gx


@pytest.mark.parametrize("backend", backends("gather_tokens"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,n,k,c", [(2, 13, 7, 37), (1, 9, 1, 8), (3, 17, 17, 64), (2, 5, 3, 1), (1, 40, 0, 4),
                                     (2, 33, 19, 130)])
def test_gather_matches_oracle(backend, dtype, b, n, k, c, device):
    require_live("gather_tokens", backend, device)
    for idx_dtype in (torch.int32, torch.int64):
        x = torch.randn(b, n, c, device=device, dtype=dtype, requires_grad=True)
        index = _index(b, n, k, device, idx_dtype)
        out = gather_tokens(x, index, backend=backend)
        assert out.shape == (b, k, c) and out.dtype == dtype and out.is_contiguous()
        grad = torch.randn_like(out)
        (gx,) = torch.autograd.grad(out, x, grad) if k else (torch.zeros_like(x),)
        want, want_gx = _oracle_gather(x, index, grad)
        assert torch.equal(out.double(), want)  # a copy is exact
        assert torch.equal(gx.double(), want_gx)


@pytest.mark.parametrize("backend", backends("place_tokens"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("b,n,k,c", [(2, 13, 7, 37), (1, 9, 1, 8), (3, 17, 17, 64), (2, 31, 11, 130)])
def test_scatter_matches_oracle(backend, dtype, b, n, k, c, device):
    require_live("place_tokens", backend, device)
    base = torch.randn(b, n, c, device=device, dtype=dtype, requires_grad=True)
    src = torch.randn(b, k, c, device=device, dtype=dtype, requires_grad=True)
    index = _index(b, n, k, device, torch.int32)
    out = scatter_tokens(base, index, src, backend=backend)
    want = base.detach().double().clone()
    want[torch.arange(b)[:, None], index.long()] = src.detach().double()
    assert torch.equal(out.double(), want)
    grad = torch.randn_like(out)
    gb, gs = torch.autograd.grad(out, (base, src), grad)
    want_gb = grad.double().clone()
    want_gb[torch.arange(b)[:, None], index.long()] = 0
    assert torch.equal(gb.double(), want_gb)
    assert torch.equal(gs.double(), _rows(grad.double(), index))


@pytest.mark.parametrize("backend", backends("gather_tokens"))
def test_non_contiguous_inputs(backend, device):
    require_live("gather_tokens", backend, device)
    x = torch.randn(2, 24, 19, device=device).transpose(1, 2)[:, :, ::2]  # (2, 19, 12), channel stride 24
    index = _index(2, 19, 6, device)[:, ::1].t().contiguous().t()  # (2, 6), column-major
    x.requires_grad_(True)
    out = gather_tokens(x, index, backend=backend)
    grad = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, grad)
    want, want_gx = _oracle_gather(x, index, grad)
    assert torch.equal(out.double(), want) and torch.equal(gx.double(), want_gx)
    base = torch.randn(2, 12, 19, device=device).transpose(1, 2)
    src = torch.randn(2, 12, 6, device=device).transpose(1, 2)
    ref = scatter_tokens(base.contiguous(), index, src.contiguous(), backend="reference")
    assert torch.equal(scatter_tokens(base, index, src, backend=backend), ref)


@pytest.mark.parametrize("backend", backends("gather_tokens"))
def test_gather_then_scatter_round_trip(backend, device):
    require_live("gather_tokens", backend, device)
    x = torch.randn(4, 23, 48, device=device)
    index = _index(4, 23, 15, device)
    kept = gather_tokens(x, index, backend=backend)
    assert torch.equal(scatter_tokens(x, index, kept, backend=backend), x)


def test_backward_is_deterministic(device):
    # device-aware: the triton backend takes CPU tensors only under the interpreter
    x = torch.randn(3, 50, 33, device=device, requires_grad=True)
    index = _index(3, 50, 21, device)
    grad = torch.randn(3, 21, 33, device=device)
    grads = [torch.autograd.grad(gather_tokens(x, index, backend="triton"), x, grad)[0] for _ in range(2)]
    assert torch.equal(grads[0], grads[1])


def test_backward_hands_the_kernels_unit_stride_gradients(monkeypatch, device):
    """The CUDA kernels copy rows of unit channel stride, and ``.sum().backward()`` hands the ops an expanded
    (stride-0) gradient: the backward must make it unit-stride before any kernel sees it."""
    real, strides = _registry.implementation, []

    def recording(op, backend):
        fn = real(op, backend)

        def call(*args):
            strides.extend(a.stride(-1) for a in args if isinstance(a, torch.Tensor) and a.dim() == 3)
            return fn(*args)
        return call

    monkeypatch.setattr(_registry, "implementation", recording)
    backend = "cuda" if HAS_CUDA else "reference"
    base = torch.randn(2, 9, 5, device=device, requires_grad=True)
    src = torch.randn(2, 4, 5, device=device, requires_grad=True)
    index = _index(2, 9, 4, device, torch.int32)
    scatter_tokens(base, index, src, backend=backend).sum().backward()
    gather_tokens(base, index, backend=backend).sum().backward()
    assert strides and set(strides) == {1}
    # scatter sends 1 to the rows it keeps from base, gather to the rows it takes: every entry gets exactly 1
    assert torch.equal(base.grad, torch.ones_like(base)) and torch.equal(src.grad, torch.ones_like(src))


def test_double_backward_through_registered_ops():
    x = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    index = _index(2, 9, 4, "cpu")
    assert torch.autograd.gradcheck(lambda t: gather_tokens(t, index, backend="reference"), (x,))
    assert torch.autograd.gradgradcheck(lambda t: gather_tokens(t, index, backend="reference") ** 2, (x,))
    base = torch.randn(2, 9, 5, dtype=torch.float64, requires_grad=True)
    src = torch.randn(2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda b, s: scatter_tokens(b, index, s, backend="reference"), (base, src))


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda: gather_tokens(torch.randn(2, 5, 3), torch.tensor([[0, 1], [2, 2]])), ValueError,
         "index: indices of a row must be unique, row 1"),
        (lambda: gather_tokens(torch.randn(2, 5, 3), torch.tensor([[0, 5], [1, 2]])), ValueError,
         r"index: values must lie in \[0, 5\), got 5"),
        (lambda: gather_tokens(torch.randn(2, 5, 3), torch.tensor([[0, -1], [1, 2]])), ValueError,
         "index: values must lie in .*got -1"),
        (lambda: scatter_tokens(torch.randn(1, 5, 3), torch.tensor([[4, 4]]), torch.randn(1, 2, 3)), ValueError,
         "index: indices of a row must be unique"),
        (lambda: gather_tokens(torch.randn(2, 5, 3), torch.tensor([[0.0, 1.0]] * 2)), TypeError,
         "index: expected an int32 or int64"),
        (lambda: gather_tokens(torch.randn(2, 5, 3), torch.tensor([[0, 1]])), ValueError, r"index: expected shape"),
        (lambda: gather_tokens(torch.randn(5, 3), torch.tensor([[0, 1]])), ValueError, r"x: expected shape \(B, N"),
        (lambda: gather_tokens(torch.zeros(2, 5, 3, dtype=torch.int32), torch.tensor([[0], [1]])), TypeError,
         "x: expected a floating dtype"),
        (lambda: scatter_tokens(torch.randn(2, 5, 4), torch.tensor([[0], [1]]), torch.randn(2, 1, 3)), ValueError,
         "src: expected"),
        (lambda: scatter_tokens(torch.randn(2, 5, 3), torch.tensor([[0, 1], [1, 2]]), torch.randn(2, 1, 3)),
         ValueError, "index: expected K"),
        (lambda: gather_tokens(torch.randn(1, 5, 3), torch.tensor([[0]]), backend="nope"), ValueError,
         "backend: unknown backend"),
    ],
)
def test_bad_input_names_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_unchecked_mode_skips_validation_for_unique_indices():
    x = torch.randn(2, 7, 4)
    index = _index(2, 7, 3, "cpu")
    assert torch.equal(gather_tokens(x, index, checked=False), gather_tokens(x, index))


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_opcheck(backend, device):
    x = torch.randn(2, 11, 6, device=device, requires_grad=True)
    index = _index(2, 11, 5, device, torch.int32)
    torch.library.opcheck(torch.ops.lth_kernels.gather_tokens, (x, index, True, backend))
    src = torch.randn(2, 5, 6, device=device, requires_grad=True)
    torch.library.opcheck(torch.ops.lth_kernels.place_tokens, (x, index, src, src, 11, True, backend))
    torch.library.opcheck(torch.ops.lth_kernels.place_tokens, (None, index, src, src, 11, False, backend))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dtype,c", [(torch.bfloat16, 384), (torch.float16, 768), (torch.float32, 195),
                                     (torch.bfloat16, 7)])
def test_gpu_full_size(backend, dtype, c):
    require_live("gather_tokens", backend, "cuda")
    b, n, k = 256, 197, 98
    x = torch.randn(b, n, c, device="cuda", dtype=dtype, requires_grad=True)
    index = _index(b, n, k, "cuda", torch.int32)
    out = gather_tokens(x, index, backend=backend)
    grad = torch.randn_like(out)
    (gx,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(out, _rows(x.detach(), index))
    want = torch.zeros_like(x)
    want[torch.arange(b, device="cuda")[:, None], index.long()] = grad
    assert torch.equal(gx, want)
    # unaligned view: the CUDA kernel must fall back from 16-byte copies
    xs = x.detach()[:, :, 1:]
    assert torch.equal(gather_tokens(xs, index, backend=backend), _rows(xs, index))
    src = torch.randn(b, k, c, device="cuda", dtype=dtype)
    want = x.detach().clone()
    want[torch.arange(b, device="cuda")[:, None], index.long()] = src
    assert torch.equal(scatter_tokens(x.detach(), index, src, backend=backend), want)


@pytest.mark.gpu
def test_gpu_compile_fullgraph():
    x = torch.randn(8, 197, 384, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    index = _index(8, 197, 137, "cuda", torch.int32)

    def step(t):
        kept = gather_tokens(t, index) * 2
        return scatter_tokens(t, index, kept).float().square().sum()

    loss = torch.compile(step, fullgraph=True)(x)
    (g,) = torch.autograd.grad(loss, x)
    x2 = x.detach().clone().requires_grad_(True)
    loss2 = step(x2)
    (g2,) = torch.autograd.grad(loss2, x2)
    assert_close(loss, loss2, torch.bfloat16)
    assert torch.equal(g, g2)
