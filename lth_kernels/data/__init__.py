"""Data set registry: ``create_dataset(name, *, data_dir=None, download=False, augment=True, **kwargs)``
returns ``(train_ds, test_ds, DatasetInfo)``; items are ``(float image [C, H, W], int label)``.

Names: ``digits`` (embedded default, scikit-learn's 8x8 digits), ``synthetic``, ``mnist``, ``cifar10``,
``cifar100``, ``imagefolder``. In-memory data sets (``digits``, ``synthetic``: ``TensorImageDataset``; ``mnist``,
``cifar10``, ``cifar100`` in the default ``device`` pipeline: ``ResidentImageDataset``, uint8 pixels transformed
per batch) have ``.tensors = (images, labels)``, which the Trainer holds on the device and indexes per batch.
``hold_out(train, test, size, seed)`` cuts a seeded, class-balanced validation set out of a training split.
"""

from lth_kernels.data import embedded, vision  # noqa: F401  (register the data sets)
from lth_kernels.data._registry import (
    DatasetInfo,
    create_dataset,
    dataset_from_hparams,
    dataset_names,
    register_dataset,
    resolve_data_dir,
    resolve_num_workers,
)
from lth_kernels.data.resident import ResidentImageDataset
from lth_kernels.data.split import hold_out, validation_indices
from lth_kernels.data.tensor import TensorImageDataset

__all__ = ["DatasetInfo", "ResidentImageDataset", "TensorImageDataset", "create_dataset", "dataset_from_hparams",
           "dataset_names", "hold_out", "register_dataset", "resolve_data_dir", "resolve_num_workers",
           "validation_indices"]
