"""escape_saddle, compare_saddle_escapes and gradient_descent_path on closed-form saddles."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import lossdoctor as ld
from lossdoctor.zoo.lecture import lecture_saddle
from test_critical import ONE, Quadratic, assert_same, mean_output, snapshot


class QuarticSaddle(Quadratic):
    """½ θᵀAθ + ¼ ||θ||⁴: with A's smallest eigenvalue -1 the best step along its eigenvector
    from the origin has length 1 and lowers the loss by exactly 1/4."""

    def forward(self, x):
        value = 0.5 * self.theta @ self.A @ self.theta + 0.25 * (self.theta @ self.theta) ** 2
        return value.expand(x.shape[0])


def test_toy_escape_lowers_the_loss_along_the_eigenvector():
    p = lecture_saddle()
    snap = snapshot(p.model)
    result = ld.escape_saddle(p.model, p.loss_fn, p.train_data)
    assert_same(p.model, snap)  # apply=False: untouched
    assert result.escaped and not result.applied
    assert result.eigenvalue == pytest.approx(-2.0, abs=1e-6)
    # Along u = (1,1)/sqrt(2): L = (1 - t^2/2)^2, zero at t = sqrt(2).
    assert result.loss_before == pytest.approx(1.0)
    assert result.loss_after < 1e-6
    assert result.step == pytest.approx(math.sqrt(2), abs=1e-3)
    assert result.predicted_change == pytest.approx(0.5 * -2.0 * result.step**2)
    assert result.first_order_change == 0.0
    assert np.allclose(
        result.direction.numpy() * result.sign, np.array([1, 1]) / math.sqrt(2), atol=1e-6
    ) or np.allclose(
        result.direction.numpy() * result.sign, -np.array([1, 1]) / math.sqrt(2), atol=1e-6
    )
    assert "model unchanged" in str(result)


def test_second_order_prediction_matches_small_steps():
    p = lecture_saddle()
    result = ld.escape_saddle(p.model, p.loss_fn, p.train_data)
    small = np.abs(result.line_search_steps) < 0.15
    assert small.sum() >= 10
    t = result.line_search_steps[small]
    actual = result.line_search_losses[small] - result.loss_before
    predicted = 0.5 * result.eigenvalue * t**2
    # Along u the exact change is -t^2 + t^4/4: relative error of the quadratic model is t^2/4.
    assert np.allclose(actual, predicted, rtol=0.006, atol=1e-6)


def test_apply_writes_the_escaped_parameters():
    p = lecture_saddle()
    result = ld.escape_saddle(p.model, p.loss_fn, p.train_data, apply=True)
    assert result.applied
    w1, w2 = float(p.model.w1.detach()), float(p.model.w2.detach())
    assert w1 * w2 == pytest.approx(1.0, abs=1e-3)
    assert w1 == pytest.approx(w2, abs=1e-6)
    after = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
    assert after.loss == pytest.approx(result.loss_after, abs=1e-6)


def test_quartic_saddle_line_search_finds_the_best_step():
    model = QuarticSaddle([2.0, -1.0, 0.5], seed=1)
    result = ld.escape_saddle(model, mean_output, ONE)
    assert result.step == pytest.approx(1.0, abs=1e-4)
    assert result.actual_change == pytest.approx(-0.25, abs=1e-7)
    assert result.predicted_change == pytest.approx(-0.5, abs=1e-3)
    assert float(model.theta.detach().abs().max()) == 0.0  # not applied


def test_no_negative_curvature_means_no_escape_and_no_change():
    model = Quadratic([2.0, 1.0])
    snap = snapshot(model)
    result = ld.escape_saddle(model, mean_output, ONE, apply=True)
    assert not result.escaped and not result.applied
    assert "no direction of negative curvature" in result.message
    assert_same(model, snap)


def test_escape_reuses_a_classification_and_checks_it():
    p = lecture_saddle()
    point = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
    result = ld.escape_saddle(p.model, p.loss_fn, p.train_data, critical=point)
    assert result.critical is point
    other = ld.classify_critical_point(Quadratic([1.0, -1.0, 2.0]), mean_output, ONE)
    with pytest.raises(ValueError, match="3 parameters"):
        ld.escape_saddle(p.model, p.loss_fn, p.train_data, critical=other)
    with pytest.raises(TypeError, match="CriticalPoint"):
        ld.escape_saddle(p.model, p.loss_fn, p.train_data, critical={"kind": "saddle_point"})
    with pytest.raises(TypeError, match="apply"):
        ld.escape_saddle(p.model, p.loss_fn, p.train_data, apply="yes")


def test_escape_leaves_a_real_network_unchanged():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()  # all-zero weights: a saddle of the squared error
    x, y = torch.randn(32, 3), torch.randn(32, 1)
    model.train()
    snap = snapshot(model)
    result = ld.escape_saddle(model, nn.MSELoss(), (x, y))
    assert_same(model, snap)
    assert result.critical.kind in ("saddle_point", "degenerate", "not_critical")
    if result.escaped:
        assert result.loss_after < result.loss_before


def test_compare_on_the_toy():
    p = lecture_saddle()
    snap = snapshot(p.model)
    cmp_ = ld.compare_saddle_escapes(
        p.model, p.loss_fn, p.train_data, steps=40, lr=0.1, record_paths=True
    )
    assert_same(p.model, snap)
    by = {m.name: m for m in cmp_.methods}
    # Exactly at the saddle the gradient is 0: plain GD and momentum never move.
    assert by["gradient descent"].losses == [1.0] * 41 and by["gradient descent"].escaped_at is None
    assert by["momentum"].escaped_at is None
    eigen = by["eigenvector step + GD"]
    assert (
        eigen.escaped_at == 1
        and eigen.losses[1] < 1e-6
        and eigen.matvecs > 0
        and eigen.loss_evaluations > 0
    )
    assert by["perturbed GD"].kicks >= 1 and by["perturbed GD"].escaped_at is not None
    assert by["momentum + kicks"].escaped_at is not None
    assert by["momentum + kicks"].escaped_at < by["perturbed GD"].escaped_at
    for m in cmp_.methods:
        assert len(m.losses) == 41 and len(m.path) == 41
        assert m.gradients >= 40
    assert cmp_.escape_drop == pytest.approx(0.5 * abs(cmp_.escape.actual_change))
    assert "eigenvector step + GD" in str(cmp_)


def test_compare_is_reproducible_by_seed():
    p = lecture_saddle()
    a = ld.compare_saddle_escapes(p.model, p.loss_fn, p.train_data, steps=15, lr=0.1, seed=3)
    b = ld.compare_saddle_escapes(p.model, p.loss_fn, p.train_data, steps=15, lr=0.1, seed=3)
    assert [m.losses for m in a.methods] == [m.losses for m in b.methods]


def test_compare_refuses_a_minimum_and_bad_options():
    with pytest.raises(ValueError, match="nothing to compare"):
        ld.compare_saddle_escapes(Quadratic([1.0, 2.0]), mean_output, ONE, steps=5)
    p = lecture_saddle()
    for kwargs, match in (
        ({"steps": 0}, "steps"),
        ({"momentum": 1.0}, "momentum"),
        ({"lr": -1.0}, "lr"),
    ):
        with pytest.raises(ValueError, match=match):
            ld.compare_saddle_escapes(p.model, p.loss_fn, p.train_data, **kwargs)


def test_gradient_descent_from_a_hair_away_escapes_slowly():
    p = lecture_saddle(1e-2, 0.0)
    snap = snapshot(p.model)
    path = ld.gradient_descent_path(p.model, p.loss_fn, p.train_data, steps=40, lr=0.1)
    assert_same(p.model, snap)
    assert path.losses[1] > 0.999  # hardly moves at first
    assert path.losses[-1] < 0.01  # but gets away in the end
    assert path.path[0] == pytest.approx([1e-2, 0.0])
    with pytest.raises(ValueError, match="lr"):
        ld.gradient_descent_path(p.model, p.loss_fn, p.train_data, steps=3, lr=0.0)
