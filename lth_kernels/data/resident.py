"""Device-resident image data: uint8 pixels held where the model trains, normalised and augmented per batch.

``ResidentImageDataset`` keeps the decoded images as one ``uint8 [N, C, H, W]`` tensor (a quarter of the
float32 size: CIFAR-10's training split is 150 MB) that the Trainer moves to the training device once and
indexes per batch; ``batch_transform(x, generator)`` then does, with a few batched tensor ops on that device,
what torchvision does per image on the CPU:

* ``RandomCrop(size, padding=p)`` (zero padding) + ``RandomHorizontalFlip()``: one offset pair uniform in
  ``{0..2p}^2`` and one fair coin per image, exactly torchvision's distribution;
* ``ToTensor()`` + ``Normalize(mean, std)``: ``x.float().div(255).sub(mean).div(std)``, the same float32 ops
  in the same order, so unaugmented batches are bit-identical to the torchvision path.

``cached_uint8`` decodes a file-backed data set once and keeps the tensors next to the data
(``<data_dir>/lth_cache/<name>-<split>.pt``, written atomically, rebuilt when a source file changes).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

log = logging.getLogger(__name__)

CACHE_DIR = "lth_cache"
_CACHE_FORMAT = 1


class ResidentImageDataset(Dataset):
    """``uint8`` images ``[N, C, H, W]`` and int64 labels ``[N]``, normalised and augmented per batch.

    ``tensors = (images, labels)`` (the raw uint8 pixels) is what the Trainer moves to the device and indexes;
    ``batch_transform(images[idx], generator)`` turns such a batch into the float model input. ``mean`` /
    ``std`` are per-channel, in the [0, 1] pixel scale (as torchvision's ``Normalize`` after ``ToTensor``).
    ``crop_padding > 0`` adds a random crop of the original size from the zero-padded image, ``flip`` a random
    horizontal flip (training augmentation). ``ds[i]`` gives one transformed image (random draws from torch's
    global generator), for code that reads samples one by one.
    """

    pipeline = "device"

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: Sequence[float], std: Sequence[float], *,
                 crop_padding: int = 0, flip: bool = False):
        if images.dim() != 4 or images.dtype != torch.uint8:
            raise ValueError(f"images: expected a uint8 [N, C, H, W] tensor, got {images.dtype} {tuple(images.shape)}")
        if labels.dim() != 1 or labels.shape[0] != images.shape[0] or labels.is_floating_point():
            raise ValueError(f"labels: expected an int [N={images.shape[0]}] tensor, got {labels.dtype} "
                             f"{tuple(labels.shape)}")
        c = images.shape[1]
        if len(mean) != c or len(std) != c or min(std) <= 0:
            raise ValueError(f"mean, std: expected {c} values each (std > 0), got {tuple(mean)}, {tuple(std)}")
        if not isinstance(crop_padding, int) or crop_padding < 0:
            raise ValueError(f"crop_padding: expected an int >= 0, got {crop_padding!r}")
        self.tensors = (images, labels.long())
        self.mean, self.std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
        self.crop_padding, self.flip = crop_padding, bool(flip)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.flip

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.batch_transform(self.tensors[0][index].unsqueeze(0))[0], int(self.tensors[1][index])

    def batch_transform(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``[B, C, H, W]`` -> float32 model input, augmented with draws from ``generator`` (a generator
        on ``x.device``; None: torch's global generator of that device)."""
        if self.augments:
            x = crop_flip(x, self.crop_padding, self.flip, generator)
        return normalise_uint8(x, self.mean, self.std)


def normalise_uint8(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """torchvision's ``ToTensor()`` + ``Normalize(mean, std)`` on a uint8 batch, bit for bit."""
    shape = (1, -1, 1, 1)
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(shape)
    s = torch.tensor(std, dtype=torch.float32, device=x.device).view(shape)
    return x.float().div_(255).sub_(m).div_(s)


def crop_flip(x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Per image: a random ``H x W`` crop of the zero-padded image and (``flip``) a random horizontal flip.

    One gather over the padded batch: output pixel ``(i, j)`` of image ``b`` reads padded pixel
    ``(oy_b + i, ox_b + j)``, or ``(oy_b + i, ox_b + W - 1 - j)`` when ``b`` is flipped (torchvision flips the
    crop). ``oy, ox`` are uniform in ``0..2 * padding`` as ``RandomCrop``'s ``randint(0, h - th + 1)``.
    """
    b, c, h, w = x.shape
    dev = x.device
    if padding:
        x = F.pad(x, (padding,) * 4)
    hp, wp = h + 2 * padding, w + 2 * padding
    offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=dev)
    rows = offsets[0, :, None] + torch.arange(h, device=dev)
    cols = offsets[1, :, None] + torch.arange(w, device=dev)
    if flip:
        flipped = torch.rand(b, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)
    index = (rows[:, :, None] * wp + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return x.reshape(b, c, hp * wp).gather(2, index).view(b, c, h, w)


# ------------------------------------------------------------------------------------------------- the cache


def _fingerprint(root: str, sources: Sequence[str]) -> list:
    """(path relative to ``root``, size, mtime) of each source file: a changed or replaced file rebuilds."""
    out = []
    for rel in sources:
        st = os.stat(os.path.join(root, rel))
        out.append([rel, st.st_size, st.st_mtime_ns])
    return out


def cache_path(root: str, name: str, split: str) -> str:
    return os.path.join(root, CACHE_DIR, f"{name}-{split}.pt")


def cached_uint8(root: str, name: str, split: str, sources: Sequence[str],
                 decode: Callable[[], tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(uint8 images [N, C, H, W], int64 labels)`` of one split, decoded at most once per source version.

    ``sources`` are the files (relative to ``root``) the split is decoded from; ``decode()`` reads them (and
    may download them first). The cache is used while every source has the size and mtime it was built from;
    a cache that cannot be written (read-only data directory) only costs a decode per run.
    """
    from lth_kernels.training.rundir import atomic_save

    path = cache_path(root, name, split)
    try:
        fp = _fingerprint(root, sources)
    except OSError:
        fp = None  # sources missing: decode() downloads them or raises the one-line error
    if fp is not None and os.path.exists(path):
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("format") == _CACHE_FORMAT and blob.get("sources") == fp:
                return blob["images"], blob["labels"]
        except Exception as e:  # noqa: BLE001 - a damaged cache is rebuilt, never trusted
            log.warning("rebuilding %s: %s", path, e)
    images, labels = decode()
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"decode: expected uint8 [N, C, H, W] images for {name} {split}, got {images.dtype} "
                         f"{tuple(images.shape)}")
    images, labels = images.contiguous(), labels.long().contiguous()
    try:
        atomic_save({"format": _CACHE_FORMAT, "sources": _fingerprint(root, sources), "images": images,
                     "labels": labels}, path)
    except OSError as e:
        log.warning("cannot cache the decoded %s %s split at %s (%s); decoding again next time", name, split, path, e)
    return images, labels

