"""Data sets that need no files: ``digits`` (the embedded default) and ``synthetic``.

Both are in memory (``TensorImageDataset``: ``.tensors = (images, labels)``) and apply no augmentation, so
``augment`` is accepted and ignored: random crops of 8x8 digits would destroy them, and unaugmented tensors let
a trainer batch by indexing, reproducibly.
"""

from __future__ import annotations

import torch

from lth_kernels.data._registry import DatasetInfo, register_dataset
from lth_kernels.data.tensor import TensorImageDataset, normalise


@register_dataset("digits")
def _digits(*, data_dir, download, augment, test_size: float = 0.2, split_seed: int = 0):
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes; no download).

    Pixels (0..16) are scaled to [0, 1], split into train/test with a fixed stratified split
    (``test_size=0.2``, ``split_seed=0``: 1,437 / 360 images), and normalised with the training split's mean/std.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.0 < test_size < 1.0:
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=split_seed, stratify=y)
    as_images = lambda a: torch.as_tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    x_tr, x_te, mean, std = normalise(as_images(x_tr), as_images(x_te))
    train = TensorImageDataset(x_tr.contiguous(), torch.as_tensor(y_tr))
    test = TensorImageDataset(x_te.contiguous(), torch.as_tensor(y_te))
    info = DatasetInfo("digits", 10, 1, (8, 8), len(train), len(test), mean, std)
    return train, test, info


@register_dataset("synthetic")
def _synthetic(*, data_dir, download, augment, num_classes: int = 10, in_chans: int = 3,
               img_size: int | tuple[int, int] = 32, num_train: int = 1024, num_test: int = 256, seed: int = 0,
               noise: float = 1.0):
    """Random images with learnable labels, of any shape, deterministic in ``seed``.

    Each class has a fixed random prototype image made of 4x4-pixel blocks (so both MLPs and convnets with
    global pooling can pick it up); a sample is its class prototype plus Gaussian noise of std ``noise``.
    Classes are balanced. Images are normalised with the training split's per-channel mean/std.
    """
    hw = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
    if len(hw) != 2:
        raise ValueError(f"img_size: expected an int or (h, w), got {img_size!r}")
    h, w = hw
    for arg, v in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", min(h, w)),
                   ("num_train", num_train), ("num_test", num_test)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{arg}: expected a positive int, got {v!r}")
    if noise < 0:
        raise ValueError(f"noise: expected >= 0, got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, in_chans, -(-h // 4), -(-w // 4), generator=g)
    prototypes = coarse.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)[:, :, :h, :w]

    def draw(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=g)]
        images = prototypes[labels] + noise * torch.randn(n, in_chans, h, w, generator=g)
        return images, labels

    (x_tr, y_tr), (x_te, y_te) = draw(num_train), draw(num_test)
    x_tr, x_te, mean, std = normalise(x_tr, x_te)
    train, test = TensorImageDataset(x_tr, y_tr), TensorImageDataset(x_te, y_te)
    info = DatasetInfo("synthetic", num_classes, in_chans, (h, w), num_train, num_test, mean, std)
    return train, test, info
