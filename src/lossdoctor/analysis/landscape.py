"""The loss along lines and planes in parameter space.

The linear interpolation between two solutions (Goodfellow et al. 2015; Keskar et al. 2017, small-
vs. large-batch) and loss landscapes along random filter-normalized directions (Li et al. 2018).

Filter normalization rescales each filter of a random direction (a row of a linear layer's
weight, an output channel of a convolution) to the norm of the same filter of the weights, so
plots of networks with different weight scales are comparable. Biases and BatchNorm parameters
(one-dimensional parameters) get a zero direction by default, as in Li et al.'s code.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_bool,
    check_choice,
    check_float,
    check_floats,
    check_int,
    check_loss_fn,
    check_module,
    check_progress,
    check_seed,
)
from .._results import ResultMixin, fmt
from ..evaluation import as_tensors, evaluate_largest
from ..model_state import preserved_model, preserved_rng, selected_parameters
from ..progress import Progress, as_callback, with_progress

NORMALIZATIONS = ("filter", "layer", "none")


@dataclass(frozen=True)
class Curve(ResultMixin):
    """Loss and accuracy at theta(alpha) = (1 - alpha) theta_a + alpha theta_b (:func:`interpolate`).

    Attributes:
        alphas: the interpolation coefficients.
        train_loss: the training loss at each alpha.
        train_accuracy: the training accuracy at each (``None`` where not a classifier).
        test_loss: the test loss at each (with ``test_data``), else ``None``.
        test_accuracy: the test accuracy at each, else ``None``.
        distance: ``||theta_b - theta_a||``.
        interrupted: Ctrl-C: the points not reached hold NaN (``None`` in JSON).
        points_done: how many points were measured.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> p, q = tiny_classification(seed=0), tiny_classification(seed=1)  # two initializations
        >>> curve = ld.interpolate(p.model, q.model, p.loss_fn, p.train_data, alphas=[0.0, 0.5, 1.0])
        >>> [round(v, 3) for v in curve.train_loss]
        [0.705, 0.673, 0.673]
    """

    alphas: list[float]
    train_loss: list[float]
    train_accuracy: list[float | None]
    test_loss: list[float] | None = None
    test_accuracy: list[float | None] | None = None
    distance: float = 0.0  # ||theta_b - theta_a||
    interrupted: bool = False  # Ctrl-C: the points not reached hold NaN (None in JSON)
    points_done: int | None = None

    def __str__(self) -> str:
        done = self.points_done if self.points_done is not None else len(self.alphas)
        losses = np.asarray(self.train_loss[:done], dtype=float)
        i = int(np.nanargmax(losses)) if np.isfinite(losses).any() else 0
        head = (
            f"Interpolation over {len(self.alphas)} points (||theta_b - theta_a|| = {fmt(self.distance)})"
            + (f", INTERRUPTED after {done}" if self.interrupted else "")
        )
        return (
            f"{head}: train loss {fmt(self.train_loss[0])} at alpha={self.alphas[0]:g}, "
            f"highest {fmt(self.train_loss[i])} at alpha={self.alphas[i]:g}, "
            f"{fmt(self.train_loss[done - 1])} at alpha={self.alphas[done - 1]:g}"
        )


@dataclass(frozen=True)
class Landscape(ResultMixin):
    """Loss around the model's parameters along ``dims`` random directions (:func:`landscape`).

    Attributes:
        dims: 1 (a line) or 2 (a plane).
        coords: the step along each direction, from ``-span`` to ``span``.
        train_loss: a list over ``coords`` (dims=1) or a grid ``[i][j]`` with ``coords[i]``
            along the first direction and ``coords[j]`` along the second (dims=2).
        train_accuracy: the training accuracy at the same points (``None`` where not a classifier).
        test_loss: the test loss at the same points (with ``test_data``), else ``None``.
        test_accuracy: the test accuracy at the same points, else ``None``.
        normalization: ``"filter"``, ``"layer"`` or ``"none"``.
        ignore_bias_bn: whether one-dimensional parameters got a zero direction.
        seed: the seed of the first direction (the second uses ``seed + 1``).
        center_loss: the training loss at the model's parameters.
        direction_norms: the norm of each direction.
        interrupted: Ctrl-C: the points not reached hold NaN (``None`` in JSON).
        points_done: points measured, in row-major order over the grid.
        mode: always ``"eval"``: the losses are evaluations (BatchNorm on its running statistics,
            dropout off), as the loss-landscape papers plot them; the model's own mode is left as
            it was.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> p = tiny_classification()
        >>> land = ld.landscape(p.model, p.loss_fn, p.train_data, steps=5)
        >>> land.coords, [round(v, 3) for v in land.train_loss]
        ([-1.0, -0.5, 0.0, 0.5, 1.0], [0.498, 0.577, 0.705, 0.885, 1.108])
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
    interrupted: bool = False  # Ctrl-C: the points not reached hold NaN (None in JSON)
    points_done: int | None = None  # in row-major order over the grid
    mode: str = "eval"

    def __str__(self) -> str:
        flat = np.asarray(self.train_loss, dtype=float)
        top = float(np.nanmax(flat)) if np.isfinite(flat).any() else math.nan
        total = len(self.coords) ** self.dims
        cut = f" (INTERRUPTED: {self.points_done} of {total} points)" if self.interrupted else ""
        return (
            f"{self.dims}-D {self.normalization}-normalized landscape, {len(self.coords)} steps per axis "
            f"over [{self.coords[0]:g}, {self.coords[-1]:g}]{cut}: train loss {fmt(self.center_loss)} at the "
            f"centre, up to {fmt(top)} where measured ({self.mode} mode)"
        )


