"""In-memory image data sets."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset


class TensorImageDataset(Dataset):
    """Images ``[N, C, H, W]`` (float32, already normalised) and labels ``[N]`` (int64) held in memory.

    ``tensors`` is ``(images, labels)``, as in ``torch.utils.data.TensorDataset``: a trainer may batch by indexing
    these tensors directly (``images[idx]``, ``labels[idx]``) instead of using a DataLoader. That is exactly
    equivalent to iterating the data set, because no per-sample random transform is applied to in-memory data.
    ``images`` and ``labels`` name the same two tensors.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        if images.dim() != 4 or not images.is_floating_point():
            raise ValueError(f"images: expected a float [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise ValueError(f"labels: expected an int [N={images.shape[0]}] tensor, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        self.tensors = (images, labels.long())

    @property
    def images(self) -> torch.Tensor:
        return self.tensors[0]

    @property
    def labels(self) -> torch.Tensor:
        return self.tensors[1]

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.tensors[0][index], int(self.tensors[1][index])


def normalise(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, tuple, tuple]:
    """Normalise both splits per channel with the training split's mean and std."""
    mean = train.mean(dim=(0, 2, 3), keepdim=True)
    std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-12)
    as_tuple = lambda t: tuple(float(v) for v in t.flatten())
    return (train - mean) / std, (test - mean) / std, as_tuple(mean), as_tuple(std)
