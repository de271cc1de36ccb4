"""What counts as data, and how it is batched and placed."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lossdoctor.data import batch_size, check_data, is_single_batch, iter_batches, place

X, Y = torch.randn(10, 3), torch.randint(0, 2, (10,))


def test_single_pair_vs_list_of_batches():
    assert is_single_batch((X, Y)) and is_single_batch([X, Y])
    assert is_single_batch(((X, X), Y)) and is_single_batch(({"a": X}, Y))
    two = [(X[:4], Y[:4]), (X[4:], Y[4:])]
    assert not is_single_batch(two)
    assert [len(y) for _, y in iter_batches(two)] == [4, 6]
    assert [len(y) for _, y in iter_batches((X, Y))] == [10]


def test_dataloader_is_reiterable():
    loader = DataLoader(TensorDataset(X, Y), batch_size=4)
    check_data(loader)
    sizes = [batch_size(y) for _, y in iter_batches(loader)]
    assert sizes == [4, 4, 2] and sizes == [batch_size(y) for _, y in iter_batches(loader)]


def test_one_shot_and_malformed_data():
    with pytest.raises(TypeError, match="one-shot iterator"):
        check_data(iter([(X, Y)]))
    with pytest.raises(TypeError, match="single tensor"):
        check_data(X)
    with pytest.raises(ValueError, match="None"):
        check_data(None)
    with pytest.raises(TypeError, match="batch 0 is a str"):
        list(iter_batches(["xy"]))
    with pytest.raises(TypeError, match="batch 0 is a dict without tensors"):
        list(iter_batches([{"text": "a"}]))
    ((inputs, targets),) = iter_batches([{"x": X, "y": Y}])  # a dict without labels: no targets
    assert inputs["y"] is Y and targets.shape == (len(X), 0)


def test_batch_size_and_place():
    assert batch_size(torch.tensor(1.0)) == 1 and batch_size(Y) == 10
    x, y = place((X, X), Y, torch.device("cpu"))
    assert isinstance(x, tuple) and x[0].device.type == "cpu"
    with pytest.raises(ValueError, match="inputs are on meta"):
        place(X.to("meta"), Y, torch.device("cpu"))
    with pytest.raises(ValueError, match="targets are on meta"):
        place({"a": X}, Y.to("meta"), torch.device("cpu"))


def test_split_batch_cuts_batch_tensors_and_shares_the_rest():
    from lossdoctor.data import split_batch

    x, mask, y = torch.arange(10.0).reshape(5, 2), torch.ones(3, 3), torch.arange(5)
    parts = list(split_batch({"x": x, "mask": mask}, y, 2))
    assert [m for _, _, m in parts] == [2, 2, 1]
    assert torch.equal(torch.cat([p["x"] for p, _, _ in parts]), x)
    assert torch.equal(torch.cat([t for _, t, _ in parts]), y)
    assert all(p["mask"] is mask for p, _, _ in parts)  # not the batch: whole, every time
    (whole,) = list(split_batch((x, mask), y, 5))  # no cut needed: the batch as it is
    assert whole[0][0] is x and whole[2] == 5
    assert [tuple(p[0].shape) for p, _, _ in split_batch((x, mask), y, 4)] == [(4, 2), (1, 2)]
