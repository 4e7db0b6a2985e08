"""sparse_attention: every live backend against a float64 explicit-softmax oracle, forward and backward."""

import math

import pytest
import torch

from lth_kernels.ops import BlockMask, block_mask_from_dense, sparse_attention
from lth_kernels.ops.sparse_attention import local_window_block_mask, strided_block_mask, swin_window_block_mask

from ..conftest import HAS_CUDA, assert_close, require_live

BACKENDS = ["reference", "triton"]



def _oracle(q, k, v, mask=None, scale=None):
    """float64 masked softmax attention on (B, H, L, d); fully masked rows -> 0."""
    q, k, v = (t.double() for t in (q, k, v))
    s = q @ k.transpose(-1, -2) * (scale or 1 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, -1).nan_to_num(0.0)
    return p @ v


def _index(b, n, k, device):
    return torch.stack([torch.randperm(n, device=device)[:k] for _ in range(b)])


def _rows(t, index):
    return torch.gather(t, 2, index.long()[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3]))


def _leaves(shape, dtype, device, n=3):
    return [torch.randn(shape, device=device, dtype=dtype, requires_grad=True) for _ in range(n)]


def _check(fn, oracle, inputs, dtype, tol_scale=1.0):
    """fn and oracle forward + backward on the same cotangent; oracle runs in float64 leaves."""
    out = fn(*inputs)
    dd = [t.detach().double().requires_grad_(True) for t in inputs]
    want = oracle(*dd)
    grad = torch.randn_like(want)
    assert_close(out, want, dtype)
    got_g = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    want_g = torch.autograd.grad(want, dd, grad)
    for g, w in zip(got_g, want_g):
        assert g.shape == w.shape
        assert_close(g, w, dtype)


DTYPES = [torch.float32, torch.float16]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,h,n,d", [(2, 2, 37, 16), (1, 1, 1, 32), (1, 3, 40, 24)])
def test_dense(backend, dtype, b, h, n, d, device):
    require_live("sparse_attention", backend, device)
    _check(lambda q, k, v: sparse_attention(q, k, v, backend=backend), _oracle, _leaves((b, h, n, d), dtype, device),
           dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("n,k", [(37, 19), (33, 1), (23, 23)])
def test_keep_index(backend, dtype, compact, n, k, device):
    require_live("sparse_attention", backend, device)
    index = _index(2, n, k, device).to(torch.int32)

    def oracle(q, k_, v):
        out = _oracle(_rows(q, index), _rows(k_, index), _rows(v, index))
        if compact:
            return out
        full = torch.zeros_like(q)
        return full.scatter(2, index.long()[:, None, :, None].expand_as(out), out)

    def fn(q, k_, v):
        return sparse_attention(q, k_, v, keep_index=index, compact=compact, backend=backend)

    _check(fn, oracle, _leaves((2, 2, n, 16), dtype, device), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_varlen(backend, dtype, device):
    require_live("sparse_attention", backend, device)
    lens = [7, 1, 33, 20]
    cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device=device)
    t = sum(lens)

    def oracle(q, k, v):
        outs = []
        for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
            outs.append(_oracle(*(x[s:e].transpose(0, 1)[None] for x in (q, k, v)))[0].transpose(0, 1))
        return torch.cat(outs)

    def fn(q, k, v):
        return sparse_attention(q, k, v, cu_seqlens=cu, max_seqlen=max(lens), backend=backend)

    _check(fn, oracle, _leaves((t, 3, 16), dtype, device), dtype)


def _mask(kind):
    if kind == "local":
        return local_window_block_mask(40, 4, block=16)
    if kind == "strided":
        return strided_block_mask(40, 7, local=3, block=16)
    if kind == "swin":
        return swin_window_block_mask((5, 7), 3, shift=1, block=16, prefix=1)  # 36 tokens
    if kind == "local32":  # 32-blocks: each is walked in 16-wide tiles on both axes, the last tile past the end
        return local_window_block_mask(40, 9, block=32)
    block = (32, 32) if kind == "random32" else (16, 32)
    dense = torch.rand(2, 1, 40, 40) > 0.5
    dense[0, 0, 3] = False  # a fully masked query row
    dense[:, :, :block[0], :32] = True  # a full block
    return block_mask_from_dense(dense, block)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind,dtype", [("local", torch.float32), ("strided", torch.float32),
                                        ("swin", torch.float32), ("random", torch.float32),
                                        ("random", torch.float16), ("local32", torch.float32),
                                        ("random32", torch.float32)])
