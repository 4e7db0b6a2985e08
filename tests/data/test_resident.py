"""The device-resident data sets: torchvision's crop/flip distribution, bit-identical normalisation, the uint8
cache next to the data, and the pipeline choice."""

from __future__ import annotations

import os

import pytest
import torch

from bench.data_files import unchecked_cifar, write_cifar, write_mnist
from lth_kernels.data import ResidentImageDataset, create_dataset, resolve_num_workers
from lth_kernels.data.resident import cache_path, crop_flip


def _position_image() -> torch.Tensor:
    """uint8 [3, 32, 32]: channel 0 = row + 1, channel 1 = column + 1, channel 2 = 255 (0 only in padding)."""
    r = torch.arange(1, 33, dtype=torch.uint8)
    return torch.stack([r[:, None].expand(32, 32), r[None, :].expand(32, 32), torch.full((32, 32), 255,
                                                                                         dtype=torch.uint8)])


def _decode(views: torch.Tensor) -> torch.Tensor:
    """(offset y, offset x, flipped) of crops of the position image, asserting each view is a valid one."""
    out = []
    padded = torch.nn.functional.pad(_position_image(), (4,) * 4)
    for v in views.long():
        real = v[2] == 255
        assert real.any()
        i, j = (int(t[0]) for t in real.nonzero().T)  # the first non-padding pixel, scanning row-major
        oy = int(v[0, i, j]) - 1 + 4 - i  # output row i reads padded row oy + i, image row v - 1
        col = int(v[1, i, j]) - 1 + 4  # the padded column this pixel came from
        flipped = j + 1 < 32 and real[i, j + 1] and int(v[1, i, j + 1]) < int(v[1, i, j])
        ox = col - (31 - j) if flipped else col - j
        crop = padded[:, oy : oy + 32, ox : ox + 32]
        assert torch.equal(v.to(torch.uint8), crop.flip(2) if flipped else crop), (oy, ox, flipped)
        out.append((oy, ox, int(flipped)))
    return torch.tensor(out)


def _torchvision_views(n: int, seed: int = 0) -> torch.Tensor:
    from torchvision import transforms as T

    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.PILToTensor()])
    torch.manual_seed(seed)
    img = T.functional.to_pil_image(_position_image())  # PIL, as torchvision's CIFAR data sets give it
    return torch.stack([tf(img) for _ in range(n)])