def _filter_units(p: torch.Tensor) -> torch.Tensor:
    """View a parameter as (filters, rest): rows of a linear weight, output channels of a conv."""
    return p.reshape(p.shape[0], -1)


def random_direction(
    model: nn.Module,
    *,
    normalization: str = "filter",
    ignore_bias_bn: bool = True,
    seed: int = 0,
    params: Any = None,
) -> list[torch.Tensor]:
    """A random Gaussian direction over the trainable parameters, one tensor per parameter.

    Normalized per filter (Li et al.), per layer, or not at all. Seeded on the CPU, so the
    same seed gives the same direction on every device.

    Args:
        model: the model whose trainable parameters the direction spans.
        normalization: ``"filter"`` (each filter scaled to the norm of the weights' filter),
            ``"layer"`` (each parameter to the weight's norm) or ``"none"``.
        ignore_bias_bn: give one-dimensional parameters (biases, norm layers) a zero direction;
            otherwise a copy of the weights, as in Li et al.'s code.
        seed: the seed of the Gaussian draw.
        params: over these parameters only (tensors, names or glob patterns, modules; see
            :func:`lossdoctor.hessian`), one tensor each in the model's order.

    Returns:
        One tensor per trainable parameter, shaped, typed and placed like it.

    Examples:
        >>> import torch
        >>> from lossdoctor.analysis.landscape import random_direction
        >>> _ = torch.manual_seed(0)
        >>> layer = torch.nn.Linear(4, 2)
        >>> weight, bias = random_direction(layer)
        >>> torch.allclose(weight.norm(dim=1), layer.weight.detach().norm(dim=1)), bias.tolist()
        (True, [0.0, 0.0])
    """
    check_choice(normalization, "normalization", NORMALIZATIONS)
    check_bool(ignore_bias_bn, "ignore_bias_bn")
    gen = torch.Generator().manual_seed(check_seed(seed))
    out = []
    for _, p in selected_parameters(model, params):
        d = torch.randn(p.shape, generator=gen, dtype=torch.float64).to(
            device=p.device, dtype=p.dtype
        )
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


def _eval_pair(
    model, loss_fn, train, test
) -> tuple[float, float | None, float | None, float | None]:
    tl, ta = evaluate_largest(model, loss_fn, train)
    if test is None:
        return tl, ta, None, None
    vl, va = evaluate_largest(model, loss_fn, test)
    return tl, ta, vl, va


def _check_start(loss: float, what: str) -> None:
    if not math.isfinite(loss):
        raise ValueError(
            f"the training loss is {loss} at {what}: a landscape around a non-finite loss "
            "means nothing. Check the model's parameters and the data for NaN/Inf."
        )


def _evaluate_points(
    count: int,
    move: Any,
    model: nn.Module,
    loss_fn: Any,
    train: Any,
    test: Any,
    progress: Progress | None,
) -> tuple[list[list], bool]:
    """Train/test loss and accuracy at ``count`` points (``move(i)`` puts the model at point i).

    Four columns, and whether a Ctrl-C cut them short (the points finished are kept)."""
    cols: list[list] = [[], [], [], []]
    try:
        for i in range(count):
            move(i)
            for col, value in zip(cols, _eval_pair(model, loss_fn, train, test)):
                col.append(value)
            if progress:
                progress(i + 1, count)
    except KeyboardInterrupt:
        return cols, _interrupt.keep_partial(finished=bool(cols[0]))
    return cols, False


def _pad(values: list, total: int) -> list:
    """A column of per-point values, NaN where an interrupted run did not get to."""
    return values + [math.nan] * (total - len(values))


