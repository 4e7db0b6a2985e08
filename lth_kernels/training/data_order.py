"""The training data order: a pure function of (data_order_seed, epoch).

Epoch ``e`` uses ``randperm(n)`` from a generator seeded with a hash of ``(seed, e)``, cut into
``n // batch_size`` global batches (the tail is dropped, so every step sees a full batch and every rank the
same number of samples); rank ``r`` of ``w`` takes elements ``r, r + w, ...`` of each global batch. A run
restarted or rewound at step K therefore sees exactly the batches of an uninterrupted run. The same
indices drive the device-resident path and the DataLoader path, and the random transforms of batch ``s`` are
seeded with ``batch_seed(seed, s, rank)`` on both.

Repeated augmentation (``repeats`` R > 1, DeiT's ``RASampler``): each element of the permutation is taken R
times in a row before the cut, so an epoch (still ``n // batch_size`` batches) holds about n / R distinct
images, each R times, with R different random transforms; under DDP the R copies land on R different ranks,
as in DeiT. timm's ``RepeatAugSampler`` is an epoch-seeded ``DistributedSampler``: it could not resume
mid-epoch or feed the device-resident path, hence the two lines here.
"""

from __future__ import annotations

import hashlib

import torch


def _hash63(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for epoch ``epoch`` (distinct for distinct (seed, epoch) pairs, unlike seed + epoch): the
    first 8 bytes of ``sha256(f"{seed}:{epoch}")`` read little-endian, shifted right by one. The formula is
    part of the format: changing it would change the data order of every existing run."""
    return _hash63(f"{seed}:{epoch}")


def batch_seed(seed: int, step: int, rank: int = 0) -> int:
    """The seed of the random data transforms of training batch ``step`` on ``rank`` (crops, flips, ...):
    a pure function of the data-order seed and the step, so a rewound or resumed run draws what the
    uninterrupted one drew, whichever pipeline and however many loader workers make the batch. The same
    formula as ``epoch_seed`` over ``f"{seed}:batch{step}:{rank}"``."""
    return _hash63(f"{seed}:batch{step}:{rank}")


class EpochSampler(torch.utils.data.Sampler):
    """Indices of this rank's samples for one epoch, in step order (a DistributedSampler-like sampler
    whose permutation is shared with the in-memory fast path). ``set_epoch(e, start_batch)`` selects the
    epoch and skips the batches already trained on when resuming mid-epoch."""

    def __init__(self, num_samples: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 repeats: int = 1):
        if batch_size % world_size:
            raise ValueError(f"--dataset.batch_size: {batch_size} is not divisible by the {world_size} ranks")
        if num_samples < batch_size:
            raise ValueError(f"--dataset.batch_size: {batch_size} is larger than the training set "
                             f"({num_samples} samples)")
        if repeats < 1:
            raise ValueError(f"--training.repeated_augment: must be >= 1, got {repeats}")
        self.n, self.batch_size, self.seed, self.repeats = num_samples, batch_size, seed, repeats
        self.rank, self.world_size = rank, world_size
        self.local_batch_size = batch_size // world_size
        self.num_batches = num_samples // batch_size
        self.epoch, self.start_batch = 0, 0

    def batch_indices(self, epoch: int) -> torch.Tensor:
        """``[num_batches, local_batch_size]`` int64 indices of this rank for ``epoch``."""
        g = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        perm = torch.randperm(self.n, generator=g)
        if self.repeats > 1:
            perm = perm.repeat_interleave(self.repeats)
        perm = perm[: self.num_batches * self.batch_size]
        return perm.view(self.num_batches, self.batch_size)[:, self.rank :: self.world_size]

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        return iter(self.batch_indices(self.epoch)[self.start_batch :].reshape(-1).tolist())

    def __len__(self) -> int:
        return (self.num_batches - self.start_batch) * self.local_batch_size
