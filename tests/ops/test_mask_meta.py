"""pack_mask / unpack_mask / tile_occupancy: every live backend (the reference too) against oracles written from
the definitions (bit j of word w is column 32 w + j; a tile is occupied when any of its entries is kept), on odd
shapes."""

import math

import pytest
import torch

from lth_kernels import ops
from lth_kernels.ops import _registry
from lth_kernels.ops.mask_meta import pack_mask_reference, tile_occupancy_reference, unpack_mask_reference

from ..conftest import backends, require_live

SHAPES = [(1,), (31,), (32,), (33,), (7, 97), (129, 1), (3, 5, 64), (0, 5), (4, 0)]



def _masks(shape, device):
    yield torch.zeros(shape, dtype=torch.bool, device=device)
    yield torch.ones(shape, dtype=torch.bool, device=device)
    for p in (0.5, 0.9, 0.99):
        yield torch.rand(shape, device=device) > p


def _pack_oracle(mask: torch.Tensor) -> torch.Tensor:
    """Word by word in Python integers, as two's-complement int32."""
    cols = mask.shape[-1]
    words = (cols + 31) // 32
    rows = mask.reshape(math.prod(mask.shape[:-1]), cols).tolist()
    out = []
    for row in rows:
        for w in range(words):
            v = sum(1 << j for j in range(32) if 32 * w + j < cols and row[32 * w + j])
            out.append(v - 2**32 if v >= 2**31 else v)
    return torch.tensor(out, dtype=torch.int32).reshape(*mask.shape[:-1], words)


def _occupancy_oracle(mask: torch.Tensor, bm: int, bn: int) -> torch.Tensor:
    """Tile by tile: any kept entry in the (clipped) slice."""
    rows, cols = mask.shape
    tiles = [[bool(mask[i:i + bm, j:j + bn].any()) for j in range(0, cols, bn)] for i in range(0, rows, bm)]
    return torch.tensor(tiles, dtype=torch.bool).reshape(-(-rows // bm), -(-cols // bn))


def test_reference_bit_layout():
    mask = torch.zeros(2, 40, dtype=torch.bool)
    mask[0, 0] = mask[0, 31] = mask[1, 33] = True
    packed = pack_mask_reference(mask)
    assert packed.tolist() == [[1 | (1 << 31) - 2**32, 0], [0, 2]]
    assert torch.equal(unpack_mask_reference(packed, 40), mask)


def test_reference_occupancy_hand_case():
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[4, 6] = True
    mask[0, 2] = True
    occ = tile_occupancy_reference(mask, 2, 3)
    assert occ.tolist() == [[True, False, False], [False, False, False], [False, False, True]]


@pytest.mark.parametrize("backend", backends("pack_mask"))
@pytest.mark.parametrize("shape", SHAPES)
def test_pack_unpack_matches_the_definition(backend, shape, device):
    if backend == "cpu":
        device = torch.device("cpu")
    require_live("pack_mask", backend, device)
    for mask in _masks(shape, device):
        packed = ops.pack_mask(mask, backend=backend)
        assert packed.dtype == torch.int32 and packed.shape == (*shape[:-1], (shape[-1] + 31) // 32)
        assert torch.equal(packed.cpu(), _pack_oracle(mask.cpu()))
        assert torch.equal(ops.unpack_mask(packed, shape[-1], backend=backend).cpu(), mask.cpu())


@pytest.mark.parametrize("backend", backends("tile_occupancy"))
@pytest.mark.parametrize("shape,block", [((7, 97), (2, 32)), ((64, 64), (64, 64)), ((129, 70), (16, 32)),
                                         ((33, 9), (4, 4)), ((10, 10), (3, 5)), ((0, 4), (2, 2))])
def test_tile_occupancy_matches_the_definition(backend, shape, block, device):
    if backend == "cpu":
        device = torch.device("cpu")
    require_live("tile_occupancy", backend, device)
    for mask in _masks(shape, device):
        occ = ops.tile_occupancy(mask, block, backend=backend)
        assert torch.equal(occ.cpu(), _occupancy_oracle(mask.cpu(), *block))


def test_non_contiguous_input():
    mask = (torch.rand(40, 70) > 0.5).t()
    for backend in ("reference", "cpu"):
        if not _registry.ops()["pack_mask"].status(backend, "cpu")[0]:
            continue
        assert torch.equal(ops.pack_mask(mask, backend=backend), _pack_oracle(mask))
        assert torch.equal(ops.tile_occupancy(mask, (8, 8), backend=backend), _occupancy_oracle(mask, 8, 8))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: ops.pack_mask(torch.zeros(3, 4)), "mask: expected dtype torch.bool"),
        (lambda: ops.pack_mask(torch.tensor(True)), "mask: expected at least 1 dim"),
        (lambda: ops.unpack_mask(torch.zeros(3, 2, dtype=torch.int32), 65), "cols: needs ceil"),
        (lambda: ops.unpack_mask(torch.zeros(3, 2), 40), "packed: expected an int32"),
        (lambda: ops.tile_occupancy(torch.zeros(3, dtype=torch.bool)), "mask: expected 2 dims"),
        (lambda: ops.tile_occupancy(torch.zeros(3, 3, dtype=torch.bool), (0, 4)), "block: expected two positive"),
        (lambda: ops.pack_mask(torch.zeros(3, dtype=torch.bool), backend="nope"), "backend: unknown backend"),
    ],
)
def test_bad_input_names_the_argument(call, match):
    with pytest.raises((TypeError, ValueError), match=match):
        call()


def test_opcheck():
    mask = torch.rand(9, 70) > 0.5
    backend = _registry.resolve("pack_mask", "cpu")
    torch.library.opcheck(torch.ops.lth_kernels.pack_mask, (mask, backend))
    torch.library.opcheck(torch.ops.lth_kernels.unpack_mask, (ops.pack_mask(mask), 70, backend))
    torch.library.opcheck(torch.ops.lth_kernels.tile_occupancy, (mask, 4, 16, backend))


@pytest.mark.gpu
def test_gpu_large_matches_reference():
    mask = torch.rand(4096, 3072, device="cuda") > 0.9
    for backend in ("cuda", "triton"):
        packed = ops.pack_mask(mask, backend=backend)
        assert torch.equal(packed.cpu(), pack_mask_reference(mask.cpu()))
        assert torch.equal(ops.unpack_mask(packed, 3072, backend=backend), mask)
        assert torch.equal(ops.tile_occupancy(mask, (64, 64), backend=backend).cpu(),
                           tile_occupancy_reference(mask.cpu(), 64, 64))


@pytest.mark.gpu
def test_gpu_compile_fullgraph():
    mask = torch.rand(256, 300, device="cuda") > 0.5
    fn = torch.compile(lambda m: ops.unpack_mask(ops.pack_mask(m), 300), fullgraph=True)
    assert torch.equal(fn(mask), mask)
