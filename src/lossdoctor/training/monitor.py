"""A one-line training monitor: cheap signals as it trains, sharpness now and then, and the
stall doctor when the loss stops going down.

    monitor = lossdoctor.Monitor(model, loss_fn, train_data)
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        monitor.step(loss, optimizer)

Every step records the loss. The gradient norm, the size of the update and the cosine between a
step's gradient and the one before (one flat copy of the gradient and of the parameters, no
extra forward or backward pass) are taken every step when that costs under 1.5% of the training
step, else on pairs of steps spaced to stay under it (``signals_every=1`` forces every step;
the steps in between hold NaN). Every ``sharpness_every`` steps (default 1000, spread further
where an estimate would cost over 1% of training time) a few warm-started power
iterations of Hessian-vector products on a small fixed subset estimate λ_max. Every
``check_every`` steps (default ``window // 2``, spread further where a check would cost over
0.5% of training time) the recent losses are checked for a stall (the loss stopped falling beyond
doubt from minibatch noise, grew, went NaN/Inf, or successive gradients point against each
other; a window the noise leaves open is widened, up to 8x ``window``); a stall runs
:func:`lossdoctor.diagnose`, logs its verdict (logger ``lossdoctor.monitor``) and passes it to
``callback``. Nothing the monitor does changes training: parameters, gradients, modes and every
RNG are as the training loop left them.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin, fmt
from ..analysis.stall import DIVERGE_GROWTH, WINDOW, Diagnosis, _trend, diagnose, stall_test
from ..curvature import hessian
from ..curvature.operator import LossFn
from ..data import batch_size, is_single_batch, iter_batches
from ..model_state import preserved_rng, trainable_parameters
from .loop import training_step
from .step_signals import StepSignals

logger = logging.getLogger("lossdoctor.monitor")

SHARPNESS_EVERY = 1000
# With signals_every=None the gradient norm, cosine and update size are taken on pairs of steps
# spaced so that they cost at most this share of the training step (every step on a model large
# enough; every few steps on a tiny MLP whose whole step is a few hundred microseconds).
SIGNAL_BUDGET = 0.015
MAX_SIGNAL_STRIDE = 64
# With the default cadences, sharpness estimates and stall checks are spread further apart when
# their measured cost would exceed these shares of training time.
SHARPNESS_BUDGET = 0.01
CHECK_BUDGET = 0.005
SHARPNESS_ITERS = 4
SHARPNESS_SAMPLES = 128
# Successive minibatch gradients of momentum SGD often point mildly apart; only a strong flip
# (mean cosine below this) calls the doctor on its own, so noise does not trigger costly checks.
COS_TRIGGER = -0.5
MAX_BACKOFF = 16
DIAGNOSE_SAMPLES = 2048
# A stall test the minibatch noise leaves open is retried on windows 2x, 4x, ... this many times
# the base window before the monitor waits for more steps.
MAX_STALL_WINDOWS = 8


@dataclass(frozen=True)
class MonitorRecord(ResultMixin):
    """What the monitor saw, one entry per ``monitor.step``; ``sharpness`` holds ``(step, λ_max
    estimate)`` pairs. ``grad_norms``, ``update_norms`` and ``grad_cosines`` are NaN on steps the
    signals were not taken (see ``Monitor(signals_every=...)``) and the last two on the first."""

    steps: list[int]
    losses: list[float]
    grad_norms: list[float]
    update_norms: list[float]
    grad_cosines: list[float]
    lrs: list[float | None]
    sharpness: list[tuple[int, float]]

    def window(self, n: int) -> dict[str, list[float]]:
        return {"losses": self.losses[-n:], "grad_norms": self.grad_norms[-n:],
                "grad_cosines": self.grad_cosines[-n:]}

    def __str__(self) -> str:
        if not self.steps:
            return "monitor: no steps recorded"
        norms = [g for g in self.grad_norms if math.isfinite(g)]
        last = f"loss {fmt(self.losses[-1], 5)}, gradient norm {fmt(norms[-1] if norms else math.nan)}"
        sharp = f", last sharpness {fmt(self.sharpness[-1][1], 4)}" if self.sharpness else ""
        return f"monitor: {len(self.steps)} steps, {last}{sharp}"


def _subset(data: Any, samples: int) -> Any:
    """The first ``samples`` samples of ``data`` as one ``(inputs, targets)`` pair (one batch is
    cheaper per Hessian-vector product than many small ones), or a short list of batches when
    inputs are not plain tensors."""
    if is_single_batch(data):
        x, y = data
        if isinstance(x, torch.Tensor) and batch_size(y) > samples:
            return (x[:samples], y[:samples])
        return data
    picked, count = [], 0
    for x, y in iter_batches(data):
        if isinstance(x, torch.Tensor) and count + batch_size(y) > samples:
            keep = samples - count
            picked.append((x[:keep], y[:keep]))
            break
        picked.append((x, y))
        count += batch_size(y)
        if count >= samples:
            break
    if picked and all(isinstance(x, torch.Tensor) for x, _ in picked):
        return (torch.cat([x for x, _ in picked]), torch.cat([y for _, y in picked]))
    return picked


class Monitor:
    """Watches a training loop; see the module docstring.

    Args:
        model, loss_fn, data: the model being trained, its loss, and the data the doctor measures
            the full-data loss, gradient and curvature on (the training set or a fixed part of it).
        sharpness_every: estimate λ_max every this many steps (0: never; None: every 1000 steps,
            or less often where that would cost over 1% of training time).
        sharpness_samples: how many samples of ``data`` the sharpness estimate uses.
        window: how many recent steps a stall is judged on.
        check_every: look for a stall every this many steps (None: every ``window // 2`` steps, or
            less often where that would cost over 0.5% of training time).
        signals_every: take the gradient norm, cosine and update size on a pair of steps every
            this many steps (1: every step; None: every step where that costs under 1.5% of the
            training step, else spaced to stay under it).
        diagnose_samples: the doctor measures on the first this many samples of ``data`` (None: all).
        callback: called as ``callback(diagnosis)`` for every diagnosis that is not "progressing".
        diagnose_kwargs: passed on to :func:`lossdoctor.diagnose`.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, data: Any, *, sharpness_every: int | None = None,
                 sharpness_samples: int = SHARPNESS_SAMPLES, sharpness_iters: int = SHARPNESS_ITERS,
                 window: int = WINDOW, check_every: int | None = None,
                 callback: Callable[[Diagnosis], None] | None = None, lr: float | None = None,
                 diagnose_samples: int | None = DIAGNOSE_SAMPLES,
                 diagnose_kwargs: dict[str, Any] | None = None, signals_every: int | None = None) -> None:
        self.params = [p for _, p in trainable_parameters(model)]
        if not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable, got {type(loss_fn).__name__}.")
        self._auto_sharpness = sharpness_every is None
        sharpness_every = SHARPNESS_EVERY if sharpness_every is None else sharpness_every
        for name, value, low in (("sharpness_every", sharpness_every, 0), ("sharpness_samples", sharpness_samples, 1),
                                 ("sharpness_iters", sharpness_iters, 1), ("window", window, 4)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
        for name, value in (("check_every", check_every), ("signals_every", signals_every)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer (or None), got {value!r}.")
        if callback is not None and not callable(callback):
            raise TypeError(f"callback must be callable (it receives a Diagnosis), got {type(callback).__name__}.")
        self.model, self.loss_fn, self.data = model, loss_fn, data
        self._sharp_data = _subset(data, sharpness_samples) if sharpness_every else None
        self._doctor_data = data if diagnose_samples is None else _subset(data, diagnose_samples)
        self.sharpness_every, self.sharpness_iters = sharpness_every, sharpness_iters
        self.window = window
        self._auto_check = check_every is None
        self.check_every = check_every or max(1, window // 2)
        self._next_sharpness = sharpness_every
        self._sharpness_costs: deque[float] = deque(maxlen=8)
        self._check_costs: deque[float] = deque(maxlen=32)
        self.callback = callback
        self.lr = lr
        self.diagnose_kwargs = dict(diagnose_kwargs or {})
        self.diagnoses: list[Diagnosis] = []
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._grad_norms: list[float] = []
        self._update_norms: list[float] = []
        self._cosines: list[float] = []
        self._lrs: list[float | None] = []
        self._sharpness: list[tuple[int, float]] = []
        self._signals = StepSignals(self.params)
        self.signals_every = signals_every
        self._stride = signals_every or 1
        self._next_signal = 1  # the step whose signals are taken next (its predecessor is recorded)
        self._train_times: deque[float] = deque(maxlen=32)  # the user's step, between our calls
        self._update_costs: deque[float] = deque(maxlen=32)
        self._record_costs: deque[float] = deque(maxlen=32)
        self._left_at: float | None = None
        self._power_vector: torch.Tensor | None = None
        self._count = 0
        self._next_check = window
        self._backoff = 1
        self._last_cause: str | None = None
        self._nonfinite_reported = False

    # -- the record ----------------------------------------------------------------------------
    @property
    def record(self) -> MonitorRecord:
        return MonitorRecord(steps=list(self._steps), losses=list(self._losses), grad_norms=list(self._grad_norms),
                             update_norms=list(self._update_norms), grad_cosines=list(self._cosines),
                             lrs=list(self._lrs), sharpness=list(self._sharpness))

    @property
    def last_diagnosis(self) -> Diagnosis | None:
        return self.diagnoses[-1] if self.diagnoses else None

    # -- one training step ---------------------------------------------------------------------
    def step(self, loss: Any, optimizer: torch.optim.Optimizer | None = None) -> Diagnosis | None:
        """Record one step (call it after ``optimizer.step()``); returns a new diagnosis if this
        step triggered one, else None."""
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(f"monitor.step expects the scalar training loss, got shape {tuple(loss.shape)}.")
        elif not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise TypeError(f"monitor.step expects the loss (a tensor or a float), got {type(loss).__name__}.")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
        # The loss first: on a GPU it waits for the training step, whose time then counts as the
        # user's (below), not as the signals' cost.
        loss_value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        entered = time.perf_counter()
        if self._left_at is not None:
            self._train_times.append(entered - self._left_at)
        self._count += 1
        gnorm = cos = update = math.nan
        if self._count == self._next_signal:
            gnorm, cos, update = self._signals.update()
            self._update_costs.append(time.perf_counter() - entered)
            self._next_signal = self._count + self._signal_stride()
        elif self._count == self._next_signal - 1:
            self._signals.record()
            self._record_costs.append(time.perf_counter() - entered)
        else:
            self._signals.skip()
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else self.lr
        self._steps.append(self._count)
        self._losses.append(loss_value)
        self._grad_norms.append(gnorm)
        self._cosines.append(cos)
        self._update_norms.append(update)
        self._lrs.append(lr)
        if self.sharpness_every and self._count >= self._next_sharpness:
            started = time.perf_counter()
            self._sharpness.append((self._count, self._estimate_sharpness()))
            self._sharpness_costs.append(time.perf_counter() - started)
            self._next_sharpness = self._count + self._spaced(self.sharpness_every, self._auto_sharpness,
                                                              self._sharpness_costs, SHARPNESS_BUDGET)
        nonfinite = not math.isfinite(loss_value) and not self._nonfinite_reported
        result = None
        if nonfinite or (self._count >= self._next_check and len(self._losses) >= self.window):
            result = self._check(optimizer, force=nonfinite)
        self._left_at = time.perf_counter()
        return result

    def _spaced(self, every: int, auto: bool, costs: deque[float], budget: float) -> int:
        """``every``, stretched (when ``auto``) so the task's cost (its fastest recent run) stays
        under ``budget`` of the training time of the steps in between."""
        if not auto or not costs or not self._train_times:
            return every
        return max(every, math.ceil(min(costs) / (budget * max(min(self._train_times), 1e-9))))

    def _signal_stride(self) -> int:
        """Steps until the next signals: ``signals_every`` if given, else the fewest that keep
        their cost (fastest of the recent ones, so a stall of the machine does not count) under
        ``SIGNAL_BUDGET`` of the user's training step."""
        if self.signals_every is not None:
            return self.signals_every
        if not self._train_times or not self._update_costs:
            return 1
        allowed = SIGNAL_BUDGET * max(min(self._train_times), 1e-9)
        update = min(self._update_costs)
        if update <= allowed:
            return 1
        # A pair (copies at the step before, then the update) every `stride` steps.
        pair = update + (min(self._record_costs) if self._record_costs else update)
        return max(2, min(MAX_SIGNAL_STRIDE, math.ceil(pair / allowed)))

    # -- sharpness -----------------------------------------------------------------------------
    def _estimate_sharpness(self) -> float:
        """λ_max by a few power iterations on a fixed subset, warm-started from the last vector."""
        try:
            op = hessian(self.model, self.loss_fn, self._sharp_data)
        except ValueError:  # non-finite loss: no curvature to measure
            return math.nan
        v = self._power_vector
        if v is None or v.shape[0] != op.num_params:
            gen = torch.Generator(device="cpu").manual_seed(0)  # never the global RNG
            v = torch.randn(op.num_params, generator=gen, dtype=torch.float64).to(op.device)
        v = v / torch.linalg.vector_norm(v)
        lam = math.nan
        with preserved_rng():
            for _ in range(self.sharpness_iters):
                hv = (op @ v.to(op.dtype)).to(torch.float64)
                lam = float(v @ hv)
                norm = torch.linalg.vector_norm(hv)
                if not torch.isfinite(norm) or norm == 0:
                    break
                v = hv / norm
        self._power_vector = v
        return lam

    # -- stalls --------------------------------------------------------------------------------
    def _stall_window(self) -> int | None:
        """The number of recent steps over which the loss has stalled, or None when it has not.

        NaN/Inf, a growing loss or flipping gradients are read off the base window. A flat loss
        must be beyond doubt from the minibatch noise (:func:`stall_test`): a noisy window that
        leaves it open is widened (2x, 4x, ... up to ``MAX_STALL_WINDOWS`` times; the threshold
        is a drop rate, :func:`stall_threshold`), so a run that still falls under noise is not sent to the (costly)
        doctor on a random dip, and a noisy run that has stopped falling is still caught.
        """
        losses = self._losses
        recent = np.asarray(losses[-self.window:], dtype=np.float64)
        if not np.all(np.isfinite(recent)):
            return self.window
        _, growth, _, _ = _trend(recent, self.window)
        cos = np.asarray(self._cosines[-self.window:], dtype=np.float64)
        cos_mean = float(np.nanmean(cos)) if np.isfinite(cos).any() else 0.0
        if growth > DIVERGE_GROWTH or cos_mean < COS_TRIGGER:
            return self.window
        k = 1
        while k <= MAX_STALL_WINDOWS and k * self.window <= len(losses):
            stalled = stall_test(losses[-k * self.window:])
            if stalled is not None:
                return k * self.window if stalled else None
            k *= 2
        return None

    def _check(self, optimizer: torch.optim.Optimizer | None, force: bool = False) -> Diagnosis | None:
        started = time.perf_counter()
        window = self.window if force else self._stall_window()
        self._check_costs.append(time.perf_counter() - started)
        every = self._spaced(self.check_every, self._auto_check, self._check_costs, CHECK_BUDGET)
        self._next_check = self._count + every
        if window is None:
            self._backoff, self._last_cause = 1, None
            return None
        kwargs = dict(self.diagnose_kwargs)
        if optimizer is None and self.lr is not None:
            kwargs.setdefault("lr", self.lr)
        kwargs.setdefault("window", window)
        result = diagnose(self.model, self.loss_fn, self._doctor_data, history=self.record.window(window),
                          optimizer=optimizer, **kwargs)
        result = dataclasses.replace(result, step=self._count)
        if not math.isfinite(self._losses[-1]):
            self._nonfinite_reported = True
        # The same verdict again and again (or a false alarm): look less often (doubling, up to
        # MAX_BACKOFF), so a long stall or a noisy run stays cheap.
        self._backoff = min(self._backoff * 2, MAX_BACKOFF) if result.cause == self._last_cause else 1
        self._last_cause = result.cause
        self._next_check = self._count + every * self._backoff
        if result.cause == "progressing":
            return None
        self.diagnoses.append(result)
        logger.warning("step %d: %s", self._count, result)
        if self.callback is not None:
            self.callback(result)
        return result


@dataclass(frozen=True)
class MonitoredRun(ResultMixin):
    """A training run with the Monitor attached: what it recorded and every diagnosis it made."""

    steps: int
    final_loss: float
    record: MonitorRecord
    diagnoses: list[Diagnosis]

    _skip_in_dict = ("record",)

    def __str__(self) -> str:
        lines = [f"trained {self.steps} steps, last training loss {fmt(self.final_loss, 5)}; "
                 f"{len(self.diagnoses)} diagnoses"]
        lines += [str(d) for d in self.diagnoses]
        return "\n".join(lines)


def train_monitored(model: nn.Module, loss_fn: LossFn, data: Any, optimizer: torch.optim.Optimizer, *,
                    steps: int, monitor: Monitor | None = None, progress: Any = None) -> MonitoredRun:
    """Train ``model`` in place for ``steps`` optimizer steps, cycling over the batches of
    ``data``, with ``monitor`` (default: a new :class:`Monitor` on ``data``) attached. Stops early
    when the loss is NaN/Inf (after the monitor has diagnosed it)."""

    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}.")
    monitor = monitor or Monitor(model, loss_fn, data)
    device = next(model.parameters()).device
    done, last = 0, math.nan
    model.train()
    while done < steps:
        for inputs, targets in iter_batches(data):
            loss = training_step(model, loss_fn, optimizer, inputs, targets, device)
            monitor.step(loss, optimizer)
            done += 1
            last = monitor._losses[-1]  # already synced by the monitor
            if progress is not None:
                progress(done, steps)
            if done >= steps or not math.isfinite(last):
                break
        if not math.isfinite(last):
            break
    return MonitoredRun(steps=done, final_loss=last, record=monitor.record, diagnoses=list(monitor.diagnoses))
