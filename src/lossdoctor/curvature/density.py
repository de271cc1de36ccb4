"""Spectral density of the Hessian by stochastic Lanczos quadrature (Lin, Saad & Yang, 2016;
used for neural networks by Ghorbani, Krishnan & Xiao, 2019)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..progress import with_progress
from .lanczos import apply64, block_lanczos_tridiagonals, operator_mode, rademacher, tridiagonal

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class SpectralDensity(ResultMixin):
    """A smoothed eigenvalue density and the quadrature it was built from.

    ``nodes[p]`` and ``weights[p]`` are probe ``p``'s Ritz values and their weights (each
    probe's weights sum to 1): the density is their average, each node broadened by a Gaussian
    of width ``sigma``. ``negative_fraction`` is the weight on nodes below ``-zero_tol``,
    with the spread across probes as ``negative_fraction_error``.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: list[np.ndarray]
    weights: list[np.ndarray]
    sigma: float
    negative_fraction: float
    negative_fraction_error: float
    zero_tol: float
    num_probes: int
    lanczos_steps: int
    matvecs: int
    seed: int
    num_params: int
    mode: str | None = None  # "eval"/"train" for a HessianOperator

    @property
    def eigenvalue_range(self) -> tuple[float, float]:
        lo = min(float(x.min()) for x in self.nodes)
        hi = max(float(x.max()) for x in self.nodes)
        return lo, hi

    def __str__(self) -> str:
        lo, hi = self.eigenvalue_range
        return (f"Spectral density from {self.num_probes} probes x {self.lanczos_steps} Lanczos steps "
                f"({self.matvecs} products): eigenvalues in [{fmt(lo)}, {fmt(hi)}], "
                f"negative fraction {self.negative_fraction:.3f} +/- {self.negative_fraction_error:.3f}")


@with_progress("spectral density")
def spectral_density(op, *, num_probes: int = 4, lanczos_steps: int = 60, grid_points: int = 512,
                     sigma: float | None = None, zero_tol: float | None = None, seed: int = 0,
                     progress: Progress | bool | str | None = "auto") -> SpectralDensity:
    """Stochastic Lanczos quadrature with ``num_probes`` Rademacher probes of ``lanczos_steps`` each.

    All probes advance together, one batched operator product per Lanczos step.
    ``sigma`` (default: 1% of the spectrum's width) broadens the nodes; ``zero_tol`` (default:
    1e-3 of the largest |eigenvalue|) is the magnitude below which an eigenvalue counts as zero
    in ``negative_fraction``.
    """
    check_arguments(op=op, num_probes=num_probes, lanczos_steps=lanczos_steps, grid_points=grid_points,
                    sigma=sigma, zero_tol=zero_tol, seed=seed, progress=progress)
    if num_probes < 1 or lanczos_steps < 1:
        raise ValueError("num_probes and lanczos_steps must be at least 1.")
    n = int(op.shape[0])
    device = getattr(op, "device", "cpu")
    done = [0]
    steps = min(lanczos_steps, n)
    total = steps * num_probes

    def matmul(X: torch.Tensor) -> torch.Tensor:
        out = apply64(op, X)
        done[0] += X.shape[1]
        if progress is not None:
            progress(done[0], total)
        return out

    start = rademacher(n, num_probes, seed, device)
    tridiagonals = block_lanczos_tridiagonals(matmul, start, steps)
    nodes, weights = [], []
    for alpha, beta in tridiagonals:
        theta, S = torch.linalg.eigh(tridiagonal(alpha, beta))
        nodes.append(theta.numpy())
        weights.append((S[0] ** 2).numpy())
    all_nodes = np.concatenate(nodes)
    lo, hi = float(all_nodes.min()), float(all_nodes.max())
    width = max(hi - lo, 1e-12 * max(abs(hi), abs(lo), 1.0))
    sigma = float(sigma) if sigma is not None else 0.01 * width
    zero_tol = float(zero_tol) if zero_tol is not None else 1e-3 * max(abs(lo), abs(hi))
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_points)
    density = np.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2 * math.pi))
    for theta, w in zip(nodes, weights):
        density += (w[None, :] * norm * np.exp(-0.5 * ((grid[:, None] - theta[None, :]) / sigma) ** 2)).sum(1)
    density /= num_probes
    negative = np.array([w[theta < -zero_tol].sum() for theta, w in zip(nodes, weights)])
    neg_err = float(negative.std(ddof=1) / math.sqrt(num_probes)) if num_probes > 1 else math.inf
    return SpectralDensity(grid=grid, density=density, nodes=nodes, weights=weights, sigma=sigma,
                           negative_fraction=float(negative.mean()), negative_fraction_error=neg_err,
                           zero_tol=zero_tol, num_probes=num_probes, lanczos_steps=steps,
                           matvecs=done[0], seed=seed, num_params=n,
                           mode=operator_mode(op))
