"""The validation hold-out: seeded, class-balanced, disjoint from training, read like the test set."""

import pytest
import torch
from torch.utils.data import Dataset

from lth_kernels.data import TensorImageDataset, create_dataset, hold_out, validation_indices
from lth_kernels.data.split import dataset_labels


def test_indices_are_class_balanced_seeded_and_disjoint():
    labels = torch.arange(3).repeat_interleave(torch.tensor([50, 30, 20]))[torch.randperm(100)]
    train, val = validation_indices(labels, 10, seed=3)
    assert len(val) == 10 and len(train) == 90
    assert torch.equal(torch.sort(torch.cat([train, val])).values, torch.arange(100))  # a partition
    assert torch.bincount(labels[val], minlength=3).tolist() == [4, 3, 3]  # 10 // 3 each, the rest to class 0
    again, other = validation_indices(labels, 10, seed=3)[1], validation_indices(labels, 10, seed=4)[1]
    assert torch.equal(again, val) and not torch.equal(other, val)
    assert torch.equal(val, val.sort().values)
    assert validation_indices(labels, 0)[1].numel() == 0


@pytest.mark.parametrize("size", [-1, 100, 2.5, True])
def test_bad_sizes_are_one_line_errors(size):
    with pytest.raises(ValueError, match=r"^validation: expected an int in \[0, 100\)"):
        validation_indices(torch.zeros(100, dtype=torch.long), size)


def test_a_class_too_small_to_split_is_an_error():
    labels = torch.tensor([0] * 20 + [1] * 2)
    with pytest.raises(ValueError, match="of class 1, which has only 2"):
        validation_indices(labels, 6)


def test_in_memory_hold_out_keeps_tensors():
    train, test, _ = create_dataset("digits")
    part, val = hold_out(train, test, 100, seed=0)
    assert isinstance(part, TensorImageDataset) and isinstance(val, TensorImageDataset)
    assert len(part) + len(val) == len(train) and len(val) == 100
    # every held-out image is a training image, and none is still in the training part
    rows = {tuple(x.flatten().tolist()) for x in train.images}
    kept = {tuple(x.flatten().tolist()) for x in part.images}
    assert all(tuple(x.flatten().tolist()) in rows - kept for x in val.images)
    assert hold_out(train, test, 0) == (train, None)


class Transformed(Dataset):
    """A torchvision-like data set: ``targets`` and a per-sample ``transform``."""

    def __init__(self, n, transform):
        self.data, self.targets, self.transform = torch.arange(n, dtype=torch.float32), [i % 2 for i in range(n)], \
            transform

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.transform(self.data[i]), self.targets[i]


def test_file_backed_hold_out_reads_like_the_test_set():
    train, test = Transformed(20, lambda x: x + 1000), Transformed(4, lambda x: -x)
    part, val = hold_out(train, test, 6, seed=1)
    assert len(part) == 14 and len(val) == 6
    assert all(part[i][0] >= 1000 for i in range(len(part)))  # training keeps its (augmenting) transform
    assert all(val[i][0] <= 0 for i in range(len(val)))  # validation reads with the test transform
    assert train.transform(torch.tensor(1.0)) == 1001  # the original data set is untouched
    assert {int(-val[i][0]) for i in range(6)}.isdisjoint({int(part[i][0] - 1000) for i in range(14)})
    assert torch.equal(dataset_labels(train), torch.tensor(train.targets))
