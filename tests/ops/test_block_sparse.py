"""block_sparse: layout metadata vs a brute-force construction, every live backend vs a float64 oracle
(forward, dX, dW, dbias) over block sizes, densities and odd shapes, the functional sdd/dsd/dds, opcheck."""

import pytest
import torch

from lth_kernels.ops import _registry
from lth_kernels.ops import block_sparse as bs

from ..conftest import HAS_CUDA, assert_close, assert_within_torch_error, require_live

BACKENDS = ["reference", "triton"]



def _block_map(shape, block, density, device="cpu"):
    nbr, nbc = -(-shape[0] // block[0]), -(-shape[1] // block[1])
    return torch.rand(nbr, nbc, device=device) < density


def _oracle(x, w, emask, bias, gy, dtype=torch.float64):
    """float64 dense autograd on the masked weight; the weight gradient masked like the kernels'. With a
    low-precision ``dtype``: torch's own result in that dtype (the GPU tolerance rule's yardstick)."""
    x64 = x.detach().to(dtype).requires_grad_()
    w64 = w.detach().to(dtype).requires_grad_()
    b64 = bias.detach().to(dtype).requires_grad_() if bias is not None else None
    y = torch.nn.functional.linear(x64, w64 * emask, b64)
    y.backward(gy.to(dtype))
    return y, x64.grad, w64.grad, (b64.grad if b64 is not None else None)


# --------------------------------------------------------------------------------------------- layout


def _brute_force(block_map):
    nbr, nbc = block_map.shape
    blocks = [(r, c) for r in range(nbr) for c in range(nbc) if block_map[r, c]]
    row_offsets = [0]
    for r in range(nbr):
        row_offsets.append(row_offsets[-1] + sum(1 for b in blocks if b[0] == r))
    col_offsets = [0]
    for c in range(nbc):
        col_offsets.append(col_offsets[-1] + sum(1 for b in blocks if b[1] == c))
    t_order = sorted(range(len(blocks)), key=lambda i: (blocks[i][1], blocks[i][0]))
    return blocks, row_offsets, col_offsets, t_order


@pytest.mark.parametrize("shape,block,density", [((70, 50), (16, 32), 0.5), ((128, 128), (32, 32), 0.2),
                                                 ((1, 7), (16, 16), 1.0), ((97, 129), (64, 16), 0.3),
                                                 ((64, 64), (64, 64), 0.0), ((0, 5), (16, 16), 1.0)])
def test_layout_matches_brute_force(shape, block, density):
    block_map = _block_map(shape, block, density)
    lay = bs.BlockSparseLayout.from_block_map(block_map, shape, block)
    blocks, row_offsets, col_offsets, t_order = _brute_force(block_map)
    for t in lay.meta():
        assert t.dtype == torch.int32
    assert lay.nnz == len(blocks) and lay.blocks_shape == tuple(block_map.shape)
    assert lay.row_idx.tolist() == [b[0] for b in blocks] and lay.col_idx.tolist() == [b[1] for b in blocks]
    assert lay.row_offsets.tolist() == row_offsets and lay.col_offsets.tolist() == col_offsets
    assert lay.t_perm.tolist() == t_order
    assert lay.t_row_idx.tolist() == [blocks[i][0] for i in t_order]
    for order, offsets in ((lay.row_order, row_offsets), (lay.col_order, col_offsets)):
        counts = [offsets[i + 1] - offsets[i] for i in order.tolist()]
        assert sorted(order.tolist()) == list(range(len(offsets) - 1)) and counts == sorted(counts, reverse=True)
    assert torch.equal(lay.block_map(), block_map)


def test_layout_from_element_mask_uses_tile_occupancy_and_crops_edges():
    mask = torch.zeros(40, 70, dtype=torch.bool)
    mask[33, 69] = True  # lands in the partial last block (2, 2) at block (16, 32)
    mask[0, 0] = True
    lay = bs.BlockSparseLayout.from_mask(mask, (16, 32))
    assert lay.block_map().nonzero().tolist() == [[0, 0], [2, 2]]
    em = lay.element_mask()
    assert em.shape == (40, 70) and em[32:, 64:].all() and em.sum() == 16 * 32 + 8 * 6


def test_cache_hits_and_invalidation():
    mask = torch.rand(64, 64) > 0.5
    a = bs.block_layout(mask, (16, 16))
    assert bs.block_layout(mask, (16, 16)) is a
    assert bs.block_layout(mask, (16, 16), version=1) is not a  # the owner's version bump
    assert bs.block_layout(mask.clone(), (16, 16)) is not a  # another tensor, even if equal
    mask[:16, :16] = False  # in place: torch's version counter moves
    b = bs.block_layout(mask, (16, 16))
    assert b is not a and not b.block_map()[0, 0]
    assert bs.block_layout(mask, (32, 16)).block == (32, 16)


def test_detect_block_structure():
    emask = bs.expand_block_map(_block_map((100, 70), (32, 32), 0.5), (100, 70), (32, 32))
    emask[:32, :32] = True
    emask[32:64, :32] = False  # so 64-blocks cannot describe it
    assert bs.detect_block_structure(emask) == (32, 32)
    assert bs.detect_block_structure(emask, candidates=((16, 32),)) == (16, 32)
    assert bs.detect_block_structure(torch.rand(64, 64) > 0.5) is None
    assert bs.detect_block_structure(torch.ones(10, 10, dtype=torch.bool)) == (128, 128)
    assert bs.detect_block_structure(torch.ones(4, 4)) is None


# --------------------------------------------------------------------------------------------- numerics

CASES = [  # (N, K, M, block, density, dtype)
    (64, 64, 16, (16, 16), 0.5, torch.float32),
    (70, 50, 9, (16, 32), 0.6, torch.float32),
    (128, 96, 33, (32, 32), 0.3, torch.float16),
    (97, 129, 5, (32, 64), 0.5, torch.float32),
    (128, 128, 64, (64, 64), 0.05, torch.float32),
    (128, 128, 64, (64, 64), 1.0, torch.float16),
    (100, 130, 17, (64, 32), 0.5, torch.float16),
    (64, 96, 1, (32, 32), 0.0, torch.float32),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("N,K,M,block,density,dtype", CASES)
def test_linear_fwd_bwd_vs_float64(backend, N, K, M, block, density, dtype, device):
    require_live("block_sparse_linear", backend, device)
    # drawn on the CPU (the same numbers on every device), then moved
    w = torch.randn(N, K, dtype=dtype).to(device)
    lay = bs.BlockSparseLayout.from_block_map(_block_map((N, K), block, density).to(device), (N, K), block)
    emask = lay.element_mask()
    x = torch.randn(2, M, K, dtype=dtype).to(device).requires_grad_()  # a batch dim, flattened by the op
    wp = w.clone().requires_grad_()
    bias = torch.randn(N, dtype=dtype).to(device).requires_grad_()
    gy = torch.randn(2, M, N, dtype=dtype).to(device)
    y = bs.block_sparse_linear(x, wp, lay, bias, backend=backend)
    y.backward(gy)
    y64, dx64, dw64, db64 = _oracle(x, w, emask, bias, gy)
    assert y.dtype == dtype and y.shape == (2, M, N)
    assert_close(y, y64, dtype)
    assert_close(x.grad, dx64, dtype)
    assert_close(wp.grad, dw64, dtype)
    assert_close(bias.grad, db64, dtype)
    assert torch.all(wp.grad[~emask] == 0), "dW must be exactly zero outside the kept blocks"


@pytest.mark.parametrize("backend", BACKENDS)
def test_linear_element_mask_and_block_map_inputs(backend, device):
    require_live("block_sparse_linear", backend, device)
    w, x = torch.randn(48, 40).to(device), torch.randn(7, 40).to(device)
    bmap = _block_map((48, 40), (16, 16), 0.5).to(device)
    emask = bs.expand_block_map(bmap, (48, 40), (16, 16))
    ref = x.double() @ (w.double() * emask).t()
    for spec in (emask, bmap):
        assert_close(bs.block_sparse_linear(x, w, spec, block=(16, 16), backend=backend), ref, torch.float32)


def test_non_contiguous_operands(device):
    w = torch.randn(64, 96).to(device).t()  # (96, 64) transposed view
    x = torch.randn(64, 20).to(device).t()  # (20, 64) transposed view
    lay = bs.BlockSparseLayout.from_block_map(_block_map((96, 64), (32, 32), 0.5).to(device), (96, 64), (32, 32))
    ref = x.double() @ (w.double() * lay.element_mask()).t()
    for backend in BACKENDS:
        if _registry.ops()["block_sparse_linear"].status(backend, device)[0]:
            assert_close(bs.block_sparse_linear(x, w, lay, backend=backend), ref, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_sdd_dsd_dds_and_their_gradients(backend, device):
    require_live("block_sparse_dds", backend, device)
    N, K, M = 64, 80, 24
    lay = bs.BlockSparseLayout.from_block_map(_block_map((N, K), (32, 16), 0.5).to(device), (N, K), (32, 16))
    em = lay.element_mask().double()
    w = torch.randn(N, K)
    cases = [  # (fn, args built from float tensors, dense float64 formula)
        (lambda a, w_: bs.dds(a, w_, lay, backend=backend), (torch.randn(M, N), w), lambda a, w_: a @ (w_ * em)),
        (lambda a, w_: bs.dds(a, w_, lay, transpose_w=True, backend=backend), (torch.randn(M, K), w),
         lambda a, w_: a @ (w_ * em).t()),
        (lambda w_, b: bs.dsd(w_, lay, b, backend=backend), (w, torch.randn(K, M)), lambda w_, b: (w_ * em) @ b),
        (lambda w_, b: bs.dsd(w_, lay, b, transpose_w=True, backend=backend), (w, torch.randn(N, M)),
         lambda w_, b: (w_ * em).t() @ b),
        (lambda a, b: bs.sdd(a, b, lay, backend=backend), (torch.randn(N, M), torch.randn(M, K)),
         lambda a, b: (a @ b) * em),
    ]
    for fn, args, formula in cases:
        args = [t.detach().clone().to(device).requires_grad_() for t in args]
        out = fn(*args)
        g = torch.randn_like(out)
        out.backward(g)
        args64 = [t.detach().double().requires_grad_() for t in args]
        ref = formula(*args64)
        ref.backward(g.double())
        assert_close(out, ref, torch.float32)
        for t, t64 in zip(args, args64, strict=True):
            assert_close(t.grad, t64.grad, torch.float32)


def test_reference_gradcheck_float64():
    lay = bs.BlockSparseLayout.from_block_map(_block_map((20, 33), (16, 16), 0.6), (20, 33), (16, 16))
    x = torch.randn(3, 33, dtype=torch.float64, requires_grad=True)
    w = torch.randn(20, 33, dtype=torch.float64, requires_grad=True)
    b = torch.randn(20, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: bs.block_sparse_linear(x, w, lay, b, backend="reference"),
                                    (x, w, b))


def test_autocast_casts_inputs():
    lay = bs.BlockSparseLayout.from_block_map(_block_map((32, 32), (16, 16), 0.5), (32, 32), (16, 16))
    x, w = torch.randn(4, 32), torch.randn(32, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = bs.block_sparse_linear(x, w, lay, backend="reference")
    assert y.dtype == torch.bfloat16


def test_opcheck(device):
    lay = bs.BlockSparseLayout.from_block_map(_block_map((40, 48), (16, 16), 0.5).to(device), (40, 48), (16, 16))
    x, w, b = (torch.randn(2, 5, 48).to(device), torch.randn(40, 48).to(device).requires_grad_(),
               torch.randn(40).to(device))
    a, a2, b2 = torch.randn(5, 40).to(device), torch.randn(40, 6).to(device), torch.randn(6, 48).to(device)
    meta = (*lay.meta(), 16, 16)
    for backend in BACKENDS:
        if not _registry.ops()["block_sparse_linear"].status(backend, device)[0]:
            continue
        torch.library.opcheck(torch.ops.lth_kernels.block_sparse_linear, (x.requires_grad_(), w, b, *meta, backend))
        torch.library.opcheck(torch.ops.lth_kernels.block_sparse_dds, (a, w, None, *meta, False, backend))
        torch.library.opcheck(torch.ops.lth_kernels.block_sparse_sdd, (a2, b2, *meta, backend))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool)),
         "block: required"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool),
                                        block=(8, 8)), "block: expected"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 7), torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool),
                                        block=(16, 16)), "x: expected"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8), torch.ones(3, 3, dtype=torch.bool),
                                        block=(16, 16)), "block_mask_or_layout: shape"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8), torch.ones(4, 8),
                                        block=(16, 16)), "block_mask_or_layout: expected a 2-D bool"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool),
                                        torch.randn(3), block=(16, 16)), "bias: expected"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8).half(), torch.randn(4, 8),
                                        torch.ones(4, 8, dtype=torch.bool), block=(16, 16)), "weight: dtype"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8),
                                        bs.BlockSparseLayout.from_mask(torch.ones(5, 8, dtype=torch.bool), (16, 16))),
         "layout is for shape"),
        (lambda: bs.block_sparse_linear(torch.randn(2, 8), torch.randn(4, 8), torch.ones(4, 8, dtype=torch.bool),
                                        block=(16, 16), backend="nope"), "backend: unknown"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


# --------------------------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("block", [(16, 16), (32, 64), (64, 64), (128, 128)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_gpu_full_size_vs_reference(block, dtype, no_tf32):
    N, K, M = 3072, 768, 4 * 197  # ViT-B fc1
    dev = "cuda"
    lay = bs.BlockSparseLayout.from_block_map(_block_map((N, K), block, 0.3, dev), (N, K), block)
    emask = lay.element_mask()
    w = (torch.randn(N, K, device=dev) / K**0.5).to(dtype).requires_grad_()
    x = torch.randn(M, K, device=dev, dtype=dtype, requires_grad=True)
    bias = torch.randn(N, device=dev, dtype=dtype, requires_grad=True)
    gy = torch.randn(M, N, device=dev, dtype=dtype)
    y = bs.block_sparse_linear(x, w, lay, bias, backend="triton")
    y.backward(gy)
    want, own = _oracle(x, w, emask, bias, gy), _oracle(x, w, emask, bias, gy, dtype)  # own: cuBLAS in the dtype
    for got, r, o, what in zip((y, x.grad, w.grad, bias.grad), want, own, ("y", "dx", "dw", "db")):
        assert_within_torch_error(got, r, o, msg=what)
    assert torch.all(w.grad[~emask] == 0)


@pytest.mark.gpu
def test_gpu_compile_fullgraph_fwd_bwd():
    N, K, M = 1024, 768, 512
    lay = bs.BlockSparseLayout.from_block_map(_block_map((N, K), (64, 64), 0.4, "cuda"), (N, K), (64, 64))
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    x = torch.randn(M, K, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    fn = torch.compile(lambda x, w: bs.block_sparse_linear(x, w, lay).float().square().sum(), fullgraph=True)
    fn(x, w).backward()
    emask = lay.element_mask()

    def grads(dtype):  # plain torch: float64 oracle, or torch's own in bf16
        xd, wd = (t.detach().to(dtype).requires_grad_() for t in (x, w))
        torch.nn.functional.linear(xd, wd * emask).float().square().sum().backward()
        return xd.grad, wd.grad * emask

    for got, r, o, what in zip((x.grad, w.grad), grads(torch.float64), grads(torch.bfloat16), ("dx", "dw")):
        assert_within_torch_error(got, r, o, msg=what)


@pytest.mark.gpu
def test_gpu_small_m_decode_regime():
    assert HAS_CUDA
    lay = bs.BlockSparseLayout.from_block_map(_block_map((768, 768), (64, 64), 0.1, "cuda"), (768, 768), (64, 64))
    w = torch.randn(768, 768, device="cuda", dtype=torch.bfloat16)
    wm = w * lay.element_mask()
    for m in (1, 3, 15):
        x = torch.randn(m, 768, device="cuda", dtype=torch.bfloat16)
        want, own = x.double() @ wm.double().t(), x @ wm.t()  # float64 oracle, torch's own bf16 GEMM
        assert_within_torch_error(bs.block_sparse_linear(x, w, lay), want, own, msg=f"M={m}")


def test_gpu_autotune_config_pruning():
    """The autotuned GPU configs must fit every block shape (checked here because autotuning needs CUDA)."""
    pytest.importorskip("triton")  # an optional dependency (the 'triton' extra); its reason names it
    from lth_kernels.ops import _block_sparse_triton as bst

    for bq in bs.BLOCK_SIZES:
        for m in (1, 15, 300):
            kept = bst._prune_dds(bst._DDS_CONFIGS, {"M": m}, BQ=bq, BP=16)
            assert kept and all(c.kwargs["BK"] <= bq for c in kept)
            assert all(c.kwargs["BLOCK_M"] <= 64 for c in kept) or m > 64
    for bm in bs.BLOCK_SIZES:
        for bn in bs.BLOCK_SIZES:
            kept = bst._prune_sdd(bst._SDD_CONFIGS, {"R": 64}, BM=bm, BN=bn)
            assert kept and all(bm % c.kwargs["BR"] == 0 and bn % c.kwargs["BC"] == 0 for c in kept)
