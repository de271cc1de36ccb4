"""Loss-trend statistics and reading a history: the stall test is calibrated against minibatch
noise, every history format gives the same trend, and bad histories get clear errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from lossdoctor.doctor.trend import STALL_REL, loss_trend, read_history, stall_test, stall_threshold


def test_straight_falls_and_flat_lines():
    assert loss_trend(np.linspace(2.0, 1.0, 60)).stalled is False
    assert loss_trend([1.0] * 60).stalled is True
    t = loss_trend(np.linspace(1.0, 3.0, 60))
    assert t.growth > 1.5 and t.separated_growth > 1


def test_stall_test_is_calibrated_against_minibatch_noise():
    rng = np.random.default_rng(0)
    # A loss falling 5% per 60 steps under noise of 10%: open on 60 steps, decided on longer ones.
    verdicts = {True: 0, False: 0, None: 0}
    for seed in range(200):
        r = np.random.default_rng(seed)
        w = 1.0 - 0.05 * np.arange(60) / 60 + 0.1 * r.standard_normal(60)
        verdicts[stall_test(w)] += 1
    assert verdicts[True] <= 10  # false stalls at most ~5%
    flat = 1.0 + 0.1 * rng.standard_normal(480)
    assert stall_test(flat) is True


def test_threshold_is_a_rate():
    assert stall_threshold(60) == STALL_REL
    assert stall_threshold(120) == pytest.approx(1 - (1 - STALL_REL) ** 2)


def test_lag1_sees_a_period_two_bounce():
    w = 1.0 + 0.1 * (-1.0) ** np.arange(60)
    assert loss_trend(w).lag1 < -0.9


def test_history_formats_agree():
    losses = [3.0, 2.5, 2.2, 2.1, 2.0, 1.95]
    ref = read_history(losses).losses
    for form in (
        np.array(losses),
        torch.tensor(losses, dtype=torch.float64),
        {"losses": losses},
        {"loss": losses},
        type("Rec", (), {"losses": losses})(),
    ):
        assert np.array_equal(read_history(form).losses, ref)
    h = read_history({"losses": losses, "grad_norms": [1.0] * 6, "grad_cosines": [0.5] * 5})
    assert h.grad_norms.shape == (6,) and h.grad_cosines.shape == (5,)


@pytest.mark.parametrize(
    "history, error, match",
    [
        (None, ValueError, "history is None"),
        ([1.0, 2.0], ValueError, "at least 4"),
        ("1,2,3,4", TypeError, "is a string"),
        ([[1.0, 2.0], [3.0, 4.0]], ValueError, "one-dimensional"),
        (torch.ones(4, dtype=torch.bool), TypeError, "real numbers"),
        ([True, False, True, False], TypeError, "real numbers"),
        ({"nope": [1.0]}, TypeError, "has no losses"),
        ({"losses": [1.0] * 5, "grad_norms": [1.0] * 4}, ValueError, "gradient norms"),
        (["a", "b", "c", "d"], TypeError, "real numbers"),
    ],
)
def test_bad_history(history, error, match):
    with pytest.raises(error, match=match):
        read_history(history)


def test_nonfinite_losses_are_counted_not_averaged():
    t = loss_trend([1.0] * 50 + [math.nan] * 10)
    assert t.nonfinite == 10


def test_the_monitors_cheap_statistics_agree_with_the_full_trend():
    """The Monitor checks with trend.growth/separated_growth/stall_test (no LossTrend built):
    they must give what loss_trend gives, on falling, flat, growing and heavy-tailed windows."""
    import numpy as np

    from lossdoctor.doctor import trend as T

    rng = np.random.default_rng(0)
    for n in (8, 9, 30, 60, 61, 120):
        for slope, scale in ((-0.01, 0.01), (0.0, 0.05), (0.02, 0.01), (-0.001, 0.3)):
            noise = rng.standard_t(2, n) if scale > 0.1 else rng.standard_normal(n)
            w = 2.0 + slope * np.arange(n) + scale * noise
            full = T.loss_trend(w, n)
            assert abs(T.growth(w) - full.growth) <= 1e-12 * abs(full.growth)
            assert abs(T.separated_growth(w) - full.separated_growth) <= 1e-12 * abs(
                full.separated_growth
            )
            assert T.stall_test(w) == full.stalled
            for q in (0.25, 0.5, 0.75):
                assert abs(T._quantile_sorted(np.sort(w), q) - np.quantile(w, q)) <= 1e-12 * abs(
                    np.quantile(w, q)
                )
