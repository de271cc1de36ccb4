"""Lanczos building blocks in float64: the Krylov arithmetic behind eigenpairs, trace and density.

The operator may compute in float32; the basis, the projected matrix and every reduction
here are float64 so that rounding in the recurrence does not pollute the results.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

MatMul = Callable[[torch.Tensor], torch.Tensor]


def apply64(op, X: torch.Tensor) -> torch.Tensor:
    """``op @ X`` as float64.

    a dense tensor operator of another dtype (float32) gets ``X`` in its own dtype, since torch does
    not multiply mixed dtypes."""
    if isinstance(op, torch.Tensor):
        X = X.to(op.dtype)
    return (op @ X).to(torch.float64)


class CountedProducts:
    """``op @ X`` as float64, counting the products (``done``) and reporting ``progress(done, budget)``.

    ``first(seconds)`` is told the time per product once, after the second call (the first carries
    one-time costs: cached graphs, lazy imports). One owner for eigenpairs' and trace's counting."""

    def __init__(
        self,
        op: Any,
        budget: int,
        progress: Callable[[int, int], object] | None,
        first: Callable[[float], None] | None = None,
    ) -> None:
        self.op, self.budget, self.progress, self.first = op, budget, progress, first
        self.done = 0
        self.calls = 0

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        """``op @ X`` (float64), counted and reported."""
        started = time.perf_counter()
        out = apply64(self.op, X)
        self.calls += 1
        if self.first is not None and self.calls == 2:
            first, self.first = self.first, None
            first((time.perf_counter() - started) / max(X.shape[1], 1))
        self.done += X.shape[1]
        if self.progress is not None:
            self.progress(min(self.done, self.budget), self.budget)
        return out


def operator_mode(op) -> str | None:
    """``"eval"``/``"train"`` for a HessianOperator, None for other operators (dense tensors...)."""
    mode = getattr(op, "mode", None)
    return mode if isinstance(mode, str) else None


class RademacherStream:
    """±1 probe vectors drawn in order from one seeded CPU generator.

    ``take(k)`` returns the next ``k`` probes as the columns of an ``(n, k)`` float64 matrix. Probe
    ``j`` is the same however the stream is cut into takes, on every device and in every process, so
    callers can draw probes a block at a time (bounded memory) and ranks agree by construction."""

    def __init__(self, n: int, seed: int, device: torch.device | str = "cpu") -> None:
        self.n, self.device = int(n), device
        self._gen = torch.Generator(device="cpu").manual_seed(int(seed))

    def take(self, k: int) -> torch.Tensor:
        # One probe per row of the draw: the generator's stream fills whole probes in order.
        """The next ``k`` probes, as the columns of an ``(n, k)`` float64 matrix of ±1."""
        signs = torch.randint(0, 2, (int(k), self.n), generator=self._gen, dtype=torch.int8)
        return signs.to(torch.float64).mul_(2).sub_(1).T.to(self.device)


def rademacher(n: int, k: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """``(n, k)`` matrix of ±1 entries: the first ``k`` probes of ``RademacherStream(n, seed)``."""
    return RademacherStream(n, seed, device).take(k)


def gaussian(n: int, k: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """An ``(n, k)`` float64 standard normal matrix drawn on the CPU from ``seed`` (the same on any device)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(n, k, generator=gen, dtype=torch.float64).to(device)


def orthogonalize(vectors: torch.Tensor, basis: torch.Tensor | None) -> torch.Tensor:
    """Remove from the columns of ``vectors`` their components in ``basis`` (rows orthonormal).

    Two passes of classical Gram-Schmidt ("twice is enough") keep full orthogonality."""
    if basis is None or basis.shape[0] == 0:
        return vectors
    for _ in range(2):
        vectors = vectors - basis.T @ (basis @ vectors)
    return vectors


# -- a basis in another dtype or on another device than the products ----------------------------
# A float32 (or host-held) basis is combined in float64 a slice of columns at a time. Each slice's
# float64 working copy is at most SLICE_BYTES: small enough that the allocator reuses its memory
# from one slice to the next (glibc serves blocks under its mmap threshold, at most 32 MB, from
# the heap), where slices of 2**20 columns (8 MB per row, 200 MB for 25 rows) were mapped and
# page-faulted afresh every time: about half of a float32 run's time went to the kernel.
SLICE_BYTES = 2**22


