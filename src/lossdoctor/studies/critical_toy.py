"""Study: the lecture's toy saddle. y = w1·w2·x with x = 1 and target 1, so L = (1 - w1·w2)².

At (0, 0) the gradient is zero and the Hessian [[0, -2], [-2, 0]] has eigenvalues ±2: a saddle, left
along ±(1, 1)/√2. Compared with gradient descent from the saddle and from a hair away, perturbed
gradient descent and momentum."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.func import functional_call, vmap

from .._results import ResultMixin, fmt
from ..analysis.critical import CriticalPoint, classify_critical_point
from ..analysis.saddle import (
    EscapeResult,
    MethodTrace,
    SaddleEscapeComparison,
    compare_saddle_escapes,
    escape_saddle,
    gradient_descent_path,
)
from ..progress import Progress
from ..zoo import build

HAIR = (1e-2, 0.0)  # "a hair away" from the saddle, off the escape direction on purpose


@dataclass(frozen=True)
class CriticalToyStudy(ResultMixin):
    """The toy-saddle study's result: the classification, the escape step and the comparison of methods."""

    critical: CriticalPoint
    escape: EscapeResult
    comparison: SaddleEscapeComparison
    hair_start: tuple[float, float]
    hair_path: MethodTrace
    grid: np.ndarray  # the w1 (= w2) coordinates of the surface grid
    surface: np.ndarray  # loss at (w1 = grid[j], w2 = grid[i])
    lr: float
    steps: int

    _skip_in_dict = ("surface",)

    def __str__(self) -> str:
        return (
            f"lecture toy at (0, 0): {self.critical.kind}, eigenvalues {fmt(self.critical.max_eigenvalue)} and "
            f"{fmt(self.critical.min_eigenvalue)}\n{self.escape}\n{self.comparison}"
        )


def loss_surface(problem, grid: np.ndarray) -> np.ndarray:
    """The problem's loss at every (w1, w2) of ``grid`` x ``grid``, through the model itself."""
    inputs, targets = problem.train_data
    w2, w1 = torch.meshgrid(
        torch.as_tensor(grid, dtype=torch.float32),
        torch.as_tensor(grid, dtype=torch.float32),
        indexing="ij",
    )

    def loss_at(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return problem.loss_fn(
            functional_call(problem.model, {"w1": a, "w2": b}, (inputs,)), targets
        )

    with torch.no_grad():
        values = vmap(loss_at)(w1.reshape(-1), w2.reshape(-1))
    return values.reshape(len(grid), len(grid)).double().numpy()


def run(*, quick: bool = True, seed: int = 0, progress: Progress | None = None) -> CriticalToyStudy:
    """Run the toy-saddle study."""
    steps, lr = 40, 0.1
    problem = build("lecture-saddle")
    model, loss_fn, data = problem.model, problem.loss_fn, problem.train_data
    critical = classify_critical_point(model, loss_fn, data, seed=seed)
    escape = escape_saddle(model, loss_fn, data, critical=critical)
    comparison = compare_saddle_escapes(
        model, loss_fn, data, steps=steps, lr=lr, seed=seed, critical=critical, record_paths=True
    )
    if progress is not None:
        progress(1, 3)
    hair = build("lecture-saddle", w1=HAIR[0], w2=HAIR[1])
    hair_path = gradient_descent_path(hair.model, hair.loss_fn, hair.train_data, steps=steps, lr=lr)
    if progress is not None:
        progress(2, 3)
    grid = np.linspace(-2.0, 2.0, 81 if quick else 161)
    surface = loss_surface(problem, grid)
    if progress is not None:
        progress(3, 3)
    return CriticalToyStudy(
        critical=critical,
        escape=escape,
        comparison=comparison,
        hair_start=HAIR,
        hair_path=hair_path,
        grid=grid,
        surface=surface,
        lr=lr,
        steps=steps,
    )
