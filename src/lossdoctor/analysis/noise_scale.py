"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

B_simple = tr(Sigma) / |G|^2, with G the full-data gradient and Sigma the covariance of per-sample
gradients. Batches much smaller than B_simple are dominated by noise (doubling the batch nearly
halves the steps needed); much larger ones waste samples.

Two-batch-size estimator (their Appendix A): for a batch of B samples drawn with replacement,
E|G_B|^2 = |G|^2 + tr(Sigma)/B. With a small and a big batch size,

    |G|^2    ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

are unbiased; each is averaged over many pairs before taking the ratio (the ratio of noisy
estimates is biased).

The uncertainty is Fieller's interval for a ratio of means (Fieller 1954), not a ± on the ratio:
B_simple lies in it where (mean tr(Sigma) - B mean |G|^2) is within q standard errors of 0, a
quadratic condition in B. When |G|^2 is significantly above 0 the set is a bounded interval (the
delta-method standard error is then meaningful too); when it is not, |G|^2 may be 0 and B_simple
infinite, and the interval's upper end is unbounded (``inf``): no finite ± is honest there. Both
tr(Sigma) and |G|^2 are >= 0, so the interval is cut to [0, inf]. The critical value q is Student's
t over the pairs, raised to the bootstrap-t quantile of the same statistic when that is larger
(per-pair estimates are skewed: squared norms of sums of heavy-tailed per-sample gradients).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_choice,
    check_float,
    check_int,
    check_loss_fn,
    check_module,
    check_progress,
    check_seed,
)
from .._results import ResultMixin, fmt
from ..curvature.operator import checked_reduction
from ..data import batch_loss, take
from ..evaluation import as_tensors
from ..model_state import evaluation_mode, preserved_model, trainable_parameters
from ..progress import Progress, as_callback, with_progress

MODES = ("eval", "train")


class RatioInterval(NamedTuple):
    """Fieller's interval for a ratio of means; see :func:`ratio_interval`."""

    estimate: float  # mean(numerator) / mean(denominator)
    standard_error: float  # delta method; inf when the denominator is not significantly above 0
    interval: tuple[float, float]  # within [0, inf]; (lo, inf) when unbounded above
    critical_value: float  # q: the set where |mean(num) - r mean(den)| <= q s.e.


