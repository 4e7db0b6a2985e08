"""Data set registry: ``create_dataset(name, ...) -> (train_ds, test_ds, DatasetInfo)``.

A builder is ``fn(*, data_dir, download, augment, [pipeline,] **kwargs) -> (train_ds, test_ds, DatasetInfo)``
(``pipeline`` is passed to builders that take it: those that have both a device-resident and a loader form). Every data
set yields ``(image, label)`` pairs: a float tensor ``[C, H, W]`` (normalised) and an ``int``. Nothing is
downloaded unless ``download=True``; a missing directory is a one-line error naming the path and the flags.
"""

from __future__ import annotations

import inspect
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


PIPELINES = ("auto", "device", "loader")


def resolve_num_workers(num_workers: int | str) -> int:
    """``"auto"``: min(8, the cores this process may use); else the count itself (>= 0)."""
    if num_workers == "auto":
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            cores = os.cpu_count() or 1
        return min(8, cores)
    if isinstance(num_workers, str) and num_workers.strip().isdigit():
        num_workers = int(num_workers)
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers: expected 'auto' or an int >= 0, got {num_workers!r}")
    return num_workers


def create_dataset(name: str, *, data_dir: str | os.PathLike | None = None, download: bool = False,
                   augment: bool = True, pipeline: str = "auto", num_workers: int | str = "auto", **kwargs):
    """Build data set ``name``: returns ``(train_ds, test_ds, info)``.

    ``augment`` switches the training-set augmentation (where the data set has one); the test set is never
    augmented. ``pipeline`` chooses how the Trainer feeds the data: ``device`` holds the decoded images on the
    training device and transforms whole batches there (in-memory sets: digits, synthetic, mnist, cifar10/100
    without RandAugment), ``loader`` reads samples through DataLoader workers, ``auto`` is ``device`` where
    it applies. ``num_workers`` is the loader's worker processes (``auto``: min(8, cores)); the returned data
    sets carry both choices (``.pipeline``, ``.num_workers``) for the Trainer. ``kwargs`` go to the builder
    (e.g. ``synthetic``'s ``num_classes``, ``imagefolder``'s ``img_size``).
    """
    if name not in _DATASETS:
        raise ValueError(f"dataset: unknown data set {name!r}; valid: {', '.join(_DATASETS)}")
    if pipeline not in PIPELINES:
        raise ValueError(f"pipeline: expected one of {', '.join(PIPELINES)}, got {pipeline!r}")
    workers = resolve_num_workers(num_workers)
    builder = _DATASETS[name]
    check_kwargs(f"data set {name!r}", builder, kwargs, fixed=("data_dir", "download", "augment", "pipeline"))
    if "pipeline" in inspect.signature(builder).parameters:
        kwargs["pipeline"] = pipeline
    train, test, info = builder(data_dir=data_dir, download=bool(download), augment=bool(augment), **kwargs)
    for ds in (train, test):
        resident = getattr(ds, "tensors", None) is not None and getattr(ds, "pipeline", "device") == "device"
        if pipeline == "device" and not resident:
            raise ValueError(f"pipeline: data set {name!r} cannot be held on the device; use --dataset.pipeline "
                             "loader (or auto)")
        ds.pipeline = "loader" if pipeline == "loader" or not resident else "device"
        ds.num_workers = workers
    return train, test, info


def dataset_from_hparams(hp, **kwargs):
    """``create_dataset`` for a ``DatasetHparams`` (name, data_dir, download, augment, pipeline,
    num_workers, and its ``builder_kwargs()``: crop_scale, interpolation); ``kwargs`` go to the builder."""
    extra = hp.builder_kwargs() if hasattr(hp, "builder_kwargs") else {}
    return create_dataset(hp.name, data_dir=hp.data_dir, download=hp.download, augment=hp.augment,
                          pipeline=hp.pipeline, num_workers=hp.num_workers, **extra, **kwargs)