@with_progress("interpolation")
def interpolate(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: Any,
    data: Any,
    alphas: Sequence[float] | None = None,
    *,
    test_data: Any = None,
    progress: Progress | bool | str | None = "auto",
    params: Any = None,
) -> Curve:
    """The loss along the line between two solutions (Keskar et al.'s small- vs large-batch figure).

    ``params``: interpolate only these parameters of ``model_a`` (tensors, names or glob
    patterns, modules; see :func:`lossdoctor.hessian`); every other parameter and every buffer
    stays at ``model_a``'s value, and ``distance`` is over the selected ones.

    Train (and test) loss and accuracy along theta(alpha) = (1 - alpha) theta_a + alpha theta_b,
    alpha from -0.5 to 1.5 by default. Floating-point buffers (BatchNorm statistics) are
    interpolated too. Neither model is changed. Evaluation only: ``loss_fn`` need not be
    differentiable here.

    Args:
        model_a: the solution at alpha = 0.
        model_b: the solution at alpha = 1 (same architecture).
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch-mean loss.
        data: the training data (any lossdoctor data; its samples are merged).
        alphas: the interpolation coefficients (default 41 points from -0.5 to 1.5).
        test_data: also measure the test loss and accuracy on these.
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.
        params: interpolate only these parameters (see below).

    Returns:
        The losses and accuracies at each alpha. Ctrl-C returns the points finished
        (``interrupted=True``, NaN beyond).

    Raises:
        ValueError: the models differ in architecture, or a loss at either end is not finite.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> p, q = tiny_classification(seed=0), tiny_classification(seed=1)  # two initializations
        >>> curve = ld.interpolate(p.model, q.model, p.loss_fn, p.train_data, alphas=[0.0, 0.5, 1.0])
        >>> round(curve.distance, 3), curve.train_accuracy
        (1.287, [0.59375, 0.65625, 0.578125])
    """
    check_module(model_a, "model_a")
    check_module(model_b, "model_b")
    check_loss_fn(loss_fn)
    check_progress(progress)
    alphas = check_floats(
        np.linspace(-0.5, 1.5, 41) if alphas is None else alphas, "alphas", min_length=2
    )
    sa, sb = model_a.state_dict(), model_b.state_dict()
    if list(sa) != list(sb) or any(sa[k].shape != sb[k].shape for k in sa):
        raise ValueError(
            "model_a and model_b must have the same architecture (same state_dict keys and "
            "shapes) to interpolate between them."
        )
    names = [n for n, _ in selected_parameters(model_a, params)]
    train = as_tensors(data, "data")
    test = as_tensors(test_data, "test_data") if test_data is not None else None
    with preserved_rng():
        for model, what in ((model_a, "model_a"), (model_b, "model_b")):
            _check_start(evaluate_largest(model, loss_fn, train)[0], what)
        work = copy.deepcopy(model_a)
    distance = float(torch.sqrt(sum(((sb[n].double() - sa[n].double()) ** 2).sum() for n in names)))

    moving = dict(work.named_parameters())

    def move(i: int) -> None:
        a = alphas[i]
        if params is None:
            work.load_state_dict(
                {
                    k: ((1 - a) * v + a * sb[k].to(v.device)) if v.is_floating_point() else v
                    for k, v in sa.items()
                }
            )
            return
        work.load_state_dict(sa)
        for n in names:
            moving[n].copy_((1 - a) * sa[n] + a * sb[n].to(sa[n].device))

    with torch.no_grad(), preserved_rng():
        cols, interrupted = _evaluate_points(
            len(alphas), move, work, loss_fn, train, test, as_callback(progress)
        )
    done, total = len(cols[0]), len(alphas)
    return Curve(
        alphas=alphas,
        train_loss=_pad(cols[0], total),
        train_accuracy=_pad(cols[1], total),
        test_loss=_pad(cols[2], total) if test is not None else None,
        test_accuracy=_pad(cols[3], total) if test is not None else None,
        distance=distance,
        interrupted=interrupted,
        points_done=done,
    )


