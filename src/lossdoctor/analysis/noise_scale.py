"""The gradient noise scale (McCandlish et al. 2018, "An Empirical Model of Large-Batch Training").

B_simple = tr(Sigma) / |G|^2, with G the full-data gradient and Sigma the covariance of per-sample
gradients. Batches much smaller than B_simple are dominated by noise (doubling the batch nearly
halves the steps needed); much larger ones waste samples.

Two-batch-size estimator (their Appendix A): for a batch of B samples drawn with replacement,
E|G_B|^2 = |G|^2 + tr(Sigma)/B. With a small and a big batch size,

    |G|^2    ~ (B_big |G_big|^2 - B_small |G_small|^2) / (B_big - B_small)
    tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1/B_small - 1/B_big)

are unbiased; each is averaged over many pairs before taking the ratio (the ratio of noisy
estimates is biased). The uncertainty is a bootstrap over the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_choice,
    check_int,
    check_loss_fn,
    check_module,
    check_progress,
    check_seed,
)
from .._results import ResultMixin, fmt
from ..data import batch_loss, take
from ..evaluation import as_tensors
from ..model_state import evaluation_mode, preserved_model, trainable_parameters
from ..progress import Progress, with_progress

MODES = ("eval", "train")


@dataclass(frozen=True)
class NoiseScale(ResultMixin):
    """The gradient noise scale B_simple with its uncertainty, and the batch size it suggests.

    Returned by :func:`gradient_noise_scale`.

    Attributes:
        b_simple: tr(Sigma) / |G|^2.
        standard_error: its bootstrap standard error over the pairs.
        interval: the 16th-84th bootstrap percentiles (about +-1 sigma).
        trace_sigma: the estimated trace of the per-sample gradient covariance.
        grad_norm_sq: the estimated squared norm of the full-data gradient.
        small_batch: the small batch size.
        big_batch: the big batch size.
        pairs: pairs of batches averaged.
        num_samples: samples in the data.
        suggested_batch_size: B_simple rounded, within [1, data size]; ``None`` when interrupted.
        loss: the mean loss over the big batches.
        interrupted: Ctrl-C: the estimate uses the pairs finished.
        pairs_requested: the pairs asked for.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> ns = ld.gradient_noise_scale(p.model, p.loss_fn, p.train_data, small_batch=8,
        ...                              pairs=20, bootstrap=100)
        >>> ns.suggested_batch_size, ns.big_batch
        (6, 256)
    """

    b_simple: float
    standard_error: float
    interval: tuple[float, float]  # 16th-84th bootstrap percentiles (about +-1 sigma)
    trace_sigma: float
    grad_norm_sq: float
    small_batch: int
    big_batch: int
    pairs: int
    num_samples: int
    suggested_batch_size: int | None  # None when interrupted: no advice from a cut-short estimate
    loss: float
    interrupted: bool = False  # Ctrl-C: the estimate uses the pairs finished (``pairs`` of them)
    pairs_requested: int | None = None

    def __str__(self) -> str:
        estimate = (
            f"gradient noise scale B_simple = {fmt(self.b_simple)} +- {fmt(self.standard_error)} "
            f"(68% interval {fmt(self.interval[0])}..{fmt(self.interval[1])}; tr(Sigma) = "
            f"{fmt(self.trace_sigma)}, |G|^2 = {fmt(self.grad_norm_sq)}; {self.pairs} pairs of batches "
            f"{self.small_batch} and {self.big_batch})"
        )
        if self.interrupted:
            return (
                f"{estimate}; INTERRUPTED after {self.pairs} of {self.pairs_requested} pairs: no batch size "
                "suggested"
            )
        return (
            f"{estimate}; suggested batch size {self.suggested_batch_size}: smaller batches need "
            "proportionally more steps, larger ones proportionally more samples"
        )


def _grad_sq(
    model: nn.Module, params: list[torch.Tensor], loss_fn: Any, x: Any, y: torch.Tensor, index: int
) -> tuple[float, float]:
    loss = batch_loss(model, loss_fn, x, y, index)
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
    max_batch: int | None = None,
    progress: Progress | bool | str | None = "auto",
) -> NoiseScale:
    """The gradient noise scale B_simple at the model's current parameters, and a batch size.

    B_simple = tr(Sigma) / |G|^2 (McCandlish et al. 2018): batches much smaller than it are
    dominated by gradient noise, much larger ones waste samples. The suggested batch size is
    B_simple rounded to an integer, at least 1 and at most the data size: there steps and
    samples are both within a factor 2 of their minimum (McCandlish's B_crit ~ B_noise). The
    model is left exactly as it was.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch-mean loss.
        dataset: the training data (any lossdoctor data; its samples are merged).
        small_batch: the small batch size. Batches are drawn with replacement, as the
            estimator assumes.
        big_batch: the big batch size (default: the dataset size, capped at 4096).
        pairs: how many (small, big) pairs to average.
        mode: ``"eval"`` (deterministic) or ``"train"`` (dropout and BatchNorm batch statistics).
        seed: the seed of the batch draws.
        bootstrap: bootstrap resamples of the pairs for the error bar.
        max_batch: compute big-batch gradients in chunks of at most this many samples (memory).
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.

    Returns:
        B_simple with its standard error, the two terms it is made of, and the suggested batch
        size. Ctrl-C returns the estimate from the pairs finished, with no suggestion.

    Raises:
        ValueError: batch sizes out of order or larger than the data, or another bad option.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import noisy_regression
        >>> p = noisy_regression()
        >>> ns = ld.gradient_noise_scale(p.model, p.loss_fn, p.train_data, small_batch=8,
        ...                              pairs=20, bootstrap=100)
        >>> round(ns.b_simple, 1), ns.suggested_batch_size
        (6.0, 6)
    """
    check_module(model)
    check_loss_fn(loss_fn)
    small = check_int(small_batch, "small_batch", minimum=1)
    big_batch = check_int(big_batch, "big_batch", minimum=2, optional=True)
    pairs = check_int(pairs, "pairs", minimum=2, hint="Two pairs at least give an uncertainty.")
    check_choice(mode, "mode", MODES)
    seed = check_seed(seed)
    bootstrap = check_int(bootstrap, "bootstrap", minimum=1)
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
    params = [p for _, p in trainable_parameters(model)]
    device = params[0].device
    chunk = max_batch or big
    gen = torch.Generator().manual_seed(seed)
    small_sq, big_sq, losses = np.empty(pairs), np.empty(pairs), []
    done, interrupted = 0, False
    with preserved_model(model), evaluation_mode(model, mode):
        try:
            for i in range(pairs):
                idx_s = torch.randint(0, n, (small,), generator=gen)
                s_sq, _ = _grad_sq(model, params, loss_fn, *take(x, y, idx_s, device), 2 * i)
                idx_b = torch.randint(0, n, (big,), generator=gen)
                if chunk >= big:
                    b_sq, loss = _grad_sq(
                        model, params, loss_fn, *take(x, y, idx_b, device), 2 * i + 1
                    )
                else:  # mean gradient over the big batch, accumulated chunk by chunk
                    total = [torch.zeros_like(p) for p in params]
                    loss = 0.0
                    for s in range(0, big, chunk):
                        part = idx_b[s : s + chunk]
                        xb, yb = take(x, y, part, device)
                        out = batch_loss(model, loss_fn, xb, yb, 2 * i + 1) * (len(part) / big)
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
                if progress:
                    progress(i + 1, pairs)
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial(finished=done >= 2)
    small_sq, big_sq = small_sq[:done], big_sq[:done]
    g2 = (big * big_sq - small * small_sq) / (big - small)
    s = (small_sq - big_sq) / (1.0 / small - 1.0 / big)
    rng = np.random.default_rng(seed)
    boot = []
    # |G|² estimates of exactly zero (a critical point) make B_simple infinite or undefined: no warning.
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = float(s.mean() / g2.mean())
        for _ in range(bootstrap):
            k = rng.integers(0, done, done)
            boot.append(s[k].mean() / g2[k].mean())
    boot_arr = np.asarray(boot)
    lo, hi = np.percentile(boot_arr, [16, 84])
    suggested = (
        int(min(max(round(estimate), 1), n)) if np.isfinite(estimate) and estimate > 0 else n
    )
    return NoiseScale(
        b_simple=estimate,
        standard_error=float(np.std(boot_arr)),
        interval=(float(lo), float(hi)),
        trace_sigma=float(s.mean()),
        grad_norm_sq=float(g2.mean()),
        small_batch=small,
        big_batch=big,
        pairs=done,
        num_samples=n,
        suggested_batch_size=None if interrupted else suggested,
        loss=float(np.mean(losses)),
        interrupted=interrupted,
        pairs_requested=pairs,
    )
