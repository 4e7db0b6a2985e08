"""A workflow's data from its ``DatasetHparams``: the splits and, with ``--dataset.validation N``, the hold-out."""

from __future__ import annotations

import dataclasses

# The hold-out is a property of the data set configuration, not of a replicate: every replicate, level and
# branch of a run (and every run with the same --dataset.validation) holds out the same images.
VALIDATION_SEED = 0


def build_data(dataset, prefix: str = "dataset") -> tuple:
    """``(train, test, info, val)`` of a ``DatasetHparams``; ``val`` is None when ``dataset.validation`` is 0,
    else that many class-balanced training images, read like the test set, and ``train`` is the rest."""
    from lth_kernels.data import hold_out
    from lth_kernels.workflows.common.inputs import open_dataset

    train, test, info = open_dataset(dataset, prefix)
    if dataset.validation >= len(train):
        raise ValueError(f"--{prefix}.validation: {dataset.validation} is not less than the {len(train)} training "
                         f"images of {dataset.name}")
    train, val = hold_out(train, test, dataset.validation, seed=VALIDATION_SEED)
    return train, test, dataclasses.replace(info, num_train=len(train)), val
