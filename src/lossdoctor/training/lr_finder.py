"""Smith's learning-rate range test.

Train for a few steps while the lr grows exponentially from ``start_lr`` to ``end_lr``, record the
loss, and suggest the lr where it falls fastest.

The test trains the user's model with the user's optimizer, so both are snapshotted first and
restored afterwards: parameters, buffers, ``requires_grad``, ``.grad``, train/eval modes, the RNG,
and the optimizer's state (momenta, Adam moments, step counts) and param-group settings.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_arguments,
    check_choice,
    check_float,
    check_int,
    check_optimizer,
    check_progress,
)
from .._results import ResultMixin, fmt
from ..data import batch_loss, check_data, iter_batches, place
from ..model_state import RNGStream, model_device, preserved_model, trainable_parameters
from ..progress import Progress, with_progress

SUGGESTIONS = ("steepest", "minimum")


@dataclass(frozen=True)
class LRRangeResult(ResultMixin):
    """The loss against the learning rate, and the suggested lr (:func:`lr_range_test`).

    Attributes:
        lrs: the lr of each step.
        losses: ``losses[i]`` is the training loss of the batch at step ``i``, measured before
            the update made with ``lrs[i]``.
        smoothed_losses: their smoothed curve (a zero-phase exponential moving average).
        suggested_lr: ``steepest_lr`` or ``minimum_lr``, as ``suggestion`` says; ``None`` when
            interrupted (no suggestion from a cut-short curve).
        suggestion: ``"steepest"`` or ``"minimum"``.
        steepest_lr: where the smoothed loss falls fastest per unit of log(lr), before its
            minimum.
        minimum_lr: where the smoothed loss is lowest (training there is usually at the edge of
            instability; one tenth of it is the other common rule).
        minimum_loss: the lowest smoothed loss.
        diverged: the test stopped early because the loss blew up.
        steps_run: steps run.
        steps_requested: steps asked for.
        start_lr: the first lr.
        end_lr: the last lr planned.
        smoothing: the EMA coefficient.
        diverge_factor: the blow-up factor that stops the test.
        interrupted: Ctrl-C: the curve up to where it stopped, and no suggestion.

    Examples:
        Printed, a result says the range, how far it went and the suggestion (see
        :func:`lr_range_test` for a run that diverges):

        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, optimizer, _ = crawling_regression(lr=0.01)
        >>> print(ld.lr_range_test(model, loss_fn, data, optimizer, start_lr=1e-3, end_lr=3, steps=40))
        LR range test 0.001 -> 3 (40 steps)
          suggested lr 0.03278 (steepest)
          steepest descent at lr 0.03278; lowest smoothed loss 0.09082 at lr 3
    """

    lrs: list[float]
    losses: list[float]
    smoothed_losses: list[float]
    suggested_lr: float | None  # None when interrupted: no suggestion from a cut-short curve
    suggestion: str
    steepest_lr: float
    minimum_lr: float
    minimum_loss: float
    diverged: bool
    steps_run: int
    steps_requested: int
    start_lr: float
    end_lr: float
    smoothing: float
    diverge_factor: float
    interrupted: bool = False  # Ctrl-C: the curve up to where it stopped, and no suggestion

    def __str__(self) -> str:
        stop = (
            f"stopped at step {self.steps_run} of {self.steps_requested}: the loss diverged"
            if self.diverged
            else f"INTERRUPTED at step {self.steps_run} of {self.steps_requested}"
            if self.interrupted
            else f"{self.steps_run} steps"
        )
        advice = (
            "no lr suggested from an interrupted test"
            if self.suggested_lr is None
            else f"suggested lr {fmt(self.suggested_lr)} ({self.suggestion})"
        )
        return (
            f"LR range test {fmt(self.start_lr)} -> {fmt(self.end_lr)} ({stop})\n"
            f"  {advice}\n"
            f"  steepest descent at lr {fmt(self.steepest_lr)}; lowest smoothed loss "
            f"{fmt(self.minimum_loss)} at lr {fmt(self.minimum_lr)}"
        )


def _cycle(data: Any) -> Iterator[tuple[Any, torch.Tensor]]:
    rng = RNGStream()  # one stream over the epochs: a shuffling loader gives a new order each epoch
    while True:
        empty = True
        for batch in iter_batches(data, rng=rng):
            empty = False
            yield batch
        if empty:
            raise ValueError("data is empty: it yielded no batches.")


def _check_optimizer(model: nn.Module, optimizer: Any) -> None:
    check_optimizer(optimizer)
    owned = {id(p) for p in model.parameters()}
    foreign = sum(1 for g in optimizer.param_groups for p in g["params"] if id(p) not in owned)
    if foreign:
        raise ValueError(
            f"the optimizer holds {foreign} parameter(s) that are not the model's; the range "
            "test could not restore them. Build the optimizer on model.parameters()."
        )


def _check_range(
    start_lr: float,
    end_lr: float,
    steps: int,
    smoothing: float,
    diverge_factor: float,
    suggestion: str,
) -> None:
    start_lr = check_float(start_lr, "start_lr", above=0.0)
    check_float(end_lr, "end_lr", above=0.0)
    if not end_lr > start_lr:
        raise ValueError(f"end_lr must be larger than start_lr ({start_lr:g}), got {end_lr!r}.")
    check_int(steps, "steps", minimum=5, hint="A curve needs points.")
    check_float(smoothing, "smoothing", minimum=0.0, below=1.0, hint="0 means no smoothing.")
    check_float(diverge_factor, "diverge_factor", above=1.0)
    check_choice(suggestion, "suggestion", SUGGESTIONS)


@contextlib.contextmanager
def preserved_optimizer(optimizer: torch.optim.Optimizer) -> Iterator[None]:
    """A context manager that puts the optimizer's state and settings back on exit.

    Snapshots the per-parameter state and the groups' settings (lr, momentum, ...) and restores
    them, keeping the same group and state objects the user may hold.

    Args:
        optimizer: any ``torch.optim`` optimizer.

    Yields:
        Nothing: the body runs with the optimizer as it is.

    Examples:
        >>> import torch
        >>> from lossdoctor.training.lr_finder import preserved_optimizer
        >>> optimizer = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> with preserved_optimizer(optimizer):
        ...     optimizer.param_groups[0]["lr"] = 5.0
        >>> optimizer.param_groups[0]["lr"]
        0.1
    """
    groups = [
        {k: copy.deepcopy(v) for k, v in g.items() if k != "params"} for g in optimizer.param_groups
    ]
    state = {
        p: {
            k: v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
            for k, v in s.items()
        }
        for p, s in optimizer.state.items()
    }
    flag = optimizer.__dict__.get("_opt_called", _MISSING)
    try:
        yield
    finally:
        with _interrupt.deferred():
            for g, saved in zip(optimizer.param_groups, groups, strict=True):
                params = g["params"]
                g.clear()
                g.update(saved)
                g["params"] = params
            optimizer.state.clear()
            optimizer.state.update(state)
            if flag is _MISSING:
                optimizer.__dict__.pop("_opt_called", None)
            else:
                optimizer.__dict__["_opt_called"] = flag


_MISSING = object()


def ema(values: np.ndarray, beta: float) -> np.ndarray:
    """Bias-corrected exponential moving average (causal: it lags by about 1/(1-beta) points).

    Args:
        values: the series.
        beta: the weight of the past (0: no smoothing).

    Returns:
        The smoothed series, as floats.

    Examples:
        >>> import numpy as np
        >>> from lossdoctor.training.lr_finder import ema
        >>> ema(np.array([0.0, 2.0]), 0.5).round(4).tolist()
        [0.0, 1.3333]
    """
    out = np.empty_like(values, dtype=float)
    avg = 0.0
    for i, v in enumerate(values):
        avg = beta * avg + (1.0 - beta) * float(v)
        out[i] = avg / (1.0 - beta ** (i + 1))
    return out


def zero_phase_ema(values: np.ndarray, beta: float) -> np.ndarray:
    """The EMA run forwards then backwards: the same smoothing without the lag.

    So the suggested lr is not shifted towards larger lrs.

    Args:
        values: as for :func:`ema`.
        beta: as for :func:`ema`.

    Returns:
        The smoothed series, as floats, without the lag.

    Examples:
        >>> import numpy as np
        >>> from lossdoctor.training.lr_finder import zero_phase_ema
        >>> zero_phase_ema(np.array([0.0, 2.0, 0.0]), 0.5).round(4).tolist()
        [0.4626, 1.0794, 0.5714]
    """
    if beta == 0.0 or len(values) == 0:
        return np.asarray(values, dtype=float)
    return ema(ema(values, beta)[::-1], beta)[::-1]


def suggest(lrs: np.ndarray, smoothed: np.ndarray) -> tuple[float, float, float]:
    """The steepest-descent lr, the minimum's lr and the minimum loss of a smoothed loss-vs-lr curve.

    Args:
        lrs: the lrs, increasing.
        smoothed: the smoothed loss at each.

    Returns:
        ``(steepest_lr, minimum_lr, minimum_loss)``.

    Examples:
        >>> import numpy as np
        >>> from lossdoctor.training.lr_finder import suggest
        >>> suggest(np.array([1e-3, 1e-2, 1e-1, 1.0, 10.0]), np.array([1.0, 0.9, 0.3, 0.2, 5.0]))
        (0.1, 1.0, 0.2)
    """
    m = int(np.argmin(smoothed))
    if m < 2:
        return float(lrs[m]), float(lrs[m]), float(smoothed[m])
    slope = np.gradient(smoothed[: m + 1], np.log(lrs[: m + 1]))
    return float(lrs[int(np.argmin(slope))]), float(lrs[m]), float(smoothed[m])


@with_progress("LR range test")
def lr_range_test(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    optimizer: torch.optim.Optimizer,
    *,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    steps: int = 100,
    smoothing: float = 0.9,
    diverge_factor: float = 4.0,
    suggestion: str = "steepest",
    progress: Progress | bool | str | None = "auto",
) -> LRRangeResult:
    """Smith's LR range test on the user's model, loss, data and optimizer.

    Runs up to ``steps`` training updates (cycling through ``data``) in train mode with the lr
    growing geometrically from ``start_lr`` to ``end_lr``; stops early once the running
    (causal, bias-corrected EMA) loss exceeds ``diverge_factor`` times its lowest value or is not
    finite. Parameter groups keep their lr ratios: the group with the largest lr follows the
    schedule. The model and the optimizer are left exactly as they were.

    Args:
        model: any ``nn.Module``.
        loss_fn: ``loss_fn(model(inputs), targets)``, the batch-mean loss.
        data: a DataLoader or a list of batches, cycled through.
        optimizer: the optimizer that trains ``model`` (not LBFGS).
        start_lr: the first lr.
        end_lr: the last lr.
        steps: updates at most.
        smoothing: the EMA coefficient of the smoothed curve.
        diverge_factor: stop once the running loss exceeds this many times its lowest.
        suggestion: ``"steepest"`` (default) or ``"minimum"``: which picks ``suggested_lr``.
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.

    Returns:
        The loss-vs-lr curve and the suggested lr. Ctrl-C returns the curve so far, with no
        suggestion.

    Raises:
        ValueError: a bad range or option, or an optimizer over other parameters.
        TypeError: an LBFGS optimizer.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, (x, y), optimizer, _ = crawling_regression(lr=0.01)
        >>> batches = [(x[:32], y[:32]), (x[32:], y[32:])]
        >>> r = ld.lr_range_test(model, loss_fn, batches, optimizer,
        ...                      start_lr=1e-3, end_lr=10, steps=50, smoothing=0.5)
        >>> r.diverged, round(r.minimum_lr, 1)  # lowest loss at lr 1.3, blown up past it
        (True, 1.3)
        >>> optimizer.param_groups[0]["lr"]  # the optimizer (and the model) as they were
        0.01
    """
    check_arguments(model=model, loss_fn=loss_fn)
    _check_range(start_lr, end_lr, steps, smoothing, diverge_factor, suggestion)
    check_progress(progress)
    steps = int(steps)
    params = [p for _, p in trainable_parameters(model)]
    device = model_device(params)
    _check_optimizer(model, optimizer)
    if isinstance(optimizer, torch.optim.LBFGS):
        raise TypeError(
            "LBFGS needs a closure and line searches; the range test is for SGD-like "
            "optimizers (SGD, Adam, AdamW, RMSprop, ...)."
        )
    check_data(data)
    plan = start_lr * (end_lr / start_lr) ** (np.arange(steps) / (steps - 1))
    top = max(float(g["lr"]) for g in optimizer.param_groups)
    ratios = [float(g["lr"]) / top if top > 0 else 1.0 for g in optimizer.param_groups]
    lrs: list[float] = []
    losses: list[float] = []
    diverged = interrupted = False
    with preserved_model(model), preserved_optimizer(optimizer):
        model.train()
        batches = _cycle(data)
        avg, best = 0.0, math.inf
        try:
            for i, lr in enumerate(plan):
                _set_lrs(optimizer, float(lr), ratios)
                inputs, targets = place(*next(batches), device)
                optimizer.zero_grad(set_to_none=True)
                loss = batch_loss(model, loss_fn, inputs, targets, i)
                value = float(loss.detach())
                if not math.isfinite(value):
                    if i == 0:
                        raise ValueError(
                            f"the loss is {value} on the first batch, before any update: check the "
                            "model's parameters and the data for NaN/Inf."
                        )
                    diverged = True
                    break
                lrs.append(float(lr))
                losses.append(value)
                avg = smoothing * avg + (1.0 - smoothing) * value
                running = avg / (1.0 - smoothing ** (i + 1))
                best = min(best, running)
                if callable(progress):
                    progress(i + 1, steps)
                if running > diverge_factor * best:
                    diverged = True
                    break
                loss.backward()
                optimizer.step()
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial(finished=bool(losses))
    if not interrupted and len(losses) < 3:
        raise ValueError(
            f"the loss diverged after {len(losses)} step(s) already at lr {fmt(plan[len(losses)])}: "
            f"lower start_lr (now {start_lr})."
        )
    smoothed = zero_phase_ema(np.asarray(losses), smoothing)
    if interrupted:  # the curve so far, and no suggestion
        steepest, minimum, min_loss = math.nan, math.nan, float(smoothed.min())
    else:
        steepest, minimum, min_loss = suggest(np.asarray(lrs), smoothed)
    return LRRangeResult(
        lrs=lrs,
        losses=losses,
        smoothed_losses=smoothed.tolist(),
        suggested_lr=None if interrupted else (steepest if suggestion == "steepest" else minimum),
        suggestion=suggestion,
        steepest_lr=steepest,
        minimum_lr=minimum,
        minimum_loss=min_loss,
        diverged=diverged and not interrupted,
        steps_run=len(losses),
        steps_requested=steps,
        start_lr=float(start_lr),
        end_lr=float(end_lr),
        smoothing=float(smoothing),
        diverge_factor=float(diverge_factor),
        interrupted=interrupted,
    )


def _set_lrs(optimizer: torch.optim.Optimizer, lr: float, ratios: list[float]) -> None:
    """Set each group's lr to ``lr`` times its ratio (in place where the lr is a tensor)."""
    for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr * ratio)
        else:
            group["lr"] = lr * ratio
