"""File-backed image data sets through torchvision: ``mnist``, ``cifar10``, ``cifar100``, ``imagefolder``.

Two forms (``pipeline``): ``mnist``, ``cifar10`` and ``cifar100`` without RandAugment are by default
(``auto`` / ``device``) decoded once to uint8 tensors, cached next to the data, and returned as
``ResidentImageDataset``s that the Trainer holds on the training device and transforms per batch (the same
crop/flip distribution and the same normalisation as the torchvision transforms below); ``loader`` (and
RandAugment, and ``imagefolder`` always) gives the torchvision data sets with per-image transforms, which the
Trainer reads through DataLoader workers.

Transforms (augmentation only on the training split, and only with ``augment=True``):

* ``mnist``: none; normalised with mean 0.1307, std 0.3081 (as open_lth).
* ``cifar10`` / ``cifar100``: random crop 32 with 4-pixel padding + horizontal flip; per-channel normalisation.
* ``imagefolder`` (ImageNet layout ``data_dir/train/<class>/*``, ``data_dir/val/<class>/*``): train
  RandomResizedCrop(img_size, scale=crop_scale) + flip; test Resize(img_size / 0.875) + CenterCrop(img_size);
  ImageNet statistics. ``crop_scale`` (default torchvision's (0.08, 1); open_lth's ImageNet: (0.1, 1)) and
  ``interpolation`` of the crop and the resize (default bilinear; DeiT: bicubic).

``randaugment="rand-m9-mstd0.5-inc1"`` (cifar10, cifar100, imagefolder; only with ``augment=True``) adds timm's
RandAugment after the crop and flip, as DeiT does (loader pipeline). The Trainer seeds the random transforms
of each training batch from ``(data_order_seed, step)`` (``data_order.batch_seed``): on the device through a
generator there, in the loader by seeding torch's, Python's and numpy's global generators around the batch.
"""

from __future__ import annotations

import os

from lth_kernels.data._registry import DatasetInfo, missing_data, register_dataset, resolve_data_dir
from lth_kernels.data.resident import ResidentImageDataset, cached_uint8

_MNIST_STATS = ((0.1307,), (0.3081,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))  # open_lth's values
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _open(name: str, cls, root: str, download: bool, **kwargs):
    """Instantiate a torchvision data set, turning 'not found' into the one-line error."""
    if not download and not os.path.isdir(root):
        raise missing_data(name, root)
    try:
        return cls(root, download=download, **kwargs)
    except RuntimeError as e:
        if download or "not found" not in str(e).lower():
            raise
        raise missing_data(name, root) from None


def _randaugment(policy: str, size: int, mean) -> list:
    """timm's RandAugment for PIL images of side ``size`` (``[]`` when ``policy`` is empty)."""
    if not policy:
        return []
    from timm.data.auto_augment import rand_augment_transform

    try:
        return [rand_augment_transform(policy, {"translate_const": int(size * 0.45),
                                                "img_mean": tuple(round(255 * m) for m in mean)})]
    except (AssertionError, ValueError, KeyError) as e:
        raise ValueError(f"randaugment: not a timm RandAugment policy: {policy!r} ({e})") from None


def _sources(cls, train: bool) -> list[str]:
    """The files (relative to the data directory) torchvision decodes one split of ``cls`` from."""
    if hasattr(cls, "base_folder"):  # CIFAR-10 / CIFAR-100: pickled batches
        return [os.path.join(cls.base_folder, f) for f, _ in (cls.train_list if train else cls.test_list)]
    prefix = "train" if train else "t10k"  # MNIST: idx files under <class name>/raw
    return [os.path.join(cls.__name__, "raw", f"{prefix}-{kind}-ubyte") for kind in ("images-idx3", "labels-idx1")]


def _decoded(name: str, cls, root: str, download: bool, train: bool):
    """uint8 ``[N, C, H, W]`` images and labels of one split, from the cache next to the data when current."""
    import torch

    def decode():
        ds = _open(name, cls, root, download, train=train)
        data = torch.as_tensor(ds.data)
        images = data.unsqueeze(1) if data.dim() == 3 else data.permute(0, 3, 1, 2)  # MNIST [N,H,W], CIFAR NHWC
        return images.contiguous(), torch.as_tensor(ds.targets, dtype=torch.long)

    return cached_uint8(root, name, "train" if train else "test", _sources(cls, train), decode)