def test_block_mask(backend, kind, dtype, device):
    require_live("sparse_attention", backend, device)
    bm = _mask(kind).to(device)
    n = bm.seq_len[0]
    _check(lambda q, k, v: sparse_attention(q, k, v, block_mask=bm, backend=backend),
           lambda q, k, v: _oracle(q, k, v, bm.mask), _leaves((2, 2, n, 16), dtype, device), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
def test_block_mask_over_kept_tokens(backend, device):
    require_live("sparse_attention", backend, device)
    index = _index(2, 50, 33, device)
    bm = local_window_block_mask(33, 5, block=16).to(device)

    def oracle(q, k, v):
        return _oracle(_rows(q, index), _rows(k, index), _rows(v, index), bm.mask)

    _check(lambda q, k, v: sparse_attention(q, k, v, keep_index=index, block_mask=bm, backend=backend), oracle,
           _leaves((2, 2, 50, 16), torch.float32, device), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_qkv_from_fused_projection(backend, device):
    require_live("sparse_attention", backend, device)
    b, n, h, d = 2, 29, 2, 16
    qkv = torch.randn(b, n, 3, h, d, device=device, requires_grad=True)
    index = _index(b, n, 11, device)

    def fn(t):
        q, k, v = t.permute(2, 0, 3, 1, 4).unbind(0)  # timm's layout: strided views, no copy
        return sparse_attention(q, k, v, keep_index=index, backend=backend)

    def oracle(t):
        q, k, v = t.permute(2, 0, 3, 1, 4).unbind(0)
        return _oracle(_rows(q, index), _rows(k, index), _rows(v, index))

    _check(fn, oracle, [qkv], torch.float32)


def test_block_mask_layout():
    mask = torch.zeros(40, 40, dtype=torch.bool)
    mask[:16, :16] = True  # full block (0, 0)
    mask[20, 35] = True  # partial block (1, 2)
    bm = block_mask_from_dense(mask, 16)
    assert bm.full_kv_num_blocks[0, 0].tolist() == [1, 0, 0]
    assert bm.full_kv_indices[0, 0, 0, 0].item() == 0
    assert bm.kv_num_blocks[0, 0].tolist() == [0, 1, 0]
    assert bm.kv_indices[0, 0, 1, 0].item() == 2
    assert bm.q_num_blocks[0, 0].tolist() == [0, 0, 1] and bm.q_indices[0, 0, 2, 0].item() == 1
    assert bm.full_q_num_blocks[0, 0].tolist() == [1, 0, 0]
    assert bm.density() == pytest.approx(2 / 9)
    # the tail block of a 40-long sequence counts as full when all its in-range entries are kept
    assert block_mask_from_dense(torch.ones(40, 40, dtype=torch.bool), 16).full_kv_num_blocks.sum().item() == 9


def test_swin_shift_matches_roll_and_region_mask():
    # Swin: roll by -s, window partition, region mask; compare attend-pairs in original coordinates.
    rows = cols = 8
    w, s = 4, 2
    bm = swin_window_block_mask((rows, cols), w, shift=s, block=16)
    r = torch.arange(rows)
    rolled = (r - s) % rows  # position of original row r after torch.roll(x, -s)
    win = rolled // w
    region = torch.where(rolled < rows - w, 0, torch.where(rolled < rows - s, 1, 2))
    same_r = (win[:, None] == win[None, :]) & (region[:, None] == region[None, :])
    # token index = r * cols + c; the column pattern equals the row pattern (square grid, same shift)
    want = same_r.repeat_interleave(cols, 0).repeat_interleave(cols, 1) & same_r.repeat(rows, rows)
    assert torch.equal(bm.mask[0, 0], want)


@pytest.mark.parametrize(
    "call,err,match",
    [
        (lambda: sparse_attention(torch.randn(1, 1, 5, 8), torch.randn(1, 1, 5, 8), torch.randn(1, 1, 6, 8)),
         ValueError, "v: expected shape"),
        (lambda: sparse_attention(*[torch.randn(1, 1, 5, 8)] * 3, keep_index=torch.tensor([[0, 0]])), ValueError,
         "keep_index: indices of a row must be unique"),
        (lambda: sparse_attention(*[torch.randn(1, 1, 5, 8)] * 3, keep_index=torch.tensor([[0, 7]])), ValueError,
         r"keep_index: values must lie in \[0, 5\), got 7"),
        (lambda: sparse_attention(*[torch.randn(1, 1, 5, 8)] * 3, keep_index=torch.tensor([0, 1])), ValueError,
         "keep_index: expected shape"),
        (lambda: sparse_attention(*[torch.randn(9, 1, 8)] * 3, cu_seqlens=torch.tensor([0, 9], dtype=torch.int32)),
         ValueError, "max_seqlen: expected a Python int"),
        (lambda: sparse_attention(*[torch.randn(9, 1, 8)] * 3, cu_seqlens=torch.tensor([0, 9]), max_seqlen=9),
         ValueError, "cu_seqlens: expected a 1-D int32"),
        (lambda: sparse_attention(*[torch.randn(1, 1, 20, 8)] * 3, block_mask=local_window_block_mask(21, 2,
                                                                                                     block=16)),
         ValueError, "block_mask: built for sequence lengths"),
        (lambda: local_window_block_mask(10, 2, block=24), ValueError, "block: expected a power of two"),
        (lambda: swin_window_block_mask((4, 4), 2, shift=2), ValueError, "shift: expected 0 <= shift"),
        (lambda: block_mask_from_dense(torch.ones(3, 3), 16), ValueError, "mask: expected a bool tensor"),
    ],
)
def test_bad_input_names_the_argument(call, err, match):
    with pytest.raises(err, match=match):
        call()


def test_opcheck(device):
    # device-aware: the triton backend takes CPU tensors only under the interpreter
    q, k, v = _leaves((1, 2, 21, 16), torch.float32, device)
    index = _index(1, 21, 9, device)
    bm = local_window_block_mask(9, 2, block=16, device=device)
    for backend in ("reference", "triton"):
        torch.library.opcheck(torch.ops.lth_kernels.sparse_attention,
                              (q, k, v, index, None, 0, bm.tensors(), 16, 16, 0.25, True, True, backend))
    torch.library.opcheck(torch.ops.lth_kernels.sparse_attention,
                          (q, k, v, None, None, 0, [], 0, 0, 0.25, True, True, "reference"))


@pytest.mark.gpu
@pytest.mark.parametrize("mode,d", [("dense", 64), ("keep", 64), ("keep_full", 64), ("varlen", 64), ("block", 64),
                                    ("block128", 64), ("block128", 128)])
def test_gpu_full_size_bf16(mode, d):
    b, h, n = 8, 6, 197
    dt = torch.bfloat16
    q, k, v = _leaves((b, h, n, d), dt, "cuda")
    kw, oracle = {}, (lambda q, k, v: _oracle(q, k, v))
    if mode.startswith("keep"):
        index = _index(b, n, 137, "cuda").int()
        kw = dict(keep_index=index, compact=mode == "keep")

        def oracle(q, k, v):
            out = _oracle(_rows(q, index), _rows(k, index), _rows(v, index))
            return out if mode == "keep" else torch.zeros_like(q).scatter(
                2, index.long()[:, None, :, None].expand_as(out), out)
    elif mode == "varlen":
        lens = [197, 120, 1, 64, 150]
        cu = torch.tensor([0] + list(torch.tensor(lens).cumsum(0)), dtype=torch.int32, device="cuda")
        q, k, v = _leaves((sum(lens), h, d), dt, "cuda")
        kw = dict(cu_seqlens=cu, max_seqlen=max(lens))

        def oracle(q, k, v):
            return torch.cat([_oracle(*(x[s:e].transpose(0, 1)[None] for x in (q, k, v)))[0].transpose(0, 1)
                              for s, e in zip(cu[:-1].tolist(), cu[1:].tolist())])
    elif mode.startswith("block"):  # 128-blocks are walked in smaller tiles (see _sparse_attention_triton._TILES)
        bm = swin_window_block_mask((14, 14), 7, shift=3, block=128 if mode == "block128" else 64,
                                    prefix=1).to("cuda")
        kw = dict(block_mask=bm)

        def oracle(q, k, v):
            return _oracle(q, k, v, bm.mask)

    _check(lambda q, k, v: sparse_attention(q, k, v, backend="triton", **kw), oracle, [q, k, v], dt)


@pytest.mark.gpu
def test_gpu_compile_fullgraph():
    q, k, v = _leaves((4, 6, 197, 64), torch.bfloat16, "cuda")
    index = _index(4, 197, 99, "cuda").int()
    fn = torch.compile(lambda q, k, v: sparse_attention(q, k, v, keep_index=index).float().square().sum(),
                       fullgraph=True)
    loss = fn(q, k, v)
    grads = torch.autograd.grad(loss, (q, k, v))
    loss2 = sparse_attention(q, k, v, keep_index=index).float().square().sum()
    grads2 = torch.autograd.grad(loss2, (q, k, v))
    assert_close(loss, loss2, torch.bfloat16)
    for g, g2 in zip(grads, grads2):
        assert torch.equal(g, g2)


def test_block_mask_is_a_dataclass_with_flex_layout():
    bm = local_window_block_mask((4, 5), 1, block=16, prefix=1)
    assert isinstance(bm, BlockMask) and bm.seq_len == (21, 21) and bm.block_size == (16, 16)
    assert bm.kv_indices.dtype == torch.int32 and bm.kv_indices.shape == (1, 1, 2, 2)
    # CLS (token 0) sees every token, token 1 (grid 0,0) sees its 3x3 neighbourhood clipped to the grid + CLS
    assert bm.mask[0, 0, 0].all()
    assert bm.mask[0, 0, 1].nonzero().flatten().tolist() == [0, 1, 2, 6, 7]
    if HAS_CUDA:
        assert bm.to("cuda").mask.is_cuda
