"""Interpolation between two known points, filter-normalized directions, 1-D and 2-D landscapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import ModelSnapshot
from lossdoctor.analysis.landscape import random_direction
from test_model_unchanged import model_in_a_mixed_state


class Point(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.tensor([value, 2 * value]))

    def forward(self, x):
        return self.w.expand(x.shape[0], 2)


def sq(out, target):
    return ((out - target) ** 2).sum(1).mean()


DATA = (torch.zeros(3, 1), torch.zeros(3, 2))


def test_interpolation_between_two_known_points():
    a, b = Point(1.0), Point(3.0)
    before = [ModelSnapshot.take(a), ModelSnapshot.take(b)]
    test = (torch.zeros(2, 1), torch.ones(2, 2))
    curve = ld.interpolate(a, b, sq, DATA, [-0.5, 0.0, 0.5, 1.0, 1.5], test_data=test)
    before[0].assert_same(a, "interpolate a")
    before[1].assert_same(b, "interpolate b")
    for alpha, loss, test_loss in zip(curve.alphas, curve.train_loss, curve.test_loss):
        w = (1 - alpha) * 1.0 + alpha * 3.0
        assert loss == pytest.approx(5 * w**2)
        assert test_loss == pytest.approx((w - 1) ** 2 + (2 * w - 1) ** 2)
    assert curve.distance == pytest.approx(np.sqrt(4 + 16))
    assert curve.train_accuracy == [None] * 5 and "Interpolation" in str(curve)


def test_interpolation_default_alphas_and_architecture_check():
    model, loss_fn, data = model_in_a_mixed_state(dropout=0.0)
    other = model_in_a_mixed_state(dropout=0.0)[0]
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.1)
    curve = ld.interpolate(model, other, loss_fn, data)
    assert curve.alphas[0] == -0.5 and curve.alphas[-1] == 1.5 and len(curve.alphas) == 41
    assert curve.train_accuracy[0] is not None
    with pytest.raises(ValueError, match="same architecture"):
        ld.interpolate(model, Point(1.0), loss_fn, data)


def test_filter_normalization_property():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4), nn.Flatten(), nn.Linear(4 * 6, 5))
    d = random_direction(model, seed=3)
    for (name, p), t in zip(model.named_parameters(), d):
        if p.dim() == 1:  # biases and BatchNorm: zero direction by default
            assert torch.count_nonzero(t) == 0, name
        else:  # every filter (output channel / row) has its weight's norm
            torch.testing.assert_close(
                t.reshape(t.shape[0], -1).norm(dim=1),
                p.detach().reshape(p.shape[0], -1).norm(dim=1),
            )
    with_bias = random_direction(model, seed=3, ignore_bias_bn=False)
    assert torch.equal(with_bias[1], model[0].bias.detach())
    layer = random_direction(model, seed=3, normalization="layer")
    assert layer[0].norm() == pytest.approx(float(model[0].weight.detach().norm()), rel=1e-5)


def test_landscape_1d_quadratic_and_2d_grid():
    torch.manual_seed(0)
    model = nn.Linear(3, 1, bias=False)
    x = torch.randn(20, 3)
    y = model(x).detach()  # the model sits at the minimum of the MSE
    before = ModelSnapshot.take(model)
    d = [torch.tensor([[1.0, 0.0, 0.0]])]
    land = ld.landscape(
        model, F.mse_loss, (x, y), dims=1, steps=5, span=2.0, directions=[d], test_data=(x, y)
    )
    before.assert_same(model, "landscape")
    coords = np.array(land.coords)
    expected = coords**2 * float((x[:, 0] ** 2).mean())
    np.testing.assert_allclose(land.train_loss, expected, rtol=1e-5, atol=1e-7)
    assert land.test_loss == pytest.approx(land.train_loss) and land.center_loss == pytest.approx(
        0, abs=1e-10
    )
    grid = ld.landscape(model, F.mse_loss, (x, y), dims=2, steps=4, seed=1)
    assert len(grid.train_loss) == 4 and all(len(row) == 4 for row in grid.train_loss)
    assert grid.test_loss is None and grid.dims == 2 and "2-D" in str(grid)
    before.assert_same(model, "landscape 2-D")


def test_landscape_bad_input():
    model, loss_fn, data = model_in_a_mixed_state(dropout=0.0)
    for kwargs, match in (
        ({"dims": 3}, "dims must be 1 or 2"),
        ({"steps": 1}, "steps"),
        ({"normalization": "batch"}, "normalization"),
        ({"span": 0}, "span"),
        ({"directions": [[torch.zeros(1)]]}, "directions"),
    ):
        with pytest.raises(ValueError, match=match):
            ld.landscape(model, loss_fn, data, **kwargs)
    with pytest.raises(ValueError, match="alphas"):
        ld.interpolate(model, model, loss_fn, data, [0.5])


def test_landscape_says_it_evaluates_in_eval_mode_and_leaves_train_mode_alone():
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 4, generator=gen), torch.randint(0, 3, (32,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    model.train()
    model(x)  # running statistics differ from this batch's: the two modes give other losses
    land = ld.landscape(model, F.cross_entropy, (x, y), steps=3, seed=0)
    assert model.training and land.mode == "eval" and "(eval mode)" in str(land)
    model.eval()
    with torch.no_grad():
        eval_loss = float(F.cross_entropy(model(x), y))
    model.train()
    with torch.no_grad():
        train_loss = float(F.cross_entropy(model(x), y))
    assert land.center_loss == pytest.approx(eval_loss, rel=1e-5)
    assert abs(eval_loss - train_loss) > 1e-3
