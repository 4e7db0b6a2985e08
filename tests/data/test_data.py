"""Data set registry: the embedded digits split, synthetic data, missing-directory errors, ImageFolder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lth_kernels.data import DatasetInfo, TensorImageDataset, create_dataset, dataset_names, resolve_data_dir


def test_names():
    assert dataset_names() == ["digits", "synthetic", "mnist", "cifar10", "cifar100", "imagefolder"]
    with pytest.raises(ValueError, match=r"unknown data set 'cifar'; valid: digits, synthetic, mnist, cifar10") as e:
        create_dataset("cifar")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="num_clases: data set 'digits' takes no such argument; it takes: test_size"):
        create_dataset("digits", num_clases=3)


def test_digits_split_is_fixed_stratified_and_normalised():
    from sklearn.datasets import load_digits

    torch.manual_seed(123)  # the split must not depend on the global seed
    train, test, info = create_dataset("digits")
    torch.manual_seed(7)
    train2, test2, info2 = create_dataset("digits", augment=False)
    assert info == info2
    assert all(torch.equal(a, b) for a, b in zip(train.tensors + test.tensors, train2.tensors + test2.tensors))

    assert isinstance(info, DatasetInfo)
    assert (info.name, info.num_classes, info.in_chans, info.img_size) == ("digits", 10, 1, (8, 8))
    assert (info.num_train, info.num_test) == (len(train), len(test)) == (1437, 360)
    assert isinstance(train, TensorImageDataset) and train.tensors[0] is train.images
    images, labels = train.tensors
    assert images.shape == (1437, 1, 8, 8) and images.dtype == torch.float32 and labels.dtype == torch.int64

    # Stratified: every class is ~20% in the test split.
    _, y = load_digits(return_X_y=True)
    per_class = np.bincount(y)
    test_counts = torch.bincount(test.labels, minlength=10).numpy()
    assert np.all(np.abs(test_counts - 0.2 * per_class) <= 1)
    assert torch.bincount(labels, minlength=10).sum() + test_counts.sum() == len(y)

    # Normalised with the train statistics of the [0, 1]-scaled pixels.
    assert abs(images.mean().item()) < 1e-5 and abs(images.std().item() - 1) < 1e-4
    raw = images * info.std[0] + info.mean[0]
    assert raw.min().item() > -1e-5 and raw.max().item() < 1 + 1e-5
    assert torch.allclose(raw * 16, (raw * 16).round(), atol=1e-3)  # pixels were 0..16 integers
    assert abs(test.images.mean().item()) < 0.1  # the test split uses the same (train) statistics

    image, label = test[5]
    assert image.shape == (1, 8, 8) and isinstance(label, int) and label == int(test.labels[5])

    other = create_dataset("digits", split_seed=1)[1]
    assert not torch.equal(other.labels, test.labels)
    with pytest.raises(ValueError, match="test_size: expected a fraction in"):
        create_dataset("digits", test_size=1.5)


def test_synthetic_is_deterministic_and_learnable():
    kw = dict(num_classes=4, in_chans=2, img_size=(6, 10), num_train=200, num_test=100)
    train, test, info = create_dataset("synthetic", seed=3, **kw)
    torch.manual_seed(99)
    train2, test2, _ = create_dataset("synthetic", seed=3, **kw)
    other = create_dataset("synthetic", seed=4, **kw)[0]
    assert torch.equal(train.images, train2.images) and torch.equal(test.labels, test2.labels)
    assert not torch.equal(train.images, other.images)
    assert info == DatasetInfo("synthetic", 4, 2, (6, 10), 200, 100, info.mean, info.std)
    assert len(info.mean) == len(info.std) == 2
    assert train.images.shape == (200, 2, 6, 10) and test.images.shape == (100, 2, 6, 10)
    assert torch.bincount(train.labels).tolist() == [50, 50, 50, 50]
    assert abs(train.images.mean().item()) < 1e-5

    # Learnable: the nearest class mean of the training split classifies the test split well.
    x_tr, x_te = train.images.flatten(1), test.images.flatten(1)
    means = torch.stack([x_tr[train.labels == c].mean(0) for c in range(4)])
    pred = torch.cdist(x_te, means).argmin(1)
    assert (pred == test.labels).float().mean() > 0.9

    with pytest.raises(ValueError, match="num_classes: expected a positive int, got 0"):
        create_dataset("synthetic", num_classes=0)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist"])
def test_missing_directory_names_path_and_flags(name, tmp_path, monkeypatch):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        create_dataset(name, data_dir=missing)
    msg = str(e.value)
    assert str(missing) in msg and "--dataset.data_dir" in msg and "--dataset.download" in msg and "\n" not in msg
    # An existing but empty directory: torchvision's "not found" becomes the same one-line error.
    with pytest.raises(FileNotFoundError, match=f"no {name} data at {tmp_path}.*--dataset.download"):
        create_dataset(name, data_dir=tmp_path)
    monkeypatch.setenv("LTH_DATA_DIR", str(missing))
    assert resolve_data_dir(None) == str(missing)
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_dataset(name)


def _write_image_folder(root, classes=("cat", "dog"), per_class=(3, 2), size=(20, 24)):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, counts in (("train", per_class), ("val", (1,) * len(classes))):
        for cls, count in zip(classes, counts):
            (root / split / cls).mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / cls / f"{i}.png")


def test_imagefolder(tmp_path):
    _write_image_folder(tmp_path)
    train, test, info = create_dataset("imagefolder", data_dir=tmp_path, img_size=16)
    assert info == DatasetInfo("imagefolder", 2, 3, (16, 16), 5, 2, info.mean, info.std)
    image, label = train[4]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and label == 1
    image, label = test[0]
    assert image.shape == (3, 16, 16) and label == 0
    # Training views are random crops drawn from torch's generator; without augmentation they are fixed.
    plain, _, _ = create_dataset("imagefolder", data_dir=tmp_path, img_size=16, augment=False)
    views = []
    for dataset in (train, plain):
        for seed in (0, 1):
            torch.manual_seed(seed)
            views.append(dataset[0][0])
    assert not torch.equal(views[0], views[1]) and torch.equal(views[2], views[3])
    with pytest.raises(ValueError, match="download: imagefolder data cannot be downloaded"):
        create_dataset("imagefolder", data_dir=tmp_path, download=True)


def test_imagefolder_missing_split(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=f"no imagefolder data at {tmp_path / 'val'}; pass --dataset.data_dir"):
        create_dataset("imagefolder", data_dir=tmp_path)


def test_imagefolder_crop_scale_and_interpolation(tmp_path):
    from torchvision.transforms import CenterCrop, InterpolationMode, RandomResizedCrop, Resize

    from lth_kernels.data import dataset_from_hparams
    from lth_kernels.training.hparams import DatasetHparams, HparamsError

    _write_image_folder(tmp_path)

    def crops(**fields):
        train, test, _ = dataset_from_hparams(DatasetHparams(name="imagefolder", data_dir=str(tmp_path), **fields),
                                              img_size=16)
        return train.transform.transforms[0], test.transform.transforms[:2]

    crop, (resize, center) = crops()  # defaults: torchvision's crop area, bilinear
    assert isinstance(crop, RandomResizedCrop) and crop.scale == (0.08, 1.0)
    assert crop.interpolation == resize.interpolation == InterpolationMode.BILINEAR
    assert isinstance(resize, Resize) and isinstance(center, CenterCrop)
    crop, (resize, _) = crops(crop_scale="0.1,1", interpolation="bicubic")  # open_lth's area, DeiT's resize
    assert crop.scale == (0.1, 1.0) and crop.interpolation == resize.interpolation == InterpolationMode.BICUBIC
    # the crop keeps at least 10% of the image area: 2000 draws of (i, j, h, w) on a 20x24 image
    torch.manual_seed(0)
    areas = [h * w / (20 * 24) for _, _, h, w in (crop.get_params(torch.zeros(3, 20, 24), crop.scale, crop.ratio)
                                                  for _ in range(2000))]
    assert 0.1 - 0.02 <= min(areas) < 0.2 and max(areas) <= 1.0  # (rounded to whole pixels)
    assert DatasetHparams().builder_kwargs() == {} and DatasetHparams().non_default() == {}
    with pytest.raises(HparamsError, match="--crop_scale: expected two areas"):
        DatasetHparams(name="imagefolder", crop_scale="0.5")
    with pytest.raises(HparamsError, match="--interpolation: only imagefolder resizes its images, got --dataset.name"):
        DatasetHparams(interpolation="bicubic")