def _torchvision(name: str, cls, stats, num_classes: int, in_chans: int, size: int, data_dir, download,
                 augment: bool, crop: bool, randaugment: str = "", pipeline: str = "auto"):
    from torchvision import transforms as T

    root = resolve_data_dir(data_dir)
    randaugment = randaugment if augment else ""
    if pipeline != "loader" and not randaugment:  # RandAugment is a per-image PIL transform: loader only
        pad = 4 if augment and crop else 0
        train = ResidentImageDataset(*_decoded(name, cls, root, download, True), *stats, crop_padding=pad,
                                     flip=pad > 0)
        test = ResidentImageDataset(*_decoded(name, cls, root, download, False), *stats)
    else:
        if pipeline == "device":
            raise ValueError(f"pipeline: {name} with RandAugment ({randaugment!r}) needs per-image PIL transforms; "
                             "use --dataset.pipeline loader (or auto)")
        base = [T.ToTensor(), T.Normalize(*stats)]
        aug = [T.RandomCrop(size, padding=4), T.RandomHorizontalFlip()] if augment and crop else []
        aug += _randaugment(randaugment, size, stats[0])
        train = _open(name, cls, root, download, train=True, transform=T.Compose(aug + base))
        test = _open(name, cls, root, download, train=False, transform=T.Compose(base))
    info = DatasetInfo(name, num_classes, in_chans, (size, size), len(train), len(test), *stats)
    return train, test, info


@register_dataset("mnist")
def _mnist(*, data_dir, download, augment, pipeline="auto"):
    from torchvision.datasets import MNIST

    return _torchvision("mnist", MNIST, _MNIST_STATS, 10, 1, 28, data_dir, download, augment, crop=False,
                        pipeline=pipeline)


@register_dataset("cifar10")
def _cifar10(*, data_dir, download, augment, pipeline="auto", randaugment: str = ""):
    from torchvision.datasets import CIFAR10

    return _torchvision("cifar10", CIFAR10, _CIFAR10_STATS, 10, 3, 32, data_dir, download, augment, crop=True,
                        randaugment=randaugment, pipeline=pipeline)


@register_dataset("cifar100")
def _cifar100(*, data_dir, download, augment, pipeline="auto", randaugment: str = ""):
    from torchvision.datasets import CIFAR100

    return _torchvision("cifar100", CIFAR100, _CIFAR100_STATS, 100, 3, 32, data_dir, download, augment, crop=True,
                        randaugment=randaugment, pipeline=pipeline)


@register_dataset("imagefolder")
def _imagefolder(*, data_dir, download, augment, pipeline="auto", img_size: int = 224, randaugment: str = "",
                 crop_scale: tuple[float, float] = (0.08, 1.0), interpolation: str = "bilinear"):
    from torchvision import transforms as T
    from torchvision.datasets import ImageFolder

    if pipeline == "device":
        raise ValueError("pipeline: imagefolder data are decoded per image from files; use --dataset.pipeline "
                         "loader (or auto)")
    if download:
        raise ValueError("download: imagefolder data cannot be downloaded; pass --dataset.data_dir (train/, val/)")
    if not isinstance(img_size, int) or img_size < 1:
        raise ValueError(f"img_size: expected a positive int, got {img_size!r}")
    if len(crop_scale) != 2 or not 0 < crop_scale[0] <= crop_scale[1] <= 1:
        raise ValueError(f"crop_scale: expected (lo, hi) with 0 < lo <= hi <= 1, got {crop_scale!r}")
    if interpolation not in ("bilinear", "bicubic"):
        raise ValueError(f"interpolation: expected bilinear or bicubic, got {interpolation!r}")
    mode = T.InterpolationMode(interpolation)
    root = resolve_data_dir(data_dir)
    for split in ("train", "val"):
        if not os.path.isdir(os.path.join(root, split)):
            raise missing_data("imagefolder", os.path.join(root, split), can_download=False)
    norm = [T.ToTensor(), T.Normalize(*_IMAGENET_STATS)]
    if augment:
        train_tf = [T.RandomResizedCrop(img_size, scale=tuple(crop_scale), interpolation=mode),
                    T.RandomHorizontalFlip(),
                    *_randaugment(randaugment, img_size, _IMAGENET_STATS[0])]
    else:
        train_tf = [T.Resize(round(img_size / 0.875), interpolation=mode), T.CenterCrop(img_size)]
    test_tf = [T.Resize(round(img_size / 0.875), interpolation=mode), T.CenterCrop(img_size)]
    train = ImageFolder(os.path.join(root, "train"), transform=T.Compose(train_tf + norm))
    test = ImageFolder(os.path.join(root, "val"), transform=T.Compose(test_tf + norm))
    if train.classes != test.classes:
        raise ValueError(f"data_dir: train/ and val/ under {root} have different class folders "
                         f"({len(train.classes)} vs {len(test.classes)})")
    info = DatasetInfo("imagefolder", len(train.classes), 3, (img_size, img_size), len(train), len(test),
                       *_IMAGENET_STATS)
    return train, test, info
