"""The loss along lines and planes in parameter space: the linear interpolation between two
solutions (Goodfellow et al. 2015; Keskar et al. 2017, small- vs. large-batch) and loss
landscapes along random filter-normalized directions (Li et al. 2018).

Filter normalization rescales each filter of a random direction (a row of a linear layer's
weight, an output channel of a convolution) to the norm of the same filter of the weights, so
plots of networks with different weight scales are comparable. Biases and BatchNorm parameters
(one-dimensional parameters) get a zero direction by default, as in Li et al.'s code.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin, fmt
from ..model_state import preserved_model, preserved_rng, trainable_parameters
from ..progress import Progress
from ..training.evaluation import as_tensors, evaluate_largest

NORMALIZATIONS = ("filter", "layer", "none")


@dataclass(frozen=True)
class Curve(ResultMixin):
    """Loss and accuracy at theta(alpha) = (1 - alpha) theta_a + alpha theta_b."""

    alphas: list[float]
    train_loss: list[float]
    train_accuracy: list[float | None]
    test_loss: list[float] | None = None
    test_accuracy: list[float | None] | None = None
    distance: float = 0.0  # ||theta_b - theta_a||

    def __str__(self) -> str:
        i = int(np.argmax(self.train_loss))
        return (f"Interpolation over {len(self.alphas)} points (||theta_b - theta_a|| = {fmt(self.distance)}): "
                f"train loss {fmt(self.train_loss[0])} at alpha={self.alphas[0]:g}, "
                f"highest {fmt(self.train_loss[i])} at alpha={self.alphas[i]:g}, "
                f"{fmt(self.train_loss[-1])} at alpha={self.alphas[-1]:g}")


@dataclass(frozen=True)
class Landscape(ResultMixin):
    """Loss around the model's parameters along ``dims`` random directions.

    ``train_loss`` is a list over ``coords`` (dims=1) or a grid ``[i][j]`` with ``coords[i]``
    along the first direction and ``coords[j]`` along the second (dims=2).
    """

    dims: int
    coords: list[float]
    train_loss: list[Any]
    train_accuracy: list[Any]
    test_loss: list[Any] | None
    test_accuracy: list[Any] | None
    normalization: str
    ignore_bias_bn: bool
    seed: int
    center_loss: float
    direction_norms: list[float]

    def __str__(self) -> str:
        flat = np.asarray(self.train_loss, dtype=float)
        return (f"{self.dims}-D {self.normalization}-normalized landscape, {len(self.coords)} steps per axis "
                f"over [{self.coords[0]:g}, {self.coords[-1]:g}]: train loss {fmt(self.center_loss)} at the "
                f"centre, up to {fmt(float(np.nanmax(flat)))} at the edge")


def _filter_units(p: torch.Tensor) -> torch.Tensor:
    """View a parameter as (filters, rest): rows of a linear weight, output channels of a conv."""
    return p.reshape(p.shape[0], -1)


def random_direction(model: nn.Module, *, normalization: str = "filter", ignore_bias_bn: bool = True,
                     seed: int = 0) -> list[torch.Tensor]:
    """A random Gaussian direction over the trainable parameters (one tensor per parameter),
    normalized per filter (Li et al.), per layer, or not at all. Seeded on the CPU."""
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}.")
    gen = torch.Generator().manual_seed(int(seed))
    out = []
    for _, p in trainable_parameters(model):
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(device=p.device, dtype=p.dtype)
        w = p.detach()
        if p.dim() <= 1:
            # Biases and norm-layer scales/shifts: zero by default; else Li et al. copy the weights.
            d = torch.zeros_like(w) if ignore_bias_bn else w.clone()
        elif normalization == "filter":
            dv, wv = _filter_units(d), _filter_units(w)
            dv.mul_(wv.norm(dim=1, keepdim=True) / (dv.norm(dim=1, keepdim=True) + 1e-10))
        elif normalization == "layer":
            d.mul_(w.norm() / (d.norm() + 1e-10))
        out.append(d)
    return out


def _check_alphas(alphas: Sequence[float], what: str) -> list[float]:
    values = [float(a) for a in alphas]
    if len(values) < 2 or not all(np.isfinite(values)):
        raise ValueError(f"{what} must be at least 2 finite numbers, got {list(alphas)!r}.")
    return values


def _eval_pair(model, loss_fn, train, test) -> tuple[float, float | None, float | None, float | None]:
    tl, ta = evaluate_largest(model, loss_fn, train)
    if test is None:
        return tl, ta, None, None
    vl, va = evaluate_largest(model, loss_fn, test)
    return tl, ta, vl, va


def interpolate(model_a: nn.Module, model_b: nn.Module, loss_fn: Any, data: Any,
                alphas: Sequence[float] | None = None, *, test_data: Any = None,
                progress: Progress | None = None) -> Curve:
    """Train (and test) loss and accuracy along theta(alpha) = (1 - alpha) theta_a + alpha theta_b,
    alpha from -0.5 to 1.5 by default (Keskar et al.'s figure). Floating-point buffers (BatchNorm
    statistics) are interpolated too. Neither model is changed."""
    alphas = _check_alphas(np.linspace(-0.5, 1.5, 41) if alphas is None else alphas, "alphas")
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if list(sa) != list(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError("model_a and model_b must have the same architecture (same state_dict keys and "
                         "shapes) to interpolate between them.")
    train, test = as_tensors(data), (as_tensors(test_data) if test_data is not None else None)
    with preserved_rng():
        work = copy.deepcopy(model_a)
    names = [n for n, _ in trainable_parameters(model_a)]
    distance = float(torch.sqrt(sum(((sb[n].double() - sa[n].double()) ** 2).sum() for n in names)))
    cols: list[list] = [[], [], [], []]
    with torch.no_grad(), preserved_rng():
        for i, a in enumerate(alphas):
            state = {k: ((1 - a) * v + a * sb[k].to(v.device)) if v.is_floating_point() else v
                     for k, v in sa.items()}
            work.load_state_dict(state)
            for col, value in zip(cols, _eval_pair(work, loss_fn, train, test)):
                col.append(value)
            if progress:
                progress(i + 1, len(alphas))
    return Curve(alphas=alphas, train_loss=cols[0], train_accuracy=cols[1],
                 test_loss=cols[2] if test is not None else None,
                 test_accuracy=cols[3] if test is not None else None, distance=distance)


def landscape(model: nn.Module, loss_fn: Any, data: Any, *, dims: int = 1, normalization: str = "filter",
              steps: int = 25, span: float = 1.0, test_data: Any = None, ignore_bias_bn: bool = True,
              seed: int = 0, directions: Sequence[Sequence[torch.Tensor]] | None = None,
              progress: Progress | None = None) -> Landscape:
    """Loss at theta + a d1 (dims=1) or theta + a d1 + b d2 (dims=2) for a, b in [-span, span]
    (``steps`` points per axis), with d1, d2 random filter-normalized directions (Li et al.)
    unless ``directions`` are given. Train and test loss are taken at the same points. The model
    is left exactly as it was."""
    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}.")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}.")
    if not span > 0:
        raise ValueError(f"span must be positive, got {span}.")
    params = [p for _, p in trainable_parameters(model)]
    if directions is None:
        directions = [random_direction(model, normalization=normalization, ignore_bias_bn=ignore_bias_bn,
                                       seed=seed + k) for k in range(dims)]
    if len(directions) != dims or any(len(d) != len(params) or any(t.shape != p.shape for t, p in zip(d, params))
                                      for d in directions):
        raise ValueError(f"directions must be {dims} lists of tensors shaped like the trainable parameters.")
    coords = [float(c) for c in np.linspace(-span, span, steps)]
    train, test = as_tensors(data), (as_tensors(test_data) if test_data is not None else None)
    grid = [(a,) for a in coords] if dims == 1 else [(a, b) for a in coords for b in coords]
    cols: list[list] = [[], [], [], []]
    with preserved_model(model), torch.no_grad():
        base = [p.detach().clone() for p in params]
        centre = _eval_pair(model, loss_fn, train, test)[0]
        for i, point in enumerate(grid):
            for j, p in enumerate(params):
                p.copy_(base[j])
                for c, d in zip(point, directions):
                    p.add_(d[j].to(p.device, p.dtype), alpha=c)
            for col, value in zip(cols, _eval_pair(model, loss_fn, train, test)):
                col.append(value)
            if progress:
                progress(i + 1, len(grid))

    def shape(values: list) -> list:
        return values if dims == 1 else [values[i * steps:(i + 1) * steps] for i in range(steps)]

    norms = [float(torch.sqrt(sum((t.double() ** 2).sum() for t in d))) for d in directions]
    return Landscape(dims=dims, coords=coords, train_loss=shape(cols[0]), train_accuracy=shape(cols[1]),
                     test_loss=shape(cols[2]) if test is not None else None,
                     test_accuracy=shape(cols[3]) if test is not None else None,
                     normalization=normalization, ignore_bias_bn=ignore_bias_bn, seed=seed,
                     center_loss=centre, direction_norms=norms)
