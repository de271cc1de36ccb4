"""Stochastic trace estimation: Hutchinson and Hutch++ (Meyer, Musco, Musco & Woodruff, 2021)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..progress import with_progress
from .lanczos import RademacherStream, apply64, operator_mode

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


class _Counter:
    """Products done so far, reported to ``progress`` after each block."""

    def __init__(self, budget: int, progress: Progress | None) -> None:
        self.done, self.budget, self.progress = 0, budget, progress

    def apply(self, op, X: torch.Tensor) -> torch.Tensor:
        out = apply64(op, X)
        self.done += X.shape[1]
        if self.progress is not None:
            self.progress(self.done, self.budget)
        return out


def _hutchinson_terms(op, probes: RademacherStream, count: int, block: int, counter: _Counter,
                      terms: list[float], project: torch.Tensor | None = None) -> None:
    """Append ``g^T H g`` for ``count`` probes to ``terms``, drawing and multiplying ``block``
    probes at a time (with ``project``: probes projected off its orthonormal columns)."""
    for a, c in _blocks(count, block):
        G = probes.take(c - a)
        if project is not None:
            G -= (project @ (project.T @ G.to(project.dtype))).to(G.dtype)
        terms.extend(torch.linalg.vecdot(G, counter.apply(op, G), dim=0).tolist())


def _basis_dtype(op) -> torch.dtype:
    """float32 for operators that compute in float32 or less, float64 otherwise."""
    dtype = getattr(op, "dtype", torch.float64)
    return torch.float32 if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float64


def _mean_and_error(terms: list[float]) -> tuple[float, float]:
    m = len(terms)
    mean = sum(terms) / m
    if m < 2:
        return mean, math.inf
    var = sum((t - mean) ** 2 for t in terms) / (m - 1)
    return mean, math.sqrt(var / m)


@with_progress("trace")
def trace(op, matvecs: int = 100, method: str = "hutch++", *, seed: int = 0, block: int | None = None,
          progress: Progress | bool | str | None = "auto") -> TraceResult:
    """Estimate tr(H) from ``matvecs`` products with Rademacher probes.

    Hutch++ spends a third of the products finding the dominant subspace, whose trace it takes
    exactly, and estimates the rest stochastically: far smaller error when a few eigenvalues
    dominate, as they do for trained networks. The standard error is that of the stochastic part.
    Probes are drawn and multiplied ``block`` at a time (default: the operator's ``max_block``):
    Hutchinson holds one block whatever ``matvecs`` is; Hutch++ also holds its sketch basis, an
    ``n`` by ``matvecs // 3`` matrix in the operator's precision (float32 for a float32 model). Ctrl-C returns the estimate from the probes finished.
    """
    check_arguments(op=op, matvecs=matvecs, seed=seed, block=block, progress=progress)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
    n = int(op.shape[0])
    if matvecs < (3 if method == "hutch++" else 1):
        raise ValueError(f"{method} needs at least {3 if method == 'hutch++' else 1} matvecs, got {matvecs}.")
    device = getattr(op, "device", "cpu")
    block = int(block or getattr(op, "max_block", 16))
    counter = _Counter(matvecs, progress)
    interrupted = False
    exact = 0.0
    terms: list[float] = []
    try:
        if method == "hutchinson":
            _hutchinson_terms(op, RademacherStream(n, seed, device), matvecs, block, counter, terms)
        else:
            # Memory: Q, an orthonormal basis of the sketch H S, is the one n-by-(matvecs/3)
            # matrix alive; it is built a block at a time (block Gram-Schmidt, projection and
            # QR twice, which keeps Q orthonormal even where H S is rank deficient), so H S
            # itself never exists whole, and probes and products exist a block at a time.
            # Q is kept in the precision the operator computes in (float32 for a float32
            # model): the products it feeds are no more exact than that, and it halves the
            # largest allocation of the estimate. Everything else stays float64.
            sketch = min(matvecs // 3, n)  # an orthonormal Q has at most n columns
            probes = RademacherStream(n, seed, device)
            Q = torch.empty(n, sketch, dtype=_basis_dtype(op), device=device)
            for a, c in _blocks(sketch, block):
                B = counter.apply(op, probes.take(c - a)).to(Q.dtype)
                for _ in range(2):
                    if a:
                        B -= Q[:, :a] @ (Q[:, :a].T @ B)
                    B = torch.linalg.qr(B)[0]
                Q[:, a:c] = B
                del B
            for a, c in _blocks(sketch, block):
                Qb = Q[:, a:c].to(torch.float64)
                exact += float(torch.linalg.vecdot(Qb, counter.apply(op, Qb), dim=0).sum())
            _hutchinson_terms(op, RademacherStream(n, seed + 1, device), matvecs - 2 * sketch, block,
                              counter, terms, project=Q)
    except KeyboardInterrupt:
        interrupted = True
        if not terms:
            raise
    mean, err = _mean_and_error(terms)
    return TraceResult(estimate=exact + mean, standard_error=err,
                       matvecs=counter.done, method=method, seed=seed, num_params=n, interrupted=interrupted,
                       mode=operator_mode(op))
