"""A validation split: a seeded, class-balanced hold-out from the training split.

Selecting a model (best step, early stopping) by its test accuracy is selection on the test set; the
hold-out gives a number to select by that the test set never sees. ``validation_indices`` picks
``size // C`` images of each of the ``C`` classes (one more for the first ``size % C`` classes), at seeded
random places within each class, and ``hold_out`` cuts a data set in two with them: the training part keeps
the training transform, the validation part gets the test set's (no augmentation).
"""

from __future__ import annotations

import copy

import torch
from torch.utils.data import Dataset, Subset

from lth_kernels.data.resident import ResidentImageDataset
from lth_kernels.data.tensor import TensorImageDataset


def dataset_labels(ds) -> torch.Tensor:
    """The labels of ``ds`` as an int64 tensor, without loading images where the data set holds them
    (``TensorImageDataset.labels``, torchvision's ``targets``); otherwise by iterating ``ds``."""
    if isinstance(ds, TensorImageDataset):
        return ds.labels
    if isinstance(ds, ResidentImageDataset):
        return ds.tensors[1]
    targets = getattr(ds, "targets", None)
    if targets is not None:
        return torch.as_tensor(targets, dtype=torch.int64)
    return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))], dtype=torch.int64)


def validation_indices(labels, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, val_idx)``, both sorted: a class-balanced draw of ``size`` indices of ``labels`` (seeded by
    ``seed``) and the rest. ``size == 0``: everything is training."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    n = labels.numel()
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size < n:
        raise ValueError(f"validation: expected an int in [0, {n}) (images held out of the {n} training images), "
                         f"got {size!r}")
    if size == 0:
        return torch.arange(n), torch.empty(0, dtype=torch.int64)
    classes = torch.unique(labels)  # sorted
    per_class = [size // len(classes) + (i < size % len(classes)) for i in range(len(classes))]
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, k in zip(classes.tolist(), per_class):
        members = torch.nonzero(labels == c).flatten()
        if k >= members.numel():
            raise ValueError(f"validation: {size} held-out images need {k} of class {c}, which has only "
                             f"{members.numel()} training images (at least one must stay for training)")
        picked.append(members[torch.randperm(members.numel(), generator=g)[:k]])
    val = torch.cat(picked).sort().values
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return torch.nonzero(keep).flatten(), val


def _eval_view(ds, test_ds):
    """``ds`` read with ``test_ds``'s transform (a shallow copy: the images are shared, not copied)."""
    if isinstance(ds, ResidentImageDataset):  # the same pixels, without the training crop and flip
        return ResidentImageDataset(*ds.tensors, ds.mean, ds.std)
    if hasattr(ds, "transform") and hasattr(test_ds, "transform"):
        view = copy.copy(ds)
        view.transform = test_ds.transform
        return view
    return ds  # in-memory sets carry no per-sample transform


def _take(ds, idx: torch.Tensor):
    if isinstance(ds, ResidentImageDataset):  # stays on the device pipeline
        return ResidentImageDataset(ds.tensors[0][idx], ds.tensors[1][idx], ds.mean, ds.std,
                                    crop_padding=ds.crop_padding, flip=ds.flip)
    if isinstance(ds, TensorImageDataset):  # stays in memory: the trainer keeps indexing it on the device
        part = TensorImageDataset(ds.images[idx], ds.labels[idx])
        if hasattr(ds, "batch_transform"):
            part.batch_transform = ds.batch_transform
        return part
    return Subset(ds, idx.tolist())


def hold_out(train_ds: Dataset, test_ds: Dataset, size: int, seed: int = 0) -> tuple[Dataset, Dataset | None]:
    """``(train_part, val_part)``: ``size`` class-balanced training images (``validation_indices``) moved to a
    validation set read like the test set; ``size == 0``: ``(train_ds, None)``."""
    if size == 0:
        return train_ds, None
    train_idx, val_idx = validation_indices(dataset_labels(train_ds), size, seed)
    return _take(train_ds, train_idx), _take(_eval_view(train_ds, test_ds), val_idx)
