"""time_batch_sizes: updates per epoch, timing fields, saturation, model left alone, errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import ModelSnapshot
from lossdoctor.training.timing import default_batch_sizes


def test_timing_fields_and_lecture_update_counts():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(100, 10), torch.randint(0, 3, (100,))
    before = ModelSnapshot.take(model)
    t = ld.time_batch_sizes(
        model, F.cross_entropy, (x, y), [1, 10, 100, 1000], repeats=2, warmup=1, epoch_size=60_000
    )
    before.assert_same(model, "time_batch_sizes")
    assert t.batch_sizes == [1, 10, 100, 1000]
    assert t.updates_per_epoch == [60_000, 6_000, 600, 60]  # the lecture's numbers (1,000 -> 60)
    assert all(
        lo <= med <= hi
        for lo, med, hi in zip(
            t.seconds_per_update_min, t.seconds_per_update, t.seconds_per_update_max
        )
    )
    for b, s, e, thr, u in zip(
        t.batch_sizes,
        t.seconds_per_update,
        t.seconds_per_epoch,
        t.samples_per_second,
        t.updates_per_epoch,
    ):
        assert e == pytest.approx(u * s) and thr == pytest.approx(b / s)
    assert t.saturation_batch_size in t.batch_sizes
    assert t.samples_per_second[t.batch_sizes.index(t.saturation_batch_size)] >= 0.8 * max(
        t.samples_per_second
    )
    assert "saturates" in str(t) and t.to_dict()["device"] == "cpu"


def test_default_sizes_span_one_to_dataset():
    assert default_batch_sizes(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    model = nn.Linear(2, 2)
    t = ld.time_batch_sizes(
        model, F.cross_entropy, (torch.randn(5, 2), torch.randint(0, 2, (5,))), repeats=1, warmup=0
    )
    assert t.batch_sizes == [1, 2, 4, 5] and t.updates_per_epoch == [5, 3, 2, 1]


def test_bad_input():
    model = nn.Linear(2, 2)
    data = (torch.randn(5, 2), torch.randint(0, 2, (5,)))
    with pytest.raises(ValueError, match=r"batch_sizes\[0\] must be an integer >= 1, got 0"):
        ld.time_batch_sizes(model, F.cross_entropy, data, [0, 4])
    with pytest.raises(ValueError, match="repeats"):
        ld.time_batch_sizes(model, F.cross_entropy, data, [2], repeats=0)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ld.time_batch_sizes(frozen, F.cross_entropy, data, [2])