@with_progress("landscape")
def landscape(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    dims: int = 1,
    normalization: str = "filter",
    steps: int = 25,
    span: float = 1.0,
    test_data: Any = None,
    ignore_bias_bn: bool = True,
    seed: int = 0,
    directions: Sequence[Sequence[torch.Tensor]] | None = None,
    progress: Progress | bool | str | None = "auto",
    params: Any = None,
) -> Landscape:
    """The loss around the model's parameters along one or two random directions (Li et al.).

    ``params``: move only these parameters (tensors, names or glob patterns, modules; see
    :func:`lossdoctor.hessian`): the random directions, or the given ``directions`` (one tensor
    per selected parameter, in the model's order), span them alone.

    Loss at theta + a d1 (dims=1) or theta + a d1 + b d2 (dims=2) for a, b in [-span, span]
    (``steps`` points per axis), with d1, d2 random filter-normalized directions unless
    ``directions`` are given. Train and test loss are taken at the same points, in eval mode
    (BatchNorm on its running statistics, dropout off; the result's ``mode`` says so). The model
    is left exactly as it was, its mode included. Evaluation only: ``loss_fn`` need not be
    differentiable here.

    Args:
        model: the model at the centre.
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch-mean loss.
        data: the training data (any lossdoctor data; its samples are merged).
        dims: 1 (a line) or 2 (a plane).
        normalization: ``"filter"`` (default), ``"layer"`` or ``"none"`` (see
            :func:`random_direction`).
        steps: points per axis.
        span: the largest step along each direction.
        test_data: also measure the test loss and accuracy at the same points.
        ignore_bias_bn: give biases and norm layers a zero direction.
        seed: the seed of the first direction (the second uses ``seed + 1``).
        directions: ``dims`` directions of your own, each a list of tensors shaped like the
            trainable parameters.
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.
        params: move only these parameters (see below).

    Returns:
        The losses on the line or grid. Ctrl-C returns the points finished, row by row
        (``interrupted=True``, NaN beyond).

    Raises:
        ValueError: bad ``dims``, ``steps``, ``span`` or ``directions``, or a non-finite loss at
            the centre.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> p = tiny_classification()
        >>> land = ld.landscape(p.model, p.loss_fn, p.train_data, dims=2, steps=3)
        >>> len(land.train_loss), len(land.train_loss[0]), round(land.center_loss, 4)
        (3, 3, 0.7052)
    """
    check_module(model)
    check_loss_fn(loss_fn)
    if check_int(dims, "dims") not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims!r}.")
    check_choice(normalization, "normalization", NORMALIZATIONS)
    steps = check_int(steps, "steps", minimum=2)
    span = check_float(span, "span", above=0.0)
    check_bool(ignore_bias_bn, "ignore_bias_bn")
    seed = check_seed(seed)
    check_progress(progress)
    selection = params
    params = [p for _, p in selected_parameters(model, selection)]
    if directions is None:
        directions = [
            random_direction(
                model,
                normalization=normalization,
                ignore_bias_bn=ignore_bias_bn,
                seed=seed + k,
                params=selection,
            )
            for k in range(dims)
        ]
    elif not _fits(directions, params, dims):
        raise ValueError(
            f"directions must be {dims} list(s) of tensors shaped like the trainable parameters "
            f"({[tuple(p.shape) for p in params][:6]}...), got {type(directions).__name__}."
        )
    coords = [float(c) for c in np.linspace(-span, span, steps)]
    train = as_tensors(data, "data")
    test = as_tensors(test_data, "test_data") if test_data is not None else None
    grid = [(a,) for a in coords] if dims == 1 else [(a, b) for a in coords for b in coords]
    with preserved_model(model), torch.no_grad():
        base = [p.detach().clone() for p in params]
        centre = _eval_pair(model, loss_fn, train, test)[0]
        _check_start(centre, "the model's parameters")

        def move(i: int) -> None:
            for j, p in enumerate(params):
                p.copy_(base[j])
                for c, d in zip(grid[i], directions):
                    p.add_(d[j].to(p.device, p.dtype), alpha=c)

        cols, interrupted = _evaluate_points(
            len(grid), move, model, loss_fn, train, test, as_callback(progress)
        )

    done = len(cols[0])

    def shape(values: list) -> list:
        values = _pad(values, len(grid))
        return values if dims == 1 else [values[i * steps : (i + 1) * steps] for i in range(steps)]

    norms = [math.sqrt(sum(float((t.double() ** 2).sum()) for t in d)) for d in directions]
    return Landscape(
        dims=dims,
        coords=coords,
        train_loss=shape(cols[0]),
        train_accuracy=shape(cols[1]),
        test_loss=shape(cols[2]) if test is not None else None,
        test_accuracy=shape(cols[3]) if test is not None else None,
        normalization=normalization,
        ignore_bias_bn=ignore_bias_bn,
        seed=seed,
        center_loss=centre,
        direction_norms=norms,
        interrupted=interrupted,
        points_done=done,
    )


def _fits(directions: Any, params: list[torch.Tensor], dims: int) -> bool:
    if isinstance(directions, (str, bytes, torch.Tensor)) or not isinstance(directions, Sequence):
        return False
    if len(directions) != dims:
        return False
    for d in directions:
        if (
            isinstance(d, (str, bytes, torch.Tensor))
            or not isinstance(d, Sequence)
            or len(d) != len(params)
        ):
            return False
        if not all(isinstance(t, torch.Tensor) and t.shape == p.shape for t, p in zip(d, params)):
            return False
    return True
