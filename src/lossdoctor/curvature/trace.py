"""Stochastic trace estimation: Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff, 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._results import ResultMixin, fmt
from .lanczos import apply64, operator_mode, rademacher

Progress = Callable[[int, int], None]
METHODS = ("hutch++", "hutchinson")


@dataclass(frozen=True)
class TraceResult(ResultMixin):
    """``estimate`` of tr(H) with its ``standard_error`` from ``matvecs`` operator products."""

    estimate: float
    standard_error: float
    matvecs: int
    method: str
    seed: int
    num_params: int
    interrupted: bool = False
    mode: str | None = None  # "eval"/"train" for a HessianOperator

    def __str__(self) -> str:
        return (f"Hessian trace ~ {fmt(self.estimate)} +/- {fmt(self.standard_error)} "
                f"({self.method}, {self.matvecs} Hessian-vector products, seed {self.seed}"
                + (f", {self.mode} mode)" if self.mode else ")"))


def _blocks(total: int, block: int):
    start = 0
    while start < total:
        yield start, min(total, start + block)
        start += block


def _apply(op, X: torch.Tensor, block: int, done: list[int], budget: int,
           progress: Progress | None) -> torch.Tensor:
    """``op @ X`` in column chunks of ``block`` (memory bound), counting products."""
    outs = []
    for a, c in _blocks(X.shape[1], block):
        outs.append(apply64(op, X[:, a:c]))
        done[0] += c - a
        if progress is not None:
            progress(done[0], budget)
    return torch.cat(outs, dim=1)


def _hutchinson_terms(op, probes: torch.Tensor, block: int, done: list[int], budget: int,
                      progress: Progress | None, project: torch.Tensor | None = None) -> list[float]:
    terms: list[float] = []
    for a, c in _blocks(probes.shape[1], block):
        G = probes[:, a:c]
        if project is not None:
            G = G - project @ (project.T @ G)
        HG = _apply(op, G, block, done, budget, progress)
        terms.extend((G * HG).sum(dim=0).tolist())
    return terms


def _mean_and_error(terms: list[float]) -> tuple[float, float]:
    m = len(terms)
    mean = sum(terms) / m
    if m < 2:
        return mean, math.inf
    var = sum((t - mean) ** 2 for t in terms) / (m - 1)
    return mean, math.sqrt(var / m)


def trace(op, matvecs: int = 100, method: str = "hutch++", *, seed: int = 0, block: int | None = None,
          progress: Progress | None = None) -> TraceResult:
    """Estimate tr(H) from ``matvecs`` products with Rademacher probes.

    Hutch++ spends a third of the products finding the dominant subspace, whose trace it takes
    exactly, and estimates the rest stochastically: far smaller error when a few eigenvalues
    dominate, as they do for trained networks. The standard error is that of the stochastic part.
    Probes are multiplied ``block`` at a time (default: the operator's ``max_block``), so memory
    stays bounded whatever ``matvecs`` is. Ctrl-C returns the estimate from the probes finished.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    n = int(op.shape[0])
    if matvecs < (3 if method == "hutch++" else 1):
        raise ValueError(f"{method} needs at least {3 if method == 'hutch++' else 1} matvecs, got {matvecs}.")
    device = getattr(op, "device", "cpu")
    block = int(block or getattr(op, "max_block", 16))
    done = [0]
    interrupted = False
    exact = 0.0
    terms: list[float] = []
    try:
        if method == "hutchinson":
            probes = rademacher(n, matvecs, seed, device)
            terms = _hutchinson_terms(op, probes, block, done, matvecs, progress)
        else:
            sketch = matvecs // 3
            S = rademacher(n, sketch, seed, device)
            Q, _ = torch.linalg.qr(_apply(op, S, block, done, matvecs, progress))
            exact = float((Q * _apply(op, Q, block, done, matvecs, progress)).sum())
            G = rademacher(n, matvecs - 2 * sketch, seed + 1, device)
            terms = _hutchinson_terms(op, G, block, done, matvecs, progress, project=Q)
    except KeyboardInterrupt:
        interrupted = True
        if not terms:
            raise
    mean, err = _mean_and_error(terms)
    return TraceResult(estimate=exact + mean, standard_error=err,
                       matvecs=done[0], method=method, seed=seed, num_params=n, interrupted=interrupted,
                       mode=operator_mode(op))