def _width(rows: torch.Tensor) -> int:
    """Columns per float64 slice of ``rows`` (at least 1024)."""
    return max(1024, SLICE_BYTES // (8 * max(1, rows.shape[0])))


def _same(rows: torch.Tensor, work: torch.device) -> bool:
    return rows.dtype == torch.float64 and rows.device == work


def rows_times(rows: torch.Tensor, coeffs: torch.Tensor, work: torch.device) -> torch.Tensor:
    """``rows.T @ coeffs`` in float64 on ``work`` (``rows``.

    (m, n) of any dtype and device; ``coeffs``: (m,) or (m, k)), a slice of columns at a time so
    that no float64 copy of the whole basis exists."""
    coeffs = coeffs.to(torch.float64)
    if _same(rows, work):
        return rows.T @ coeffs.to(work)
    out = torch.empty((rows.shape[1],) + tuple(coeffs.shape[1:]), dtype=torch.float64, device=work)
    c = coeffs.to(rows.device)
    step = _width(rows)
    for a in range(0, rows.shape[1], step):
        out[a : a + step] = (rows[:, a : a + step].to(torch.float64).T @ c).to(work)
    return out


def rows_dot(rows: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``rows @ w`` (``w`` float64 of length n) in float64, on the CPU."""
    if _same(rows, w.device):
        return (rows @ w).cpu()
    out = torch.zeros(rows.shape[0], dtype=torch.float64, device=rows.device)
    step = _width(rows)
    for a in range(0, rows.shape[1], step):
        out += rows[:, a : a + step].to(torch.float64) @ w[a : a + step].to(rows.device)
    return out.cpu()


def project_out(w: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``w`` (float64, length n) less its components along the orthonormal ``rows``.

    two passes of classical Gram-Schmidt, in float64 whatever the rows' dtype."""
    if rows.shape[0] == 0:
        return w
    if _same(rows, w.device):
        return orthogonalize(w.unsqueeze(1), rows).squeeze(1)
    for _ in range(2):
        w = w - rows_times(rows, rows_dot(rows, w), w.device)
    return w


def rotate_rows(store: torch.Tensor, m: int, S: np.ndarray) -> None:
    """``store[:k] = S.T @ store[:m]`` in place (``S``.

    (m, k)), computed in float64 a slice of columns at a time (a float32 basis is rounded once, not
    at every partial sum)."""
    rot = torch.as_tensor(S.T, dtype=torch.float64, device=store.device)
    k = rot.shape[0]
    if store.dtype == torch.float64:
        store[:k] = rot @ store[:m]
        return
    step = _width(store[:m])
    for a in range(0, store.shape[1], step):
        store[:k, a : a + step] = (rot @ store[:m, a : a + step].to(torch.float64)).to(store.dtype)


def block_lanczos_tridiagonals(
    matmul: MatMul, start: torch.Tensor, steps: int, *, last_beta: bool = False
) -> list[Any]:
    """Run ``steps`` Lanczos iterations from each column of ``start`` independently, with full reorthogonalization, multiplying all columns in one ``matmul`` per step.

    Returns, per column, the diagonal ``alpha`` and off-diagonal ``beta`` of its tridiagonal.
    A column whose Krylov space is exhausted early stops there (shorter tridiagonal). With
    ``last_beta``, a third element: the norm of the last residual (0 where the Krylov space was
    exhausted), which gives each Ritz value its residual ``last_beta * |last row of S|``.
    """
    n, k = start.shape
    steps = min(steps, n)
    dtype = _basis_dtype(n, k, steps, start.device)
    q = start / start.norm(dim=0, keepdim=True)
    # One preallocated (steps, n) store per column (float32 where float64 would not fit; the
    # arithmetic stays float64): no list of vectors stacked into a copy at every step.
    stores = [torch.empty(steps, n, dtype=dtype, device=start.device) for _ in range(k)]
    counts = [1] * k
    for c in range(k):
        stores[c][0] = q[:, c]
    alphas: list[list[float]] = [[] for _ in range(k)]
    betas: list[list[float]] = [[] for _ in range(k)]
    active = list(range(k))
    final = [0.0] * k
    for step in range(steps):
        cols = torch.stack([stores[c][counts[c] - 1].to(torch.float64) for c in active], dim=1)
        w = matmul(cols)
        still = []
        for j, c in enumerate(active):
            rows = stores[c][: counts[c]]
            wc = w[:, j]
            alpha = float(cols[:, j] @ wc)
            alphas[c].append(alpha)
            if step == steps - 1 and not last_beta:
                continue
            wc = project_out(wc, rows)
            beta = float(wc.norm())
            if step == steps - 1:
                final[c] = beta
                continue
            scale = max(abs(a) for a in alphas[c]) + (max(betas[c]) if betas[c] else 0.0)
            if beta <= 1e-12 * max(scale, 1e-300):
                continue
            betas[c].append(beta)
            stores[c][counts[c]] = wc / beta
            counts[c] += 1
            still.append(c)
        active = still
        if not active:
            break
    out = [
        (
            torch.tensor(alphas[c], dtype=torch.float64),
            torch.tensor(betas[c][: len(alphas[c]) - 1], dtype=torch.float64),
        )
        for c in range(k)
    ]
    if last_beta:
        return [(a, b, final[c]) for c, (a, b) in enumerate(out)]
    return out


def _basis_dtype(n: int, k: int, steps: int, device) -> torch.dtype:
    """float64 Lanczos vectors where ``k`` runs of ``steps`` fit in the bases' share of the memory available, else float32; refused up front, with the steps that would fit, where neither does."""
    from . import memory

    free = memory.available_bytes(device)
    if free is None or k * steps * n * 8 <= memory.BASIS_SHARE * free:
        return torch.float64
    if k * steps * n * 4 <= memory.BASIS_SHARE * free:
        return torch.float32
    fit = int(memory.BASIS_SHARE * free // (k * n * 4))
    raise MemoryError(
        f"Stochastic Lanczos quadrature with {k} probes x {steps} steps on {n:,} parameters keeps "
        f"{memory.fmt_bytes(k * steps * n * 4)} of Lanczos vectors even in float32, and "
        f"{memory.fmt_bytes(free)} is available on {device} (the bases may use {memory.BASIS_SHARE:.0%} of it): "
        f"use at most {fit} lanczos_steps with {k} probes, or fewer probes."
    )


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal ``beta``."""
    return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
