"""Coverage of the gradient noise scale's interval against known truth, over many seeds.

Two constructions with B_simple = tr(Sigma)/|G|^2 known exactly:
- per-sample gradients drawn from a Gaussian with mean G and covariance Sigma, so a batch of B
  has mean gradient ~ N(G, Sigma/B) (the statistics alone, through ``ratio_interval``);
- a float64 linear least-squares model whose per-sample gradients 2 (x.w - y) x give G and Sigma
  (population covariance: batches are drawn with replacement) in closed form, through
  ``gradient_noise_scale`` itself.
Each runs an easy regime (|G|^2 far above its estimate's noise) and a hard one (the noise of the
|G|^2 estimate about |G|^2 or larger), where the former bootstrap-percentile interval missed the
truth: on a timm ViT it gave 11.9 +- 24 for a true 114. The seeds are fixed, so the counts are
deterministic; the bounds are the level +- 3 binomial standard deviations of a count over that
many seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from lossdoctor.analysis.noise_scale import ratio_interval

SMALL, BIG = 4, 64
D = 20
LAM = np.linspace(0.5, 2.0, D)  # Sigma's eigenvalues: tr(Sigma) = 25
# Per-coordinate size of G: at 30 pairs the |G|^2 estimate's standard error is 0.013 |G|^2 (easy)
# and 2.1 |G|^2 (hard).
EASY, HARD = 1.0, 0.03


def gaussian_pairs(rng: np.random.Generator, g_coord: float, pairs: int):
    """Per-pair estimates of tr(Sigma) and |G|^2 from the two-batch estimator."""
    mean = np.full(D, g_coord)
    small = mean + np.sqrt(LAM / SMALL) * rng.standard_normal((pairs, D))
    big = mean + np.sqrt(LAM / BIG) * rng.standard_normal((pairs, D))
    s_sq, b_sq = (small**2).sum(1), (big**2).sum(1)
    g2 = (BIG * b_sq - SMALL * s_sq) / (BIG - SMALL)
    tr = (s_sq - b_sq) / (1 / SMALL - 1 / BIG)
    return tr, g2


def old_interval(tr: np.ndarray, g2: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """The interval gradient_noise_scale reported before: 16th-84th bootstrap percentiles of the
    ratio of resampled means (kept here to show what it missed)."""
    k = rng.integers(0, len(tr), (1000, len(tr)))
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = tr[k].mean(1) / g2[k].mean(1)
    lo, hi = np.percentile(boot, [16, 84])
    return float(lo), float(hi)


def band(level: float, seeds: int) -> tuple[float, float]:
    sd = math.sqrt(level * (1 - level) / seeds)
    return level - 3 * sd, level + 3 * sd


def gaussian_coverage(g_coord: float, level: float, seeds: int = 200, pairs: int = 30):
    truth = LAM.sum() / (D * g_coord**2)
    new = old = unbounded = 0
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        tr, g2 = gaussian_pairs(rng, g_coord, pairs)
        r = ratio_interval(tr, g2, level=level, bootstrap=300, seed=seed)
        new += r.interval[0] <= truth <= r.interval[1]
        unbounded += math.isinf(r.interval[1])
        lo, hi = old_interval(tr, g2, rng)
        old += lo <= truth <= hi
    return new / seeds, old / seeds, unbounded / seeds


def test_gaussian_easy_regime_covers_at_its_level():
    new, old, unbounded = gaussian_coverage(EASY, 0.68)
    lo, hi = band(0.68, 200)
    assert lo <= new <= hi, new
    assert unbounded == 0  # |G|^2 is 80 standard errors above 0: every interval is bounded
    assert lo <= old <= hi, old  # and there the former interval was right too


def test_gaussian_hard_regime_covers_where_the_former_interval_did_not():
    new, old, unbounded = gaussian_coverage(HARD, 0.68)
    lo, hi = band(0.68, 200)
    # At least the level. Above it by up to the chance that |G|^2's estimate falls significantly
    # below 0: there Fieller's set misses [0, inf) and [0, inf) is reported (0.75 over 2000 seeds).
    assert lo <= new <= 0.85, new
    assert 0.3 < unbounded < 0.9, unbounded  # often no finite upper end, but not always
    assert old < lo, old  # the former "68%" interval held the truth 40% of the time


def test_gaussian_regimes_at_ninety_percent():
    new, _, _ = gaussian_coverage(EASY, 0.9, seeds=200)
    lo, hi = band(0.9, 200)
    assert lo <= new <= hi, new
    new, _, _ = gaussian_coverage(HARD, 0.9, seeds=200)
    assert lo <= new <= 0.97, new


def lsq_problem(offset: float):
    """A float64 least-squares model at distance ``offset`` (along a fixed direction) from the
    optimum, and its exact B_simple from the per-sample gradients."""
    gen = torch.Generator().manual_seed(0)
    n, d = 200, 5
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    y = x @ torch.ones(d, 1, dtype=torch.float64) + 0.5 * torch.randn(
        n, 1, generator=gen, dtype=torch.float64
    )
    w_star = torch.linalg.lstsq(x, y).solution  # (d, 1): the full gradient vanishes here
    w = w_star.T + offset * torch.linspace(-1.0, 1.0, d, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(w)
    per_sample = 2 * (x @ w.T - y) * x  # gradient of (x.w - y)^2, one row per sample
    g = per_sample.mean(0)
    trace_sigma = float(((per_sample - g) ** 2).sum(1).mean())
    return model, (x, y), trace_sigma / float(g @ g)


@pytest.mark.parametrize(
    ("offset", "most_covered", "least_unbounded", "most_unbounded"),
    # easy: B_simple 6.7, never unbounded; hard: B_simple 730, |G|^2's standard error over 20
    # pairs 3.6 times |G|^2 (covered 0.76, unbounded 0.76 on these seeds)
    [(1.0, band(0.68, 200)[1], 0.0, 0.0), (0.03, 0.85, 0.3, 0.95)],
    ids=["easy", "hard"],
)
def test_gradient_noise_scale_interval_covers_linear_least_squares(
    offset, most_covered, least_unbounded, most_unbounded
):
    model, data, truth = lsq_problem(offset)
    seeds, covered, unbounded = 200, 0, 0
    for seed in range(seeds):
        ns = ld.gradient_noise_scale(
            model,
            F.mse_loss,
            data,
            small_batch=SMALL,
            big_batch=BIG,
            pairs=20,
            seed=seed,
            bootstrap=200,
            progress=False,
        )
        covered += ns.interval[0] <= truth <= ns.interval[1]
        unbounded += not ns.bounded
        if ns.bounded:
            assert math.isfinite(ns.standard_error) and "no upper bound" not in str(ns)
        else:
            assert ns.standard_error == math.inf and "no upper bound" in str(ns)
            assert ns.to_dict()["interval"][1] is None and ns.to_dict()["standard_error"] is None
    assert band(0.68, seeds)[0] <= covered / seeds <= most_covered, covered / seeds
    assert least_unbounded <= unbounded / seeds <= most_unbounded, unbounded / seeds


def test_ratio_interval_edge_cases():
    # No spread: the interval is the ratio itself.
    r = ratio_interval(np.full(5, 3.0), np.full(5, 1.5), bootstrap=100)
    assert r.estimate == 2.0 and r.interval == pytest.approx((2.0, 2.0)) and r.standard_error == 0
    # A denominator of mean exactly 0 (a critical point): infinite estimate, no upper end.
    r = ratio_interval(np.array([1.0, 2.0, 3.0]), np.array([-1.0, 0.0, 1.0]), bootstrap=100)
    assert r.estimate == math.inf and r.interval[1] == math.inf and r.standard_error == math.inf
    # Fieller's quadratic by hand for a bounded case, Student's t alone (bootstrap=0).
    from scipy.stats import t as student_t

    num, den = np.array([4.0, 6.0, 5.0, 5.5]), np.array([1.0, 1.2, 0.9, 1.1])
    r = ratio_interval(num, den, level=0.9, bootstrap=0)
    q = student_t.ppf(0.95, 3)
    for end in r.interval:  # on the boundary: |mean(num) - r mean(den)| = q s.e.
        diff = num - end * den
        assert abs(diff.mean()) == pytest.approx(q * diff.std(ddof=1) / 2, rel=1e-9)
    assert r.interval[0] < r.estimate < r.interval[1] and r.critical_value == q
    with pytest.raises(ValueError, match="same length"):
        ratio_interval(num, den[:3])
    with pytest.raises(ValueError, match="finite"):
        ratio_interval(num, np.array([1.0, np.nan, 1.0, 1.0]))


def test_level_is_checked():
    model, data, _ = lsq_problem(1.0)
    with pytest.raises(ValueError, match="level"):
        ld.gradient_noise_scale(model, F.mse_loss, data, small_batch=4, big_batch=8, level=1.0)
