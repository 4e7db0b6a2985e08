"""How the Trainer turns a data set into device batches: the device pipeline or the loader pipeline.

* **device**: a data set with ``.tensors = (inputs, labels)`` (and ``pipeline != "loader"``) is moved to the
  training device once; a batch is ``inputs[idx]`` on that device, passed through the data set's optional
  ``batch_transform(x, generator)`` (normalisation and augmentation as batched tensor ops, e.g.
  ``ResidentImageDataset``). No worker, no per-sample Python, no host-to-device copy per step.
* **loader**: any map-style data set, through one ``DataLoader`` per split kept for the Trainer's life:
  ``num_workers`` processes (persistent across epochs), pinned memory and prefetching on CUDA.

Both follow ``EpochSampler``'s order, and the random transforms of training batch ``s`` are seeded with
``batch_seed(data_order_seed, s, rank)``: the device pipeline through a generator on the device, the loader
by seeding the global generators around the fetch of the whole batch (in whichever worker fetches it). A
run is therefore reproducible and resumes bit-exactly whatever ``num_workers`` is, and a rewound run draws
the same crops as the run it was rewound from.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from lth_kernels.training.data_order import EpochSampler, batch_seed
from lth_kernels.training.seed import seeded


def resident_tensors(ds):
    """``(inputs, labels)`` of a data set the device pipeline can hold, else None."""
    if getattr(ds, "pipeline", "device") == "loader":
        return None
    t = getattr(ds, "tensors", None)
    return t if isinstance(t, (tuple, list)) and len(t) == 2 and all(isinstance(x, torch.Tensor) for x in t) else None


class SeededBatches(Dataset):
    """``ds`` read a batch at a time under the batch's seed: keys are ``(seed, index)`` pairs and a batch's
    keys share one seed (``__getitems__`` is what the DataLoader calls per batch)."""

    def __init__(self, ds):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitems__(self, keys: list[tuple[int, int]]) -> list:
        with seeded(keys[0][0]):
            return [self.ds[i] for _, i in keys]

    def __getitem__(self, key: tuple[int, int]):
        return self.__getitems__([key])[0]


class KeyedBatchSampler(Sampler):
    """This rank's batches of the current epoch (``set_epoch``) as lists of ``(batch seed, index)``."""

    def __init__(self, sampler: EpochSampler):
        self.sampler = sampler
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __iter__(self):
        s = self.sampler
        rows = s.batch_indices(self.epoch)[self.start_batch :].tolist()
        for b, row in enumerate(rows, self.epoch * s.num_batches + self.start_batch):
            seed = batch_seed(s.seed, b, s.rank)
            yield [(seed, i) for i in row]

    def __len__(self) -> int:
        return self.sampler.num_batches - self.start_batch


class Feed:
    """Training and evaluation (test, and an optional validation hold-out) batches of one Trainer, on ``device``."""

    def __init__(self, train_ds, test_ds, sampler: EpochSampler, device: torch.device, *, num_workers: int,
                 eval_batch_size: int, rank: int = 0, world_size: int = 1, val_ds=None):
        self.train_ds, self.test_ds, self.sampler, self.device = train_ds, test_ds, sampler, device
        self.num_workers, self.eval_batch_size = num_workers, eval_batch_size
        self.rank, self.world_size = rank, world_size
        self.train_tensors = self._on_device(train_ds)
        self.eval_sets = {"test": test_ds, **({"val": val_ds} if val_ds is not None else {})}
        self._eval_tensors = {k: self._on_device(ds) for k, ds in self.eval_sets.items()}
        self.test_tensors = self._eval_tensors["test"]
        self._generator = torch.Generator(device=device) if self.train_tensors is not None else None
        self._train_loader, self._eval_loaders = None, {}
        self._keys = KeyedBatchSampler(sampler)

    @property
    def pipeline(self) -> str:
        """``device`` or ``loader``: how the training batches are made."""
        return "device" if self.train_tensors is not None else "loader"

    def _on_device(self, ds):
        t = resident_tensors(ds)
        return None if t is None else (t[0].to(self.device), t[1].to(self.device))

    def _loader(self, ds, **kwargs) -> DataLoader:
        workers = self.num_workers
        return DataLoader(ds, num_workers=workers, pin_memory=self.device.type == "cuda",
                          persistent_workers=workers > 0, prefetch_factor=4 if workers > 0 else None, **kwargs)

    def train_batches(self, epoch: int, start_batch: int):
        """This rank's training batches of ``epoch`` from ``start_batch`` on, on the device."""
        if self.train_tensors is not None:
            x_all, y_all = self.train_tensors
            s = self.sampler
            idx = s.batch_indices(epoch)[start_batch:].to(self.device)
            transform = getattr(self.train_ds, "batch_transform", None)
            for b, row in enumerate(idx, epoch * s.num_batches + start_batch):
                x = x_all[row]
                if transform is not None:
                    x = transform(x, self._generator.manual_seed(batch_seed(s.seed, b, s.rank)))
                yield x, y_all[row]
            return
        if self._train_loader is None:
            self._train_loader = self._loader(SeededBatches(self.train_ds), batch_sampler=self._keys)
        self._keys.set_epoch(epoch, start_batch)
        for x, y in self._train_loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def test_batches(self, split: str = "test"):
        """This rank's share of the ``split`` set (``test``, or ``val`` when the Trainer has one), in order,
        on the device."""
        ds, tensors = self.eval_sets[split], self._eval_tensors[split]
        if tensors is not None:
            x_all, y_all = tensors
            transform = getattr(ds, "batch_transform", None)
            idx = torch.arange(self.rank, len(y_all), self.world_size, device=self.device)
            for chunk in idx.split(self.eval_batch_size):
                x = x_all[chunk]
                yield (transform(x) if transform is not None else x), y_all[chunk]
            return
        if split not in self._eval_loaders:
            subset = Subset(ds, range(self.rank, len(ds), self.world_size))
            # its own generator: a DataLoader draws its workers' base seed from the global RNG otherwise, and the
            # training augmentation would then depend on how often the model is evaluated
            self._eval_loaders[split] = self._loader(subset, batch_size=self.eval_batch_size, shuffle=False,
                                                     generator=torch.Generator())
        for x, y in self._eval_loaders[split]:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def close(self) -> None:
        """Let the loader workers go (they would otherwise live as long as the Trainer)."""
        self._train_loader, self._eval_loaders = None, {}
