"""Lanczos building blocks in float64: the Krylov arithmetic behind eigenpairs, trace and density.

The operator may compute in float32; the basis, the projected matrix and every reduction
here are float64 so that rounding in the recurrence does not pollute the results.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

MatMul = Callable[[torch.Tensor], torch.Tensor]


def apply64(op, X: torch.Tensor) -> torch.Tensor:
    """``op @ X`` as float64.

    a dense tensor operator of another dtype (float32) gets ``X`` in its own dtype, since torch does
    not multiply mixed dtypes."""
    if isinstance(op, torch.Tensor):
        X = X.to(op.dtype)
    return (op @ X).to(torch.float64)


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


def block_lanczos_tridiagonals(matmul: MatMul, start: torch.Tensor, steps: int, *, last_beta: bool = False
                               ) -> list[Any]:
    """Run ``steps`` Lanczos iterations from each column of ``start`` independently, with full reorthogonalization, multiplying all columns in one ``matmul`` per step.

    Returns, per column, the diagonal ``alpha`` and off-diagonal ``beta`` of its tridiagonal.
    A column whose Krylov space is exhausted early stops there (shorter tridiagonal). With
    ``last_beta``, a third element: the norm of the last residual (0 where the Krylov space was
    exhausted), which gives each Ritz value its residual ``last_beta * |last row of S|``.
    """
    n, k = start.shape
    steps = min(steps, n)
    _check_room(n, k, steps, start.device)
    q = start / start.norm(dim=0, keepdim=True)
    bases = [[q[:, c]] for c in range(k)]
    alphas: list[list[float]] = [[] for _ in range(k)]
    betas: list[list[float]] = [[] for _ in range(k)]
    active = list(range(k))
    final = [0.0] * k
    for step in range(steps):
        cols = torch.stack([bases[c][-1] for c in active], dim=1)
        w = matmul(cols)
        still = []
        for j, c in enumerate(active):
            basis = torch.stack(bases[c])
            wc = w[:, j]
            alpha = float(bases[c][-1] @ wc)
            alphas[c].append(alpha)
            if step == steps - 1 and not last_beta:
                continue
            wc = orthogonalize(wc.unsqueeze(1), basis).squeeze(1)
            beta = float(wc.norm())
            if step == steps - 1:
                final[c] = beta
                continue
            scale = max(abs(a) for a in alphas[c]) + (max(betas[c]) if betas[c] else 0.0)
            if beta <= 1e-12 * max(scale, 1e-300):
                continue
            betas[c].append(beta)
            bases[c].append(wc / beta)
            still.append(c)
        active = still
        if not active:
            break
    out = [(torch.tensor(alphas[c], dtype=torch.float64), torch.tensor(betas[c][: len(alphas[c]) - 1],
            dtype=torch.float64)) for c in range(k)]
    if last_beta:
        return [(a, b, final[c]) for c, (a, b) in enumerate(out)]
    return out


def _check_room(n: int, k: int, steps: int, device) -> None:
    """Refuse up front, with what would fit, a run whose float64 bases (``k`` of ``steps``
    vectors, plus one stacked copy) cannot fit in the basis's share of the memory available."""
    from . import memory

    need = (k + 1) * steps * n * 8
    free = memory.available_bytes(device)
    if free is None or need <= memory.BASIS_SHARE * free:
        return
    fit = int(memory.BASIS_SHARE * free // ((k + 1) * n * 8))
    raise MemoryError(
        f"Stochastic Lanczos quadrature with {k} probes x {steps} steps on {n:,} parameters keeps "
        f"{memory.fmt_bytes(need)} of float64 Lanczos vectors, and {memory.fmt_bytes(free)} is available on "
        f"{device} (the bases may use {memory.BASIS_SHARE:.0%} of it): use at most {fit} lanczos_steps with "
        f"{k} probes, or fewer probes.")


def tridiagonal(alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """The symmetric tridiagonal matrix with diagonal ``alpha`` and off-diagonal ``beta``."""
    return torch.diag(alpha) + torch.diag(beta, 1) + torch.diag(beta, -1)
