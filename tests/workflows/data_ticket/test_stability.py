"""Ticket stability: Jaccard overlap, the flip's exact inverse, per-image values across views and checkpoints."""

import pytest
import torch

from lth_kernels.workflows.data_ticket.stability import (
    augmentation_stability,
    checkpoint_stability,
    jaccard,
    stability_record,
    unflip,
)

GRID = (4, 4)


def _brightest(k):
    """A selector stand-in: the k 2x2 patches of an 8x8 image with the largest pixel sums, sorted."""
    def select(x):
        sums = x.sum(1).unfold(1, 2, 2).unfold(2, 2, 2).sum((-1, -2)).flatten(1)  # (B, 16), row-major
        return sums.topk(k, dim=1).indices.sort(dim=1).values
    return select


def test_jaccard_hand_cases():
    a = torch.tensor([[0, 1, 2], [3, 4, 5]])
    b = torch.tensor([[0, 1, 2], [5, 6, 7]])
    assert jaccard(a, b).tolist() == [1.0, 1 / 5]
    with pytest.raises(ValueError, match=r"^a, b: expected \(B, K\)"):
        jaccard(a, b[:1])


def test_unflip_maps_flipped_patches_back():
    x = torch.randn(5, 1, 8, 8)
    select = _brightest(6)
    assert torch.equal(unflip(select(x.flip(-1)), GRID), select(x))
    assert unflip(torch.tensor([[0, 3, 5]]), GRID).tolist() == [[0, 3, 6]]  # (0,0)->(0,3), (0,3)->(0,0), (1,1)->(1,2)


def test_a_geometric_property_of_the_image_is_stable_and_random_draws_are_not():
    x = torch.randn(32, 1, 8, 8) * 3  # patch sums far apart: noise 0 changes nothing, flips are mapped back
    exact = augmentation_stability(_brightest(6), x, GRID, views=4, noise=0.0)
    assert exact.shape == (32,) and torch.all(exact == 1.0)
    g = torch.Generator().manual_seed(0)
    rand = lambda imgs: torch.stack([torch.randperm(16, generator=g)[:6].sort().values for _ in range(len(imgs))])
    drawn = augmentation_stability(rand, x, GRID, views=8)
    expect = 6 / (2 * 16 - 6)
    assert abs(float(drawn.mean()) - expect) < 0.06  # about the random-draw level


def test_checkpoint_stability_compares_every_earlier_step_with_the_last():
    x = torch.randn(10, 1, 8, 8)
    selects = {0: _brightest(6), 5: lambda imgs: _brightest(6)(-imgs), 9: _brightest(6)}
    out = checkpoint_stability(selects, x)
    assert sorted(out) == [0, 5] and torch.all(out[0] == 1.0)
    assert torch.allclose(out[5], jaccard(_brightest(6)(-x), _brightest(6)(x)))
    rec = stability_record(torch.ones(10), out, 6, 16)
    assert rec["checkpoints"]["0"]["mean"] == 1.0 and len(rec["augmentation"]["per_image"]) == 10
    assert rec["random_expectation"] == pytest.approx(6 / 26)