def ratio_interval(
    numerator: Any, denominator: Any, *, level: float = 0.68, bootstrap: int = 1000, seed: int = 0
) -> RatioInterval:
    """Fieller's confidence interval for ``E[numerator] / E[denominator]`` from paired samples.

    The ratio r is in the interval where ``mean(num) - r mean(den)`` is within ``q`` of its
    standard errors of 0 (the pairs' covariance included), with ``q`` Student's t quantile over
    ``n - 1`` degrees of freedom or, when larger, the bootstrap-t quantile of the same statistic.
    Both expectations are taken to be >= 0 (as tr(Sigma) and |G|^2 are), so the interval is cut to
    [0, inf]. When the denominator is not significantly above 0 at ``level`` the interval has no
    finite upper end (``inf``) and the standard error is ``inf``: the ratio may be infinite.

    Args:
        numerator: one unbiased estimate of the numerator per pair (1-d).
        denominator: the paired estimates of the denominator, as many.
        level: the confidence level, in (0, 1).
        bootstrap: resamples of the pairs for the bootstrap-t critical value (0: Student's t only).
        seed: the bootstrap's seed (a local generator: the global RNG is not touched).

    Returns:
        The point estimate (ratio of the means), its delta-method standard error, the interval and
        the critical value used.

    Examples:
        >>> import numpy as np
        >>> r = ratio_interval(np.array([2.0, 4.0, 3.0, 3.0]), np.array([1.1, 0.9, 1.0, 1.0]),
        ...                    bootstrap=0)
        >>> round(r.estimate, 6), r.interval[0] < 3 < r.interval[1]
        (3.0, True)
        >>> ratio_interval(np.array([2.0, 4.0, 3.0]), np.array([-1.0, 1.0, 0.5]),
        ...                bootstrap=0).interval[1]
        inf
    """
    level = check_float(level, "level", above=0.0, below=1.0)
    bootstrap = check_int(bootstrap, "bootstrap", minimum=0)
    num, den = np.asarray(numerator, dtype=np.float64), np.asarray(denominator, dtype=np.float64)
    if num.ndim != 1 or num.shape != den.shape or len(num) < 2:
        raise ValueError(
            f"need two 1-d arrays of the same length >= 2, got shapes {num.shape} and {den.shape}"
        )
    if not (np.isfinite(num).all() and np.isfinite(den).all()):
        raise ValueError("the paired estimates must be finite (no NaN/Inf)")
    n = len(num)
    m_num, m_den = float(num.mean()), float(den.mean())
    cov = np.cov(np.vstack([num, den]), ddof=1) / n  # covariance of the two means
    v_nn, v_nd, v_dd = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    from scipy.stats import t as student_t

    q = float(student_t.ppf(0.5 + level / 2, n - 1))
    if m_den != 0:
        estimate = m_num / m_den
    else:  # a critical point, or |G|^2 estimates that cancel exactly
        estimate = math.copysign(math.inf, m_num) if m_num else math.nan
    if bootstrap > 0 and math.isfinite(estimate):
        q = max(q, _bootstrap_t(num - estimate * den, level, bootstrap, seed))
    q2 = q * q
    a = m_den**2 - q2 * v_dd  # > 0: the denominator is significantly away from 0
    b = -2.0 * (m_num * m_den - q2 * v_nd)
    c = m_num**2 - q2 * v_nn
    disc = b * b - 4.0 * a * c
    if a > 0 and m_den > 0:
        root = math.sqrt(max(disc, 0.0))  # >= 0 up to rounding: the estimate is inside
        lo, hi = (-b - root) / (2 * a), (-b + root) / (2 * a)
        var = max(v_nn - 2 * estimate * v_nd + estimate**2 * v_dd, 0.0)
        return RatioInterval(estimate, math.sqrt(var) / m_den, (max(lo, 0.0), max(hi, 0.0)), q)
    # Unbounded: the set is outside two roots (a < 0), or every r. Its hull within [0, inf).
    lower = 0.0
    if a < 0 and disc > 0:
        root = math.sqrt(disc)
        r1, r2 = sorted(((-b - root) / (2 * a), (-b + root) / (2 * a)))
        if r1 < 0:  # (-inf, r1] U [r2, inf) meets [0, inf) in [r2, inf)
            lower = max(r2, 0.0)
    return RatioInterval(estimate, math.inf, (lower, math.inf), q)


