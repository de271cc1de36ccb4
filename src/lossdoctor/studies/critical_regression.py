"""Study: the homework regression.

A 1->128->1 ReLU network fits f(x) = sin(5πx)/(5πx) from a handful of points; full-batch L-BFGS on
the loss, then Levenberg-Marquardt on the gradient (damped Newton on g = 0, i.e. minimising the
gradient norm) drives the gradient norm below 1e-3; the point is then classified with the exact
(dense) Hessian.

Beside it, the Gauss-Newton matrix (2/N) JᵀJ that some tutorials use in the Hessian's place:
it is positive semidefinite by construction, so its "minimum ratio" says nothing about
saddles. Both ratios are also counted the naive way (λ > 0 with no tolerance), which lets
rounding noise decide the sign of the many zero eigenvalues.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._results import ResultMixin, fmt
from ..analysis.critical import CriticalPoint, classify_critical_point
from ..curvature import dense_hessian
from ..progress import Progress
from ..training.stationary import StationaryHistory, minimize_full_batch, minimize_gradient_norm

HIDDEN = 128
GRAD_TARGET = 1e-3


@dataclass(frozen=True)
class RegressionRun(ResultMixin):
    """One regression fit driven to a small gradient and classified (exact Hessian and Gauss-Newton)."""

    seed: int
    loss_phase: StationaryHistory
    grad_phase: StationaryHistory
    critical: CriticalPoint
    exact_eigenvalues: np.ndarray  # every eigenvalue of the exact Hessian, ascending
    gauss_newton_eigenvalues: np.ndarray  # every eigenvalue of (2/N) JᵀJ, ascending
    exact_ratio: float  # fraction > eig_tol (the classification's)
    gauss_newton_ratio: float  # fraction > the same eig_tol
    exact_ratio_naive: float  # fraction > 0
    gauss_newton_ratio_naive: float
    dead_units: int  # hidden units inactive on every sample (their parameters are flat directions)

    _skip_in_dict = ("exact_eigenvalues", "gauss_newton_eigenvalues")

    def __str__(self) -> str:
        c = self.critical
        return (
            f"seed {self.seed}: loss {fmt(c.loss, 6)}, gradient norm {fmt(c.grad_norm)}, {c.kind}; "
            f"eigenvalues {fmt(c.min_eigenvalue)} .. {fmt(c.max_eigenvalue)}; minimum ratio exact "
            f"{self.exact_ratio:.3f} vs Gauss-Newton {self.gauss_newton_ratio:.3f} (naive λ>0: "
            f"{self.exact_ratio_naive:.3f} vs {self.gauss_newton_ratio_naive:.3f})"
        )


@dataclass(frozen=True)
class RegressionStudy(ResultMixin):
    """The homework-regression study's result: its runs."""

    num_points: int
    hidden: int
    grad_target: float
    inputs: np.ndarray
    targets: np.ndarray
    fit: np.ndarray  # the first run's prediction on ``curve_x``
    curve_x: np.ndarray
    runs: list[RegressionRun]

    _skip_in_dict = ("fit", "curve_x")

    def __str__(self) -> str:
        return (
            f"1->{self.hidden}->1 ReLU on sin(5πx)/(5πx), {self.num_points} points, gradient driven below "
            f"{fmt(self.grad_target)}:\n" + "\n".join(str(r) for r in self.runs)
        )


def sinc_data(num_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_points`` samples of sin(5πx)/(5πx) on [-1, 1], as ``(x, y)`` columns."""
    x = torch.linspace(-1.0, 1.0, num_points, dtype=torch.float64).unsqueeze(1)
    safe = torch.where(x == 0, torch.ones_like(x), x)
    y = torch.where(
        x == 0, torch.ones_like(x), torch.sin(5 * math.pi * safe) / (5 * math.pi * safe)
    )
    return x, y


def make_model(seed: int) -> nn.Module:
    """The 1->128->1 ReLU network, initialized from ``seed``."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(1, HIDDEN), nn.ReLU(), nn.Linear(HIDDEN, 1)).double()


def gauss_newton(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(2/N) Σ ∇f(x_i) ∇f(x_i)ᵀ: the Gauss-Newton matrix of the mean squared error, one output."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for xi in x:
        out = model(xi.unsqueeze(0)).sum()
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(out, params)]))
    J = torch.stack(rows)
    return 2.0 / len(x) * J.T @ J


def _one_run(
    seed: int,
    x: torch.Tensor,
    y: torch.Tensor,
    curve_x: torch.Tensor,
    loss_iters: int,
    grad_iters: int,
) -> tuple[RegressionRun, np.ndarray]:
    model = make_model(seed)
    loss_phase = minimize_full_batch(
        model, F.mse_loss, (x, y), objective="loss", max_iters=loss_iters
    )
    grad_phase = minimize_gradient_norm(
        model, F.mse_loss, (x, y), target=GRAD_TARGET / 100, max_iters=grad_iters
    )
    critical = classify_critical_point(model, F.mse_loss, (x, y), seed=seed)
    exact = np.linalg.eigvalsh(dense_hessian(model, F.mse_loss, (x, y)).numpy())
    gn = np.linalg.eigvalsh(gauss_newton(model, x).detach().numpy())
    tol = critical.eig_tol
    with torch.no_grad():
        active = (cast(nn.Sequential, model)[0](x) > 0).any(dim=0)
        prediction = model(curve_x).numpy().ravel()
    return RegressionRun(
        seed=seed,
        loss_phase=loss_phase,
        grad_phase=grad_phase,
        critical=critical,
        exact_eigenvalues=exact,
        gauss_newton_eigenvalues=gn,
        exact_ratio=float(np.mean(exact > tol)),
        gauss_newton_ratio=float(np.mean(gn > tol)),
        exact_ratio_naive=float(np.mean(exact > 0)),
        gauss_newton_ratio_naive=float(np.mean(gn > 0)),
        dead_units=int((~active).sum()),
    ), prediction


def run(*, quick: bool = True, seed: int = 0, progress: Progress | None = None) -> RegressionStudy:
    """Run the homework-regression study (``quick``: fewer fits)."""
    num_points = 40
    wanted = 2 if quick else 6
    max_tries = 2 * wanted
    x, y = sinc_data(num_points)
    runs, fit = [], None
    curve_x = torch.linspace(-1.0, 1.0, 401, dtype=torch.float64).unsqueeze(1)
    # Seeds in order until ``wanted`` runs got the gradient below the target (a ReLU network can
    # stall on a kink above it); the runs that did not are reported too.
    for i in range(max_tries):
        result, prediction = _one_run(
            seed + i, x, y, curve_x, loss_iters=400, grad_iters=20 if quick else 40
        )
        runs.append(result)
        if fit is None and result.critical.grad_norm < GRAD_TARGET:
            fit = prediction
        if progress is not None:
            progress(i + 1, max_tries)
        if sum(r.critical.grad_norm < GRAD_TARGET for r in runs) >= wanted:
            break
    fit = prediction if fit is None else fit
    return RegressionStudy(
        num_points=num_points,
        hidden=HIDDEN,
        grad_target=GRAD_TARGET,
        inputs=x.numpy().ravel(),
        targets=y.numpy().ravel(),
        fit=fit,
        curve_x=curve_x.numpy().ravel(),
        runs=runs,
    )
