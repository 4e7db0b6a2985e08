"""MNIST- and CIFAR-shaped data sets written in torchvision's on-disk formats, so that the data pipelines can be
measured (and tested) anywhere, without downloading the real data sets.

* ``write_mnist(root, n_train, n_test)``: ``root/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (idx).
* ``write_cifar(root, n_train, n_test, classes=10)``: CIFAR-10's ``cifar-10-batches-py/`` (five pickled training
  batches, ``test_batch``, ``batches.meta``) or CIFAR-100's ``cifar-100-python/`` (``train``, ``test``, ``meta``).

Images are class prototypes plus noise (learnable, so accuracy can be compared between pipelines). torchvision
checks CIFAR files against the real data set's md5 sums, which written files cannot match: read them inside
``unchecked_cifar()``.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct

import numpy as np


def _images(n: int, shape: tuple[int, ...], classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    protos = np.random.default_rng(1234).integers(0, 256, (classes, *shape)).astype(np.float32)
    labels = rng.integers(0, classes, n)
    noisy = protos[labels] * 0.6 + rng.normal(0, 40, (n, *shape)) + 50
    return np.clip(noisy, 0, 255).astype(np.uint8), labels.astype(np.int64)


def write_mnist(root: str, n_train: int = 6000, n_test: int = 1000, seed: int = 0) -> str:
    """MNIST-shaped (28x28 grey, 10 classes) idx files under ``root/MNIST/raw``; returns ``root``."""
    raw = os.path.join(root, "MNIST", "raw")
    os.makedirs(raw, exist_ok=True)
    for prefix, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        x, y = _images(n, (28, 28), 10, s)
        with open(os.path.join(raw, f"{prefix}-images-idx3-ubyte"), "wb") as f:
            f.write(struct.pack(">IIII", 0x803, n, 28, 28) + x.tobytes())
        with open(os.path.join(raw, f"{prefix}-labels-idx1-ubyte"), "wb") as f:
            f.write(struct.pack(">II", 0x801, n) + y.astype(np.uint8).tobytes())
    return root


def write_cifar(root: str, n_train: int = 5000, n_test: int = 1000, classes: int = 10, seed: int = 0) -> str:
    """CIFAR-shaped (32x32 RGB) pickled batches, CIFAR-10's layout (``classes=10``) or CIFAR-100's (100)."""
    if classes not in (10, 100):
        raise ValueError(f"classes: expected 10 (CIFAR-10) or 100 (CIFAR-100), got {classes!r}")
    folder = os.path.join(root, "cifar-10-batches-py" if classes == 10 else "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    key = "labels" if classes == 10 else "fine_labels"

    def dump(name: str, obj) -> None:
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(obj, f)

    x, y = _images(n_train, (3, 32, 32), classes, seed)
    xt, yt = _images(n_test, (3, 32, 32), classes, seed + 1)
    if classes == 10:
        for i, part in enumerate(np.array_split(np.arange(n_train), 5)):
            dump(f"data_batch_{i + 1}", {"data": x[part].reshape(len(part), -1), key: y[part].tolist()})
        dump("test_batch", {"data": xt.reshape(n_test, -1), key: yt.tolist()})
        dump("batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    else:
        dump("train", {"data": x.reshape(n_train, -1), key: y.tolist()})
        dump("test", {"data": xt.reshape(n_test, -1), key: yt.tolist()})
        dump("meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return root


@contextlib.contextmanager
def unchecked_cifar():
    """torchvision's CIFAR md5 checks switched off (written files are not the real data set's bytes)."""
    from torchvision.datasets import cifar

    saved = cifar.check_integrity
    cifar.check_integrity = lambda path, md5=None: os.path.isfile(path)
    try:
        yield
    finally:
        cifar.check_integrity = saved