def test_crop_flip_matches_torchvision_distribution():
    n_tv, n_ours = 2000, 8000
    tv = _torchvision_views(n_tv)
    g = torch.Generator().manual_seed(0)
    ours = crop_flip(_position_image().expand(n_ours, 3, 32, 32).contiguous(), 4, True, g)
    assert ours.shape == (n_ours, 3, 32, 32) and ours.dtype == torch.uint8

    # Per-pixel marginals: the mean source row / column and the chance of padding at every output pixel.
    for stat in (lambda v: v[:, 0].float(), lambda v: v[:, 1].float(), lambda v: (v[:, 2] == 0).float()):
        a, b = stat(tv), stat(ours)
        se = (a.var(0) / n_tv + b.var(0) / n_ours).sqrt().clamp_min(1e-3)
        z = (a.mean(0) - b.mean(0)).abs() / se
        assert z.max() < 5.0, float(z.max())

    # Every view is a crop (and maybe a flip) of the padded image; all 9 x 9 x 2 of them equally likely.
    cells = _decode(ours[:3000])
    counts = torch.bincount(cells[:, 0] * 18 + cells[:, 1] * 2 + cells[:, 2], minlength=162).double()
    expected = len(cells) / 162
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert counts.numel() == 162 and chi2 < 161 + 5 * (2 * 161) ** 0.5, chi2
    tv_cells = _decode(tv[:300])  # the decoding itself reads torchvision's views right
    assert tv_cells[:, 0].min() == 0 and tv_cells[:, 0].max() == 8 and 0.4 < tv_cells[:, 2].float().mean() < 0.6

    # Seeded: the same generator state gives the same views, on every call.
    x = _position_image().expand(50, 3, 32, 32).contiguous()
    views = [crop_flip(x, 4, True, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(views[0], views[1]) and not torch.equal(views[0], views[2])
    assert torch.equal(crop_flip(ours[:7], 0, False), ours[:7])  # no padding, no flip: the identity


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_mnist(str(root), 300, 70)
    write_cifar(str(root), 250, 60)
    write_cifar(str(root), 200, 50, classes=100)
    return root


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_resident_sets_equal_torchvision_bit_for_bit(files, name):
    with unchecked_cifar():
        train, test, info = create_dataset(name, data_dir=files)
        tv_train, tv_test, tv_info = create_dataset(name, data_dir=files, pipeline="loader")
    assert isinstance(train, ResidentImageDataset) and not isinstance(tv_train, ResidentImageDataset)
    assert info == tv_info and (train.pipeline, tv_train.pipeline) == ("device", "loader")
    images, labels = test.tensors
    assert images.dtype == torch.uint8 and images.shape == (len(tv_test), info.in_chans, *info.img_size)
    ours = test.batch_transform(images)
    theirs = torch.stack([tv_test[i][0] for i in range(len(tv_test))])
    assert torch.equal(ours, theirs)  # ToTensor + Normalize, the same float32 ops
    assert labels.tolist() == [tv_test[i][1] for i in range(len(tv_test))]
    assert torch.equal(test[3][0], ours[3]) and test[3][1] == int(labels[3])
    assert train.augments == (name != "mnist") and not test.augments
    with unchecked_cifar():  # unaugmented training split: the same images as torchvision's, from the cache
        plain = create_dataset(name, data_dir=files, augment=False)[0]
        tv_plain = create_dataset(name, data_dir=files, augment=False, pipeline="loader")[0]
    assert not plain.augments
    assert torch.equal(plain.batch_transform(plain.tensors[0][:20]), torch.stack([tv_plain[i][0] for i in range(20)]))


def test_cache_is_written_once_reused_and_rebuilt_when_a_source_changes(tmp_path, monkeypatch):
    write_mnist(str(tmp_path), 120, 30)
    train, _, _ = create_dataset("mnist", data_dir=tmp_path)
    path = cache_path(str(tmp_path), "mnist", "train")
    assert os.path.isfile(path)
    assert not [f for f in os.listdir(os.path.dirname(path)) if f.endswith(".tmp")]  # atomic: no leftovers

    import torchvision.datasets

    def fail(*a, **k):
        raise AssertionError("decoded again although the cache is current")

    with monkeypatch.context() as m:
        m.setattr(torchvision.datasets.MNIST, "_load_data", fail)
        again, _, _ = create_dataset("mnist", data_dir=tmp_path)
    assert torch.equal(again.tensors[0], train.tensors[0])

    write_mnist(str(tmp_path), 120, 30, seed=5)  # new files: the cache is stale
    changed, _, _ = create_dataset("mnist", data_dir=tmp_path)
    assert not torch.equal(changed.tensors[0], train.tensors[0])
    with open(path, "wb") as f:
        f.write(b"damaged")
    assert torch.equal(create_dataset("mnist", data_dir=tmp_path)[0].tensors[0], changed.tensors[0])


def test_pipeline_choice_and_bad_values(files, tmp_path):
    digits = create_dataset("digits", pipeline="loader", num_workers=3)[0]
    assert (digits.pipeline, digits.num_workers) == ("loader", 3)
    assert create_dataset("digits")[0].pipeline == "device"
    assert create_dataset("digits", num_workers="auto")[0].num_workers == resolve_num_workers("auto") >= 1
    with unchecked_cifar():
        ra = create_dataset("cifar10", data_dir=files, randaugment="rand-m9-mstd0.5-inc1")[0]
        assert ra.pipeline == "loader"  # auto: RandAugment is per image
        with pytest.raises(ValueError, match=r"^pipeline: cifar10 with RandAugment .*--dataset.pipeline loader"):
            create_dataset("cifar10", data_dir=files, pipeline="device", randaugment="rand-m9-mstd0.5-inc1")
    with pytest.raises(ValueError, match="^pipeline: expected one of auto, device, loader, got 'gpu'$"):
        create_dataset("digits", pipeline="gpu")
    with pytest.raises(ValueError, match=r"^num_workers: expected 'auto' or an int >= 0, got -1$"):
        create_dataset("digits", num_workers=-1)
    with pytest.raises(ValueError, match="^pipeline: imagefolder data are decoded per image"):
        create_dataset("imagefolder", data_dir=tmp_path, pipeline="device")
    with pytest.raises(ValueError, match="images: expected a uint8"):
        ResidentImageDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), (0.5,), (0.5,))
    with pytest.raises(ValueError, match="mean, std: expected 3 values"):
        ResidentImageDataset(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), torch.zeros(2, dtype=torch.long),
                             (0.5,), (0.5,))
