"""Data set registry: ``create_dataset(name, ...) -> (train_ds, test_ds, DatasetInfo)``.

A builder is ``fn(*, data_dir, download, augment, **kwargs) -> (train_ds, test_ds, DatasetInfo)``. Every data
set yields ``(image, label)`` pairs: a float tensor ``[C, H, W]`` (normalised) and an ``int``. Nothing is
downloaded unless ``download=True``; a missing directory is a one-line error naming the path and the flags.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from lth_kernels._util import check_kwargs

DATA_DIR_ENV = "LTH_DATA_DIR"
DEFAULT_DATA_DIR = os.path.join("~", "lth_data")


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and a trainer need to know about a data set.

    ``mean`` / ``std``: per-channel statistics the images were normalised with (for real images in the
    [0, 1] pixel scale), e.g. to undo the normalisation for plots.
    """

    name: str
    num_classes: int
    in_chans: int
    img_size: tuple[int, int]
    num_train: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


_DATASETS: dict[str, Callable] = {}


def register_dataset(name: str) -> Callable:
    """Decorator registering a data set builder under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: expected a non-empty str, got {name!r}")

    def deco(builder: Callable) -> Callable:
        if name in _DATASETS:
            raise ValueError(f"name: data set {name!r} is already registered")
        _DATASETS[name] = builder
        return builder

    return deco


def dataset_names() -> list[str]:
    """Registered data set names, in registration order."""
    return list(_DATASETS)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> str:
    """``data_dir``, else ``$LTH_DATA_DIR``, else ``~/lth_data``; user-expanded and absolute."""
    chosen = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return os.path.abspath(os.path.expanduser(os.fspath(chosen)))


def missing_data(name: str, path: str, can_download: bool = True) -> FileNotFoundError:
    """The one-line error for data that is not where we looked."""
    how = "or --dataset.download (download=True) to fetch it" if can_download else "(it cannot be downloaded)"
    return FileNotFoundError(f"data_dir: no {name} data at {path}; pass --dataset.data_dir DIR (data_dir=) where it "
                             f"lives, {how}")


def create_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = False,
                   augment: bool = True, **kwargs):
    """Build data set ``name``: returns ``(train_ds, test_ds, info)``.

    ``augment`` switches the training-set augmentation (where the data set has one); the test set is never
    augmented. ``kwargs`` go to the builder (e.g. ``synthetic``'s ``num_classes``, ``imagefolder``'s ``img_size``).
    """
    if name not in _DATASETS:
        raise ValueError(f"dataset: unknown data set {name!r}; valid: {', '.join(_DATASETS)}")
    builder = _DATASETS[name]
    check_kwargs(f"data set {name!r}", builder, kwargs, fixed=("data_dir", "download", "augment"))
    return builder(data_dir=data_dir, download=bool(download), augment=bool(augment), **kwargs)
