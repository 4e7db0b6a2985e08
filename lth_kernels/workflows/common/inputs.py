"""A workflow's inputs, opened before its run directory exists, with errors that name the CLI flag.

The library names its own arguments in errors (``dataset: unknown data set 'x'``, ``data_dir: no mnist data
at ...``), which is right for a Python caller; on the command line the user typed ``--dataset.name``, so
``as_flags`` rewrites the leading argument name into the flag of the hparams group it came from."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping

DATASET_FIELDS = {"dataset": "name", "name": "name", "data_dir": "data_dir", "download": "download",
                  "pipeline": "pipeline", "num_workers": "num_workers", "crop_scale": "crop_scale",
                  "interpolation": "interpolation"}
MODEL_FIELDS = {"model": "name", "name": "name", "kwargs": "kwargs"}


@contextlib.contextmanager
def as_flags(prefix: str, fields: Mapping[str, str]) -> Iterator[None]:
    """Re-raise ``ValueError``/``FileNotFoundError`` whose message starts with ``<arg>: `` (an ``arg`` in
    ``fields``) as ``--<prefix>.<fields[arg]>: ...``, the same type; anything else passes unchanged."""
    try:
        yield
    except (ValueError, FileNotFoundError) as e:
        arg, sep, rest = str(e).partition(": ")
        if not sep or arg not in fields:
            raise
        flag = f"--{prefix}.{fields[arg]}"
        raise type(e)(f"{flag}: {rest.replace('--dataset.', f'--{prefix}.')}") from e


def open_dataset(ds, prefix: str = "dataset", **kwargs):
    """``create_dataset`` of a ``DatasetHparams``: ``(train, test, info)``."""
    from lth_kernels.data import dataset_from_hparams

    with as_flags(prefix, DATASET_FIELDS):
        return dataset_from_hparams(ds, **kwargs)


def make_model(mh, info, prefix: str = "model", *, seed: int | None = None, meta: bool = False, **overrides):
    """``create_model`` of a ``ModelHparams`` for a data set's ``info`` (seeded when ``seed`` is given;
    ``meta``: shapes only, no memory or initialisation, to check a model before a run starts)."""
    import torch

    from lth_kernels.models import create_model

    if seed is not None:
        from lth_kernels.training.seed import seed_everything

        seed_everything(seed)
    kwargs = {**mh.kwargs, **overrides}
    name = kwargs.pop("name", mh.name)
    with as_flags(prefix, MODEL_FIELDS), (torch.device("meta") if meta else contextlib.nullcontext()):
        try:
            return create_model(name, num_classes=info.num_classes, in_chans=info.in_chans,
                                img_size=info.img_size, **kwargs)
        except TypeError as e:  # an argument the model does not take
            raise ValueError(f"kwargs: {e}") from None
        except (NotImplementedError, RuntimeError):
            if not meta:
                raise
            return None  # a model whose initialisation needs real data: it is built, and checked, later
