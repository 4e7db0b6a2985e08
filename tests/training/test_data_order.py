"""The training data order (``training/data_order.py``): a pure function of (seed, epoch), full global batches,
ranks taking interleaved slices of the same global batch, and resumption skipping exactly the batches done."""

import hashlib
import itertools

import pytest
import torch

from lth_kernels.training.data_order import EpochSampler, batch_seed, epoch_seed


def test_epoch_seeds_are_63_bit_and_distinct_per_pair():
    pairs = list(itertools.product(range(8), range(8)))
    seeds = [epoch_seed(s, e) for s, e in pairs]
    assert all(0 <= x < 2**63 for x in seeds)  # fits torch.Generator.manual_seed and an int64
    assert max(seeds) >= 2**62  # uses the whole range (not a narrower hash)
    assert len(set(seeds)) == len(pairs)  # unlike seed + epoch: (1, 2) and (2, 1) differ
    assert seeds == [epoch_seed(s, e) for s, e in pairs]  # a pure function


def test_seeds_follow_the_documented_formula():
    # the data order of existing runs (resumed, rewound, reproduced) depends on it not changing
    def h(text):
        return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1

    assert epoch_seed(3, 17) == h("3:17")
    assert batch_seed(3, 17, 2) == h("3:batch17:2")


def test_batch_seeds_differ_per_step_and_rank_and_from_epoch_seeds():
    keys = list(itertools.product(range(3), range(6), range(3)))
    seeds = [batch_seed(s, step, r) for s, step, r in keys]
    assert all(0 <= x < 2**63 for x in seeds)
    assert len(set(seeds)) == len(keys)
    assert batch_seed(5, 2) == batch_seed(5, 2, 0)  # rank 0 is the default
    assert not set(seeds) & {epoch_seed(s, e) for s in range(3) for e in range(6)}


def test_sampler_orders_are_pure_functions_of_seed_and_epoch():
    a, b = EpochSampler(50, 8, seed=3), EpochSampler(50, 8, seed=3)
    assert torch.equal(a.batch_indices(0), b.batch_indices(0))
    assert torch.equal(a.batch_indices(4), b.batch_indices(4))
    assert not torch.equal(a.batch_indices(0), a.batch_indices(1))
    assert not torch.equal(a.batch_indices(0), EpochSampler(50, 8, seed=4).batch_indices(0))
    # the order follows the epoch's seed: a permutation drawn from a generator seeded with epoch_seed
    perm = torch.randperm(50, generator=torch.Generator().manual_seed(epoch_seed(3, 2)))
    assert torch.equal(a.batch_indices(2).reshape(-1), perm[:48])


@pytest.mark.parametrize("n,batch", [(50, 8), (48, 8), (9, 9), (17, 4)])
def test_sampler_full_batches_without_repeats(n, batch):
    s = EpochSampler(n, batch, seed=0)
    s.set_epoch(1)
    idx = s.batch_indices(1)
    assert s.num_batches == n // batch and s.local_batch_size == batch
    assert idx.shape == (n // batch, batch) and idx.dtype == torch.int64
    flat = idx.reshape(-1).tolist()
    assert len(set(flat)) == len(flat) == (n // batch) * batch  # the tail is dropped, nothing twice
    assert all(0 <= i < n for i in flat)
    assert len(s) == len(flat) and list(s) == flat


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_take_interleaved_slices_of_the_same_global_batch(world):
    n, batch, seed = 70, 8, 11
    full = EpochSampler(n, batch, seed).batch_indices(3)
    parts = [EpochSampler(n, batch, seed, rank=r, world_size=world) for r in range(world)]
    for r, p in enumerate(parts):
        assert p.local_batch_size == batch // world
        assert torch.equal(p.batch_indices(3), full[:, r::world])
        p.set_epoch(3)
        assert len(p) == (n // batch) * (batch // world) == len(list(p))
    # together the ranks see each global batch exactly once
    got = torch.cat([p.batch_indices(3) for p in parts], dim=1).sort(dim=1).values
    assert torch.equal(got, full.sort(dim=1).values)


def test_set_epoch_resumes_mid_epoch_at_the_same_batches():
    s = EpochSampler(40, 4, seed=7, rank=1, world_size=2)
    s.set_epoch(2)
    whole = list(s)
    assert whole == s.batch_indices(2).reshape(-1).tolist()
    s.set_epoch(2, start_batch=3)
    assert (s.epoch, s.start_batch) == (2, 3)
    assert list(s) == whole[3 * 2:]  # 3 batches of 2 local samples skipped
    assert len(s) == (10 - 3) * 2
    s.set_epoch(5)  # a new epoch starts from its first batch again
    assert s.start_batch == 0 and list(s) == s.batch_indices(5).reshape(-1).tolist()


def test_fresh_sampler_starts_at_epoch_zero():
    s = EpochSampler(12, 3, seed=1)
    assert (s.epoch, s.start_batch) == (0, 0)
    assert list(s) == s.batch_indices(0).reshape(-1).tolist()


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_samples=20, batch_size=6, seed=0, world_size=4), r"--dataset\.batch_size: 6 is not divisible by the 4"),
    (dict(num_samples=5, batch_size=8, seed=0), r"--dataset\.batch_size: 8 is larger than the training set "
                                                 r"\(5 samples\)"),
])
def test_bad_batch_sizes_name_the_option(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EpochSampler(**kwargs)


@pytest.mark.parametrize("repeats", [2, 3])
def test_repeated_augmentation_repeats_each_index_in_a_row(repeats):
    # DeiT's repeated augmentation: the epoch's permutation with each index `repeats` times in a row, cut to whole
    # batches (n = 40, batches of 8: 5 batches, the first 40 / repeats indices of the permutation)
    plain = EpochSampler(40, 8, seed=3).batch_indices(1).reshape(-1)
    got = EpochSampler(40, 8, seed=3, repeats=repeats).batch_indices(1).reshape(-1)
    want = torch.tensor([int(i) for i in plain for _ in range(repeats)][:40])
    assert torch.equal(got, want)


def test_repeats_below_one_are_refused_naming_the_flag():
    with pytest.raises(ValueError, match=r"^--training.repeated_augment: must be >= 1, got 0$"):
        EpochSampler(40, 8, seed=0, repeats=0)