def _bootstrap_t(d: np.ndarray, level: float, resamples: int, seed: int) -> float:
    """The ``level`` quantile of |t| of the mean of ``d`` (centred at 0) over resamples of it."""
    n = len(d)
    rng = np.random.default_rng(seed)
    rows = max(1, min(resamples, 2_000_000 // n))  # bounded memory for many pairs
    stats = []
    for start in range(0, resamples, rows):
        k = rng.integers(0, n, (min(rows, resamples - start), n))
        dk = d[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            stats.append(np.abs(dk.mean(1)) / (dk.std(1, ddof=1) / math.sqrt(n)))
    t = np.concatenate(stats)
    t = t[np.isfinite(t)]  # resamples of one repeated pair have no spread
    return float(np.quantile(t, level)) if len(t) else 0.0


@dataclass(frozen=True)
class NoiseScale(ResultMixin):
    """The gradient noise scale B_simple with its confidence interval, and the batch size it suggests.

    Returned by :func:`gradient_noise_scale`. The interval is the thing to read: B_simple is a ratio,
    and when |G|^2 is not clearly above its own noise the ratio has no finite upper bound.

    Attributes:
        b_simple: tr(Sigma) / |G|^2, the ratio of the two means (a point estimate).
        standard_error: its delta-method standard error; ``inf`` when |G|^2 is not significantly
            above 0 at ``level`` (then only the interval is meaningful).
        interval: Fieller's interval at ``level`` within [0, inf]; its upper end is ``inf``
            (``None`` in ``to_dict()``) when |G|^2 is not significantly above 0.
        level: the interval's confidence level.
        trace_sigma: the estimated trace of the per-sample gradient covariance.
        trace_sigma_standard_error: its standard error over the pairs.
        grad_norm_sq: the estimated squared norm of the full-data gradient.
        grad_norm_sq_standard_error: its standard error over the pairs.
        small_batch: the small batch size.
        big_batch: the big batch size.
        pairs: pairs of batches averaged.
        num_samples: samples in the data.
        suggested_batch_size: B_simple rounded, within [1, data size] (the data size when B_simple
            is not finite and positive); ``None`` when interrupted. Where the interval is unbounded
            it rests on the point estimate alone, and the text says so.
        loss: the mean loss over the big batches.
        interrupted: Ctrl-C: the estimate uses the pairs finished.
        pairs_requested: the pairs asked for.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> ns = ld.gradient_noise_scale(p.model, p.loss_fn, p.train_data, small_batch=8,
        ...                              pairs=20, level=0.9)
        >>> ns.level, ns.bounded, ns.interval[0] < ns.b_simple < ns.interval[1]
        (0.9, True, True)
    """

    b_simple: float
    standard_error: float  # delta method; inf when |G|^2 is not significantly above 0
    interval: tuple[float, float]  # Fieller's, at ``level``; (lo, inf) when unbounded above
    level: float
    trace_sigma: float
    trace_sigma_standard_error: float
    grad_norm_sq: float
    grad_norm_sq_standard_error: float
    small_batch: int
    big_batch: int
    pairs: int
    num_samples: int
    suggested_batch_size: int | None  # None when interrupted: no advice from a cut-short estimate
    loss: float
    interrupted: bool = False  # Ctrl-C: the estimate uses the pairs finished (``pairs`` of them)
    pairs_requested: int | None = None

    @property
    def bounded(self) -> bool:
        """Whether the interval has a finite upper end (|G|^2 significantly above 0)."""
        return math.isfinite(self.interval[1])

    def __str__(self) -> str:
        pct = f"{100 * self.level:.3g}%"
        terms = (
            f"tr(Sigma) = {fmt(self.trace_sigma)} +- {fmt(self.trace_sigma_standard_error)}, "
            f"|G|^2 = {fmt(self.grad_norm_sq)} +- {fmt(self.grad_norm_sq_standard_error)}; "
            f"{self.pairs} pairs of batches {self.small_batch} and {self.big_batch}"
        )
        if self.bounded:
            estimate = (
                f"gradient noise scale B_simple in {fmt(self.interval[0])}..{fmt(self.interval[1])} "
                f"({pct} interval; point estimate {fmt(self.b_simple)} +- "
                f"{fmt(self.standard_error)}; {terms})"
            )
        else:
            lower = self.interval[0]
            estimate = (
                "gradient noise scale B_simple "
                + (f"at least {fmt(lower)}, " if lower > 0 else "not determined: ")
                + f"no upper bound ({pct} interval {fmt(lower)}..inf: |G|^2 is not significantly "
                "above 0, so B_simple may be arbitrarily large; more pairs may bound it; point "
                f"estimate {fmt(self.b_simple)}; {terms})"
            )
        if self.interrupted:
            return (
                f"{estimate}; INTERRUPTED after {self.pairs} of {self.pairs_requested} pairs: no batch size "
                "suggested"
            )
        if not self.bounded:
            return (
                f"{estimate}; suggested batch size {self.suggested_batch_size}, from the point "
                "estimate only: with no upper bound on B_simple a larger batch may serve better"
            )
        return (
            f"{estimate}; suggested batch size {self.suggested_batch_size}: smaller batches need "
            "proportionally more steps, larger ones proportionally more samples"
        )


def _grad_sq(
    model: nn.Module,
    params: list[torch.Tensor],
    loss_fn: Any,
    x: Any,
    y: torch.Tensor,
    index: int,
    per_sample: float,
) -> tuple[float, float]:
    loss = batch_loss(model, loss_fn, x, y, index) * per_sample
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return float(sum((g.double() ** 2).sum() for g in grads)), float(loss.detach())


@with_progress("noise scale")
def gradient_noise_scale(
    model: nn.Module,
    loss_fn: Any,
    dataset: Any,
    *,
    small_batch: int = 32,
    big_batch: int | None = None,
    pairs: int = 100,
    mode: str = "eval",
    seed: int = 0,
    bootstrap: int = 1000,
    level: float = 0.68,
    max_batch: int | None = None,
    progress: Progress | bool | str | None = "auto",
    reduction: str | None = None,
) -> NoiseScale:
    """The gradient noise scale B_simple at the model's current parameters, and a batch size.

    B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018): batches much smaller than it are
    dominated by gradient noise, much larger ones waste samples. The suggested batch size is
    B_simple rounded to an integer, at least 1 and at most the data size: there steps and
    samples are both within a factor 2 of their minimum (McCandlish's B_crit ~ B_noise). The
    model is left exactly as it was.

    The uncertainty is Fieller's interval for the ratio of the two means at ``level`` (see
    :func:`ratio_interval`): near a minimum |G|^2 is small against its noise, and then the interval
    has no upper end (``inf``) rather than a ± that would exclude the truth.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(model(inputs), targets)``: the batch-mean loss, or the batch's sum of
            per-sample losses with ``reduction="sum"`` (or a loss module whose ``.reduction`` is
            "sum"); the estimator needs the mean, so a sum is divided by the batch size.
        dataset: the training data (any lossdoctor data; its samples are merged).
        small_batch: the small batch size. Batches are drawn with replacement, as the
            estimator assumes.
        big_batch: the big batch size (default: the dataset size, capped at 4096).
        pairs: how many (small, big) pairs to average.
        mode: ``"eval"`` (deterministic) or ``"train"`` (dropout and BatchNorm batch statistics).
        seed: the seed of the batch draws.
        bootstrap: bootstrap resamples of the pairs that calibrate the interval's critical value
            (bootstrap-t; 0: Student's t alone).
        level: the interval's confidence level, in (0, 1); 0.68 is about +-1 sigma.
        max_batch: compute big-batch gradients in chunks of at most this many samples (memory).
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` combines a batch's samples, for loss
            functions without a ``.reduction`` attribute. It is checked on the first batch drawn
            (:func:`lossdoctor.observed_reduction`): a summing loss taken for a mean would weigh
            the big batch's gradient ``big_batch / small_batch`` times more than the small one's.

    Returns:
        B_simple with its interval and standard error, the two terms it is made of with theirs, and
        the suggested batch size. Ctrl-C returns the estimate from the pairs finished, with no
        suggestion.

    Raises:
        ValueError: batch sizes out of order or larger than the data, a loss that sums its
            samples without ``reduction="sum"``, or another bad option.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> ns = ld.gradient_noise_scale(p.model, p.loss_fn, p.train_data, small_batch=8,
        ...                              pairs=20, bootstrap=100)
        >>> round(ns.b_simple, 1), ns.suggested_batch_size, ns.level
        (6.0, 6, 0.68)
    """
    check_module(model)
    check_loss_fn(loss_fn)
    small = check_int(small_batch, "small_batch", minimum=1)
    big_batch = check_int(big_batch, "big_batch", minimum=2, optional=True)
    pairs = check_int(pairs, "pairs", minimum=2, hint="Two pairs at least give an uncertainty.")
    check_choice(mode, "mode", MODES)
    seed = check_seed(seed)
    bootstrap = check_int(bootstrap, "bootstrap", minimum=0)
    level = check_float(level, "level", above=0.0, below=1.0)
    max_batch = check_int(max_batch, "max_batch", minimum=1, optional=True)
    check_progress(progress)
    x, y = as_tensors(dataset, "dataset")
    n = len(y)
    big = min(n, 4096) if big_batch is None else big_batch
    if not small < big:
        raise ValueError(
            f"need small_batch < big_batch, got small_batch={small}, big_batch={big}"
            + (f" (the default big_batch is the data size, {n})" if big_batch is None else "")
            + ": the estimator compares gradients of two batch sizes."
        )
    params: list[torch.Tensor] = [p for _, p in trainable_parameters(model)]
    callback = as_callback(progress)
    device = params[0].device
    chunk = max_batch or big
    gen = torch.Generator().manual_seed(seed)
    probe = torch.randint(
        0, n, (min(n, max(small, 2)),), generator=torch.Generator().manual_seed(seed)
    )
    summed = (
        checked_reduction(
            model,
            loss_fn,
            take(x, y, probe, device),
            reduction,
            "the big batch's gradient would weigh big_batch / small_batch times more than the "
            "small one's (B_simple meaningless, even negative)",
        )
        == "sum"
    )
    small_sq, big_sq, losses = np.empty(pairs), np.empty(pairs), []
    done, interrupted = 0, False
    with preserved_model(model), evaluation_mode(model, mode):
        try:
            for i in range(pairs):
                idx_s = torch.randint(0, n, (small,), generator=gen)
                s_sq, _ = _grad_sq(
                    model,
                    params,
                    loss_fn,
                    *take(x, y, idx_s, device),
                    2 * i,
                    1.0 / small if summed else 1.0,
                )
                idx_b = torch.randint(0, n, (big,), generator=gen)
                if chunk >= big:
                    b_sq, loss = _grad_sq(
                        model,
                        params,
                        loss_fn,
                        *take(x, y, idx_b, device),
                        2 * i + 1,
                        1.0 / big if summed else 1.0,
                    )
                else:  # mean gradient over the big batch, accumulated chunk by chunk
                    total = [torch.zeros_like(p) for p in params]
                    loss = 0.0
                    for s in range(0, big, chunk):
                        part = idx_b[s : s + chunk]
                        xb, yb = take(x, y, part, device)
                        out = batch_loss(model, loss_fn, xb, yb, 2 * i + 1) * (
                            1.0 / big if summed else len(part) / big
                        )
                        for t, g in zip(
                            total,
                            torch.autograd.grad(
                                out, params, allow_unused=True, materialize_grads=True
                            ),
                        ):
                            t += g
                        loss += float(out.detach())
                    b_sq = float(sum((t.double() ** 2).sum() for t in total))
                if not (np.isfinite(s_sq) and np.isfinite(b_sq)):
                    raise ValueError(
                        f"the gradient is not finite on pair {i} (loss {loss:.4g}): check the model's "
                        "parameters and the data for NaN/Inf."
                    )
                small_sq[i], big_sq[i] = s_sq, b_sq
                losses.append(loss)
                done = i + 1
                if callback:
                    callback(i + 1, pairs)
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial(finished=done >= 2)
    small_sq, big_sq = small_sq[:done], big_sq[:done]
    g2 = (big * big_sq - small * small_sq) / (big - small)
    tr = (small_sq - big_sq) / (1.0 / small - 1.0 / big)
    ratio = ratio_interval(tr, g2, level=level, bootstrap=bootstrap, seed=seed)
    estimate = ratio.estimate
    suggested = (
        int(min(max(round(estimate), 1), n)) if math.isfinite(estimate) and estimate > 0 else n
    )
    return NoiseScale(
        b_simple=estimate,
        standard_error=ratio.standard_error,
        interval=ratio.interval,
        level=level,
        trace_sigma=float(tr.mean()),
        trace_sigma_standard_error=float(tr.std(ddof=1) / math.sqrt(done)),
        grad_norm_sq=float(g2.mean()),
        grad_norm_sq_standard_error=float(g2.std(ddof=1) / math.sqrt(done)),
        small_batch=small,
        big_batch=big,
        pairs=done,
        num_samples=n,
        suggested_batch_size=None if interrupted else suggested,
        loss=float(np.mean(losses)),
        interrupted=interrupted,
        pairs_requested=pairs,
    )
