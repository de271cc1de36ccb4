"""Study: "local minima are rare in high dimensions".

Many small MNIST-1D networks, each trained for a different number of L-BFGS iterations on the loss
and then driven to the nearest critical point by Levenberg-Marquardt on the gradient (damped Newton
on g = 0, attracted to saddles as much as to minima); every end point is classified with the exact
(dense) Hessian. The lecture's plot: training loss against minimum ratio (fraction of positive
eigenvalues).

The networks use tanh, so the loss is twice differentiable everywhere (a ReLU network's Hessian
jumps at every kink, and Newton steps stall there)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from .._results import ResultMixin, fmt
from ..analysis.critical import CriticalPoint, classify_critical_point
from ..progress import Progress
from ..training.stationary import StationaryHistory, minimize_full_batch, minimize_gradient_norm
from ..zoo.mnist1d import mnist1d_arrays

HIDDEN = 6
NUM_TRAIN = 128
DATA_SEED = 42
GRAD_TARGET = 1e-6
LOSS_ITERS = (1, 5, 10, 20, 40, 80, 160)  # pre-training lengths, cycled over the runs


@dataclass(frozen=True)
class MinimaRun(ResultMixin):
    """One small network driven to a critical point and classified."""

    seed: int
    loss_iterations: int
    loss_phase: StationaryHistory
    grad_phase: StationaryHistory
    critical: CriticalPoint

    def __str__(self) -> str:
        c = self.critical
        return (
            f"seed {self.seed:>3} ({self.loss_iterations:>3} loss iterations): loss {fmt(c.loss, 5):>9}, "
            f"|g| {fmt(c.grad_norm):>9}, minimum ratio {c.minimum_ratio:.3f} (+{c.num_positive} "
            f"-{c.num_negative} 0:{c.num_zero}), {c.kind}"
        )


@dataclass(frozen=True)
class RareMinimaStudy(ResultMixin):
    """The rare-minima study's result: every run."""

    num_params: int
    num_train: int
    hidden: int
    grad_target: float
    data_seed: int
    runs: list[MinimaRun]

    @property
    def seeds(self) -> list[int]:
        """The seeds of the runs."""
        return [r.seed for r in self.runs]

    def count(self, kind: str) -> int:
        """How many runs ended as ``kind``."""
        return sum(r.critical.kind == kind for r in self.runs)

    @property
    def critical_runs(self) -> list[MinimaRun]:
        """The runs that reached a critical point."""
        return [r for r in self.runs if r.critical.is_critical]

    def __str__(self) -> str:
        kinds = ", ".join(
            f"{k.replace('_', ' ')}: {self.count(k)}"
            for k in (
                "local_minimum",
                "saddle_point",
                "degenerate",
                "local_maximum",
                "not_critical",
            )
        )
        return (
            f"{len(self.runs)} MLPs 40->{self.hidden}->10 ({self.num_params} parameters) on {self.num_train} "
            f"MNIST-1D samples, gradient driven towards {fmt(self.grad_target)}; {kinds}\n"
            + "\n".join(str(r) for r in self.runs)
        )


def _one_run(
    seed: int, loss_iters: int, data: tuple[torch.Tensor, torch.Tensor], grad_iters: int
) -> MinimaRun:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(40, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 10)).double()
    loss_phase = minimize_full_batch(
        model, F.cross_entropy, data, objective="loss", max_iters=loss_iters
    )
    grad_phase = minimize_gradient_norm(
        model, F.cross_entropy, data, target=GRAD_TARGET, max_iters=grad_iters
    )
    critical = classify_critical_point(model, F.cross_entropy, data, seed=seed)
    return MinimaRun(
        seed=seed,
        loss_iterations=loss_iters,
        loss_phase=loss_phase,
        grad_phase=grad_phase,
        critical=critical,
    )


def run(*, quick: bool = True, seed: int = 0, progress: Progress | None = None) -> RareMinimaStudy:
    """Run the rare-minima study (``quick``: fewer networks)."""
    num_runs = 8 if quick else 40
    x, y, _, _ = mnist1d_arrays(NUM_TRAIN, 0, DATA_SEED)
    data = (torch.from_numpy(x).double(), torch.from_numpy(y))
    runs = []
    for i in range(num_runs):
        runs.append(
            _one_run(
                seed + i, LOSS_ITERS[i % len(LOSS_ITERS)], data, grad_iters=10 if quick else 30
            )
        )
        if progress is not None:
            progress(i + 1, num_runs)
    return RareMinimaStudy(
        num_params=runs[0].critical.num_params,
        num_train=NUM_TRAIN,
        hidden=HIDDEN,
        grad_target=GRAD_TARGET,
        data_seed=DATA_SEED,
        runs=runs,
    )
