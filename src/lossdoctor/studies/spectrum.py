"""Study: the Hessian spectrum of a trained MNIST-1D MLP (both ends, trace, density)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from .._results import ResultMixin, fmt
from ..curvature import (
    EigenResult,
    SpectralDensity,
    TraceResult,
    eigenpairs,
    hessian,
    spectral_density,
    trace,
)
from ..progress import Progress, scaled
from ..training.loop import TrainHistory, train
from ..zoo import build


@dataclass(frozen=True)
class SpectrumStudy(ResultMixin):
    """The spectrum study's result: both ends of the spectrum, the trace and the density."""

    problem: str
    num_params: int
    num_samples: int
    mode: str
    training: TrainHistory
    train_loss: float
    eigen: EigenResult
    trace: TraceResult
    density: SpectralDensity
    seed: int

    def __str__(self) -> str:
        return (
            f"Hessian spectrum of {self.problem} ({self.num_params} parameters, {self.num_samples} "
            f"samples, {self.mode} mode) after {self.training.epochs} epochs, loss {fmt(self.train_loss)}:\n"
            f"{self.eigen}\n{self.trace}\n{self.density}"
        )


def run(*, quick: bool = True, seed: int = 0, progress: Progress | None = None) -> SpectrumStudy:
    """Train ``mnist1d-mlp`` with Adam, then measure its Hessian's spectrum."""
    epochs = 20 if quick else 60
    problem = build("mnist1d-mlp", seed=seed, batch_size=100)
    eval_data = build("mnist1d-mlp", seed=seed, batch_size=1000).train_data
    optimizer = torch.optim.Adam(problem.model.parameters(), lr=1e-3)
    steps = epochs * len(problem.train_data)
    budget = steps + 350
    history = train(
        problem.model,
        problem.loss_fn,
        problem.train_data,
        optimizer,
        epochs=epochs,
        progress=scaled(progress, 0, budget),
    )
    op = hessian(problem.model, problem.loss_fn, eval_data)
    with warnings.catch_warnings():
        # The bottom end of a trained network's spectrum is a near-degenerate cluster that
        # Lanczos resolves slowly; its pairs carry converged=False and error bounds instead.
        warnings.simplefilter("ignore", RuntimeWarning)
        eig = eigenpairs(
            op,
            k=5,
            which="both",
            seed=seed,
            max_matvecs=150,
            progress=scaled(progress, steps, budget),
        )
    tr = trace(op, matvecs=99, seed=seed, progress=scaled(progress, steps + 150, budget))
    dens = spectral_density(
        op,
        num_probes=4,
        lanczos_steps=40 if quick else 80,
        seed=seed,
        progress=scaled(progress, steps + 250, budget),
    )
    if progress is not None:
        progress(budget, budget)
    return SpectrumStudy(
        problem="mnist1d-mlp",
        num_params=op.num_params,
        num_samples=op.num_samples,
        mode=op.mode,
        training=history,
        train_loss=op.loss,
        eigen=eig,
        trace=tr,
        density=dens,
        seed=seed,
    )
