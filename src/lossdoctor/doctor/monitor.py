"""A one-line training monitor.

Cheap signals as it trains, the stall doctor when the loss stops going down, and (opt-in) the
doctor's verified prescription applied.

    monitor = lossdoctor.Monitor(model, loss_fn, train_data)
    for inputs, targets in loader:
        optimizer.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        optimizer.step()
        monitor.step(loss, optimizer)

Everything runs on a step-count cadence, so two identical runs get identical checks, verdicts and
actions:

* every step records the loss; on pairs of steps every ``signals_every`` steps (default 8) the
  gradient norm, the cosine between successive gradients and the update size are taken (one flat
  copy each, no extra forward or backward pass; NaN in between);
* every ``sharpness_every`` steps (default 2000; 0: never) a short Lanczos run (warm-started
  from the last top vector) on a small fixed subset estimates λ_max, paid from the doctor's budget below (an estimate the budget
  cannot yet pay for waits until it can);
* every ``check_every`` steps (default ``window // 2``) the recent losses are tested for a stall
  (stopped falling beyond doubt from minibatch noise, growing, NaN/Inf, or gradients flipping;
  a window the noise leaves open is widened up to 8x; a spike the loss is already coming back
  down from gets one check's grace);
* on a stall, :func:`lossdoctor.diagnose` runs within a cost budget counted in training-step
  equivalents (default ``doctor_share=0.04``: the doctor and the λ_max estimates together may
  spend 4% of the steps trained so far, where a gradient over k batches costs k steps and a Hessian-vector product 2.5 k); a
  stall the budget cannot yet pay for waits for the next check. The verdict is logged (logger
  ``lossdoctor.monitor``) and passed to ``callback``; the same verdict again backs the doctor off
  (doubling the wait, up to 16x), and a verdict only changes on new evidence (the previous one is
  kept while its rule holds with relaxed thresholds).

With ``treat=False`` (default) nothing the monitor does changes training: parameters, gradients,
modes, the optimizer and every RNG are as the training loop left them, so a monitored run is bit
for bit the run without it. With ``treat=True`` each diagnosis runs its trials
(``verify=True``), and the best verified prescription that applies in place (lr, momentum, weight
decay, schedule, clipping, saddle escape, restore, re-initialization) is applied and logged. It
acts only on a stall seen at two checks with no clear fall of the loss between them (a bump a
healthy run recovers from by itself is left alone), or at once on a NaN/Inf loss or a clear divergence; one
window later the monitor compares the loss with the window before, and undoes the change if it
made things worse. ``monitor.actions`` lists what it did.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from torch import nn

from .._checks import (
    check_bool,
    check_callable,
    check_float,
    check_int,
    check_loss_fn,
    check_module,
    check_optimizer,
)
from .._results import ResultMixin, fmt
from ..curvature.eigen import lanczos_extreme
from ..curvature.lanczos import apply64
from ..curvature.operator import stepped_hessian
from ..data import batch_size, forward, iter_batches, place
from ..model_state import model_device, preserved_model, preserved_rng, trainable_parameters
from ..training.loop import training_step
from ..training.step_signals import StepSignals
from ..types import Mode
from .diagnosis import Diagnosis, diagnose
from .measure import dropout_off, first_samples
from .prescriptions import Prescription, detach_hooks
from .trend import (
    DIVERGE_GROWTH,
    MIN_STEPS,
    WINDOW,
    growth,
    loss_trend,
    recovering,
    separated_growth,
    stall_test,
)
from .trials import TrainStep

logger = logging.getLogger("lossdoctor.monitor")

SHARPNESS_EVERY = 2000
SHARPNESS_ITERS = 4
SHARPNESS_SAMPLES = 128
SIGNALS_EVERY = 8
DOCTOR_SHARE = 0.04  # with the per-step signals (~1% on a 3 ms step), all in under 5%
DIAGNOSE_SAMPLES = 128
CURVATURE_SAMPLES = 64
MIN_HVPS = 8  # a diagnosis with fewer affordable Hessian-vector products waits
MAX_HVPS = 60
HVP_COST = 2.5  # one Hessian-vector product over a batch, in training steps
COS_TRIGGER = -0.5
MAX_BACKOFF = 16
MAX_STALL_WINDOWS = 8
# treat=True acts at the first check on growth whose last third's 25th percentile is this many
# times the first third's 75th (a divergence); any other stall waits for the next check to agree.
CLEAR_DIVERGENCE = 1.5
# budget_clock="wall": what a diagnosis costs beyond its counted passes (Python, dispatch) until
# one has been timed; about 10 ms on a CPU, taken high so the first one does not overshoot.
FIXED_DIAGNOSIS_SECONDS = 0.03
BudgetClock = Literal["steps", "wall"]


class StallCheck(NamedTuple):
    """What one of the Monitor's stall checks found."""

    window: int | None  # the recent steps the loss stalled over; None: not stalled
    falling: bool = False  # the stall test found the loss falling beyond doubt
    diverging: bool = False  # NaN/Inf, or growth far beyond the noise with its peak at the end


def _check_first_batch(model: nn.Module, loss_fn: Callable, batch: tuple) -> None:
    """The loss on the first batch, computed once when the monitor is built, so a wrong loss or wrong data fail now with a clear message, not thousands of steps later in the doctor."""
    with preserved_model(model):
        x, y = place(batch[0], batch[1], model_device(list(model.parameters())))
        _, loss = forward(model, loss_fn, x, y, 0)
        try:
            value = float(loss.detach())
        except (RuntimeError, NotImplementedError) as err:
            raise ValueError(
                f"the loss on the first batch cannot be read as a number ({err}); put the model and "
                "data on a real device (cpu or cuda)."
            ) from None
    if not math.isfinite(value) and all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        raise ValueError(
            f"the loss on the first batch of data is {value} although the parameters are finite: "
            "check the data for NaN/Inf inputs or targets."
        )


@dataclass(frozen=True)
class MonitorRecord(ResultMixin):
    """What the monitor saw, one entry per ``monitor.step`` (:attr:`Monitor.record`).

    Attributes:
        steps: the step numbers (1-based).
        losses: the training loss of each step.
        grad_norms: the gradient norm (NaN on steps the signals were not taken, see
            ``Monitor(signals_every=...)``).
        update_norms: the size of the update (NaN likewise).
        grad_cosines: the cosine between successive gradients (NaN likewise).
        lrs: the optimizer's lr at each step (``None`` without an optimizer or lr).
        sharpness: ``(step, λ_max estimate)`` pairs.

    Examples:
        >>> from lossdoctor import Monitor
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, _, _ = crawling_regression()
        >>> monitor = Monitor(model, loss_fn, data, sharpness_every=0)
        >>> for loss in (3.0, 2.0, 1.5):  # signals come on pairs of steps every 8: NaN here
        ...     _ = monitor.step(loss)
        >>> monitor.record.window(2)
        {'losses': [2.0, 1.5], 'grad_norms': [nan, nan], 'grad_cosines': [nan, nan]}
    """

    steps: list[int]
    losses: list[float]
    grad_norms: list[float]
    update_norms: list[float]
    grad_cosines: list[float]
    lrs: list[float | None]
    sharpness: list[tuple[int, float]]

    def window(self, n: int) -> dict[str, list[float]]:
        """The last ``n`` steps, as :func:`lossdoctor.diagnose` reads a history.

        Args:
            n: how many steps.

        Returns:
            ``{"losses": ..., "grad_norms": ..., "grad_cosines": ...}`` over the last ``n`` steps.
        """
        return {
            "losses": self.losses[-n:],
            "grad_norms": self.grad_norms[-n:],
            "grad_cosines": self.grad_cosines[-n:],
        }

    def __str__(self) -> str:
        if not self.steps:
            return "monitor: no steps recorded"
        norms = [g for g in self.grad_norms if math.isfinite(g)]
        last = (
            f"loss {fmt(self.losses[-1], 5)}, gradient norm {fmt(norms[-1] if norms else math.nan)}"
        )
        sharp = f", last sharpness {fmt(self.sharpness[-1][1], 4)}" if self.sharpness else ""
        return f"monitor: {len(self.steps)} steps, {last}{sharp}"


@dataclass(frozen=True)
class MonitorAction(ResultMixin):
    """What ``Monitor(treat=True)`` did at a step: the prescription applied, kept, or undone.

    Attributes:
        step: the training step.
        kind: ``"applied"``, ``"kept"`` (one window later the loss was better) or ``"undone"``
            (it was worse).
        prescription: the prescription.
        loss_before: the loss (median of the window) before it was applied.
        loss_after: the loss one window later (``"kept"`` and ``"undone"``).

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, (x, y), opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> monitor = ld.Monitor(model, loss_fn, (x, y), window=40, treat=True)
        >>> run = ld.train_monitored(model, loss_fn, [(x, y)], opt, steps=120, monitor=monitor)
        >>> [(a.step, a.kind) for a in run.actions]
        [(60, 'applied'), (100, 'kept')]
    """

    step: int
    kind: str  # "applied" | "undone" | "kept"
    prescription: Prescription
    loss_before: float
    loss_after: float | None = None

    def __str__(self) -> str:
        after = "" if self.loss_after is None else f" -> {fmt(self.loss_after, 5)}"
        return f"step {self.step}: {self.kind}: {self.prescription.text} (loss {fmt(self.loss_before, 5)}{after})"


class Monitor:
    """Watches a training loop: cheap signals every step, the doctor when the loss stalls.

    Call :meth:`step` after every ``optimizer.step()``; see the module docstring for the
    cadence, the doctor's cost cap and what ``treat=True`` does.

    Args:
        model: the model being trained.
        loss_fn: its loss, ``loss_fn(model(inputs), targets)``.
        data: the training data (or a fixed part of it) the doctor measures and runs its trials
            on.
        window: recent steps a stall is judged on.
        check_every: look for a stall every this many steps (default ``window // 2``).
        signals_every: take the gradient norm, cosine and update size on a pair of steps every
            this many steps (1: every step).
        sharpness_every: steps between running λ_max estimates (0: never).
        sharpness_samples: samples the λ_max estimate uses.
        sharpness_iters: Hessian-vector products per estimate (a warm-started Lanczos run).
        doctor_share: the cost cap of the doctor and the λ_max estimates together, a share of
            the training steps so far (in training-step equivalents; deterministic). ``None``: no
            cap.
        budget_clock: how ``doctor_share`` is counted. ``"steps"`` (default): counted passes,
            deterministic, but blind to a diagnosis's fixed cost (about 10 ms of Python and
            dispatch on a CPU), which dominates on sub-millisecond steps and on fast GPUs.
            ``"wall"``: the measured seconds of the diagnoses and λ_max estimates against the
            seconds spent training between the monitor's calls, so their real cost stays within
            the share on any step time; whether a diagnosis is affordable then depends on
            timing, so two identical runs may differ in when (not how) they are diagnosed.
            Neither counts the per-step signals and checks (about 15 µs a step on a CPU).
        diagnose_samples: the doctor measures on the first this many samples of ``data``.
        callback: called as ``callback(diagnosis)`` for every diagnosis that is not "progressing".
        lr: the learning rate, when ``step`` is called without the optimizer.
        treat: apply the best verified in-place prescription of each diagnosis (trials run), and
            undo it one window later if the loss got worse. It acts on a stall seen at two checks
            with no clear fall between them (at once on NaN/Inf or a clear divergence).
        train_step: ``train_step(model, optimizer, batch) -> loss`` for the trials (custom loops).
        checkpoint_every: keep a copy of the parameters every this many steps while the loss is
            finite, for the doctor's "restore" prescription (default: ``window`` with ``treat``,
            else never).
        diagnose_kwargs: passed on to :func:`lossdoctor.diagnose`.

    Attributes:
        diagnoses: every diagnosis made, oldest first.
        actions: what ``treat=True`` did (:class:`MonitorAction`).

    Raises:
        ValueError: a bad option.
        TypeError: an argument of the wrong type.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, (x, y), opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> monitor = ld.Monitor(model, loss_fn, (x, y), window=40, doctor_share=None)
        >>> for _ in range(60):
        ...     opt.zero_grad()
        ...     loss = loss_fn(model(x), y)
        ...     loss.backward()
        ...     opt.step()
        ...     _ = monitor.step(loss, opt)
        >>> monitor.steps, monitor.last_diagnosis.step, monitor.last_diagnosis.cause
        (60, 40, 'lr_too_small')
        >>> opt.param_groups[0]["lr"]  # treat=False: training is left exactly as it was
        0.0001
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable,
        data: Any,
        *,
        window: int = WINDOW,
        check_every: int | None = None,
        signals_every: int = SIGNALS_EVERY,
        sharpness_every: int = SHARPNESS_EVERY,
        sharpness_samples: int = SHARPNESS_SAMPLES,
        sharpness_iters: int = SHARPNESS_ITERS,
        doctor_share: float | None = DOCTOR_SHARE,
        diagnose_samples: int | None = DIAGNOSE_SAMPLES,
        callback: Callable[[Diagnosis], None] | None = None,
        lr: float | None = None,
        treat: bool = False,
        train_step: TrainStep | None = None,
        checkpoint_every: int | None = None,
        diagnose_kwargs: dict[str, Any] | None = None,
        budget_clock: BudgetClock = "steps",
    ) -> None:
        check_module(model)
        check_loss_fn(loss_fn)
        self.params = [p for _, p in trainable_parameters(model)]
        window = check_int(window, "window", minimum=4)
        signals_every = check_int(signals_every, "signals_every", minimum=1)
        sharpness_every = check_int(sharpness_every, "sharpness_every", minimum=0)
        sharpness_samples = check_int(sharpness_samples, "sharpness_samples", minimum=1)
        sharpness_iters = check_int(sharpness_iters, "sharpness_iters", minimum=1)
        check_every = check_int(check_every, "check_every", minimum=1, optional=True)
        checkpoint_every = check_int(checkpoint_every, "checkpoint_every", minimum=1, optional=True)
        diagnose_samples = check_int(diagnose_samples, "diagnose_samples", minimum=1, optional=True)
        doctor_share = check_float(
            doctor_share,
            "doctor_share",
            above=0.0,
            maximum=1.0,
            optional=True,
            hint="The doctor's cost cap is a share of training time in (0, 1]; None: no cap.",
        )
        check_callable(
            callback,
            "callback",
            optional=True,
            hint="Pass a function called as callback(diagnosis).",
        )
        check_callable(
            train_step,
            "train_step",
            optional=True,
            hint="Pass a function called as train_step(model, optimizer, batch) returning the loss.",
        )
        treat = check_bool(treat, "treat")
        lr = check_float(lr, "lr", above=0.0, optional=True)
        if budget_clock not in ("steps", "wall"):
            raise ValueError(
                f"budget_clock must be 'steps' (counted, deterministic) or 'wall' (measured "
                f"seconds), got {budget_clock!r}."
            )
        self.model, self.loss_fn, self.data = model, loss_fn, data
        # Drawn once, inside a saved RNG state: a shuffling DataLoader leaves the run as it was.
        self._doctor_data = first_samples(data, diagnose_samples)
        if not self._doctor_data:
            raise ValueError(
                "data yielded no batches: the monitor needs training data to diagnose on."
            )
        _check_first_batch(model, loss_fn, self._doctor_data[0])
        self._curvature_batches = len(first_samples(self._doctor_data, CURVATURE_SAMPLES))
        self._batch = batch_size(self._doctor_data[0][1])
        self._sharp_data = first_samples(data, sharpness_samples) if sharpness_every else None
        self.window = window
        self.check_every = check_every or max(1, window // 2)
        self.signals_every = signals_every
        self.sharpness_every, self.sharpness_iters = sharpness_every, sharpness_iters
        self.doctor_share = doctor_share
        self.diagnose_samples = diagnose_samples
        self.callback = callback
        self.lr = lr
        self.treat = treat
        self.train_step = train_step
        self.checkpoint_every = checkpoint_every or (window if treat else None)
        self.diagnose_kwargs = dict(diagnose_kwargs or {})
        self.diagnoses: list[Diagnosis] = []
        self.actions: list[MonitorAction] = []
        self.doctor_cost = 0.0  # training-step equivalents spent by the doctor
        self.deferred = 0  # stalls the budget could not yet pay for
        self.budget_clock = budget_clock
        self.doctor_seconds = 0.0  # measured seconds of the diagnoses and λ_max estimates
        # budget_clock="wall": the seconds between the monitor's calls (training).
        self.train_seconds = 0.0
        self._intervals = 0
        self._left_at: float | None = None
        self._fixed_seconds = FIXED_DIAGNOSIS_SECONDS
        self._fixed_timed: list[float] = []
        self._steps: list[int] = []
        self._losses: list[float] = []
        self._grad_norms: list[float] = []
        self._update_norms: list[float] = []
        self._cosines: list[float] = []
        self._lrs: list[float | None] = []
        self._sharpness: list[tuple[int, float]] = []
        self._signals = StepSignals(self.params)
        self._top_vector: torch.Tensor | None = None
        self._sharpness_due = False
        self._count = 0
        self._next_check = window
        self._next_doctor = 0
        self._backoff = 1
        self._last_cause: str | None = None
        self._nonfinite_reported = False
        self._spike_grace = False  # a recovering spike was let pass at the last check
        self._stall_seen = False  # a check found a stall since the loss last fell beyond doubt
        self._checkpoint: dict[str, torch.Tensor] | None = None
        self._probation: tuple[int, dict[str, Any], torch.optim.Optimizer, MonitorAction] | None = (
            None
        )
        self._rejected: set[str] = set()  # actions undone once are not applied again

    # -- the record ----------------------------------------------------------------------------
    @property
    def record(self) -> MonitorRecord:
        """A copy of what was recorded so far."""
        return MonitorRecord(
            steps=list(self._steps),
            losses=list(self._losses),
            grad_norms=list(self._grad_norms),
            update_norms=list(self._update_norms),
            grad_cosines=list(self._cosines),
            lrs=list(self._lrs),
            sharpness=list(self._sharpness),
        )

    @property
    def last_diagnosis(self) -> Diagnosis | None:
        """The latest diagnosis, or ``None``."""
        return self.diagnoses[-1] if self.diagnoses else None

    @property
    def steps(self) -> int:
        """Steps recorded so far."""
        return self._count

    @property
    def last_loss(self) -> float:
        """The latest step's loss (NaN before the first step)."""
        return self._losses[-1] if self._losses else math.nan

    # -- one training step ---------------------------------------------------------------------
    def step(self, loss: Any, optimizer: torch.optim.Optimizer | None = None) -> Diagnosis | None:
        """Record one step: call it after ``optimizer.step()``.

        Args:
            loss: the step's training loss (a scalar tensor or a float).
            optimizer: the optimizer (for the lr, the signals, the doctor and ``treat``).

        Returns:
            A new :class:`Diagnosis` if this step triggered one, else ``None``.

        Raises:
            ValueError: ``loss`` is not a scalar.
            TypeError: ``loss`` or ``optimizer`` of the wrong type.

        Examples:
            >>> import lossdoctor as ld
            >>> from lossdoctor.zoo import crawling_regression
            >>> model, loss_fn, (x, y), opt, _ = crawling_regression()  # lr 1e-4: far too small
            >>> monitor = ld.Monitor(model, loss_fn, (x, y), window=40, doctor_share=None)
            >>> found = []
            >>> for _ in range(60):
            ...     opt.zero_grad()
            ...     loss = loss_fn(model(x), y)
            ...     loss.backward()
            ...     opt.step()
            ...     diagnosis = monitor.step(loss, opt)
            ...     if diagnosis is not None:
            ...         found.append((monitor.steps, diagnosis.cause))
            >>> found
            [(40, 'lr_too_small')]
        """
        if self.budget_clock == "steps":
            return self._step(loss, optimizer)
        entered = time.perf_counter()
        if self._left_at is not None:
            self.train_seconds += entered - self._left_at
            self._intervals += 1
        try:
            return self._step(loss, optimizer)
        finally:
            self._left_at = time.perf_counter()

    def _step(self, loss: Any, optimizer: torch.optim.Optimizer | None) -> Diagnosis | None:
        if isinstance(loss, torch.Tensor):
            if loss.numel() != 1:
                raise ValueError(
                    f"monitor.step expects the scalar training loss, got shape {tuple(loss.shape)}."
                )
        elif not isinstance(loss, (int, float)) or isinstance(loss, bool):
            raise TypeError(
                f"monitor.step expects the loss (a tensor or a float), got {type(loss).__name__}."
            )
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
            )
        loss_value = loss.item() if isinstance(loss, torch.Tensor) else float(loss)
        self._count += 1
        gnorm = cos = update = math.nan
        phase = self._count % self.signals_every
        if self.signals_every == 1 or phase == 0:
            gnorm, cos, update = self._signals.update()
        elif phase == self.signals_every - 1:
            self._signals.record()
        else:
            self._signals.skip()
        lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else self.lr
        self._steps.append(self._count)
        self._losses.append(loss_value)
        self._grad_norms.append(gnorm)
        self._cosines.append(cos)
        self._update_norms.append(update)
        self._lrs.append(lr)
        if self.sharpness_every and self._count % self.sharpness_every == 0:
            self._sharpness_due = True
        if self._sharpness_due and self._can_pay(cost := self._sharpness_cost()):
            self._sharpness_due = False
            self.doctor_cost += cost
            started = time.perf_counter()
            self._sharpness.append((self._count, self._estimate_sharpness()))
            self.doctor_seconds += time.perf_counter() - started
        if (
            self.checkpoint_every
            and self._count % self.checkpoint_every == 0
            and math.isfinite(loss_value)
        ):
            self._keep_checkpoint()
        if self._probation is not None and self._count >= self._probation[0]:
            self._review(optimizer)
        nonfinite = not math.isfinite(loss_value) and not self._nonfinite_reported
        if nonfinite or (self._count >= self._next_check and len(self._losses) >= self.window):
            return self._check(optimizer, force=nonfinite)
        return None

    # -- sharpness -----------------------------------------------------------------------------
    def _estimate_sharpness(self) -> float:
        """λ_max from a few Lanczos steps on a fixed subset, warm-started from the last top vector.

        Of the network as it trains, as the doctor measures it: in the model's own mode
        (BatchNorm on batch statistics while it trains), dropout off so the loss is
        deterministic. The eval-mode default of ``hessian`` measured another network on
        BatchNorm models (running statistics), with a notice in the user's loop naming a
        ``mode=`` the monitor does not take."""
        mode: Mode = "train" if self.model.training else "eval"
        with dropout_off(self.model):
            try:
                op = stepped_hessian(self.model, self.loss_fn, self._sharp_data, mode)
            except ValueError:  # non-finite loss: no curvature to measure
                return math.nan
            return self._top_ritz_value(op)

    def _top_ritz_value(self, op: Any) -> float:
        """The top Ritz value of a short Lanczos run warm-started from the last top vector.

        A lower bound on λ_max (a Rayleigh quotient), where plain power iterations converge to
        the eigenvalue of largest magnitude: a negative one at a saddle, recorded as λ_max."""
        v = self._top_vector
        if v is None or v.shape[0] != op.num_params:
            gen = torch.Generator(device="cpu").manual_seed(0)  # never the global RNG
            v = torch.randn(op.num_params, generator=gen, dtype=torch.float64).to(op.device)
        # A bound by design, not a converged pair: no warning inside the user's training loop.
        with preserved_rng(), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            result = lanczos_extreme(
                lambda x: apply64(op, x),
                op.num_params,
                k=1,
                which="largest",
                tol=1e-3,
                seed=0,
                max_matvecs=self.sharpness_iters,
                device=op.device,
                start=v.reshape(-1, 1),
            )
        if not len(result.eigenvalues) or not math.isfinite(float(result.eigenvalues[0])):
            return math.nan
        self._top_vector = result.eigenvectors[:, 0].to(torch.float64)
        return float(result.eigenvalues[0])

    def _keep_checkpoint(self) -> None:
        recent = np.asarray(self._losses[-self.window :], dtype=np.float64)
        finite = recent[np.isfinite(recent)]
        if (
            finite.size < MIN_STEPS
            or growth(finite) > DIVERGE_GROWTH
            or not all(bool(torch.isfinite(p).all()) for p in self.params)
        ):
            return
        self._checkpoint = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    # -- stalls --------------------------------------------------------------------------------
    def _stall_check(self) -> StallCheck:
        """Whether the loss has stalled, and over how many recent steps (NaN/Inf, a growing loss or flipping gradients on the base window; a flat loss beyond doubt from the noise, widening a window the noise leaves open up to 8x)."""
        losses = self._losses
        recent = np.asarray(losses[-self.window :], dtype=np.float64)
        if not np.all(np.isfinite(recent)):
            return StallCheck(self.window, diverging=True)
        # The cheap statistics only (no LossTrend): this runs every check inside the training loop.
        cos = np.asarray(self._cosines[-self.window :], dtype=np.float64)
        cos = cos[np.isfinite(cos)]
        cos_mean = float(cos.mean()) if cos.size else 0.0
        separated = separated_growth(recent)
        grown = growth(recent) > DIVERGE_GROWTH and separated > 1
        spike = grown and recovering(recent)
        diverging = grown and separated > CLEAR_DIVERGENCE and not spike
        if cos_mean < COS_TRIGGER:
            return StallCheck(self.window, diverging=diverging)
        if grown:
            # A spike the loss is already leaving gets one check's grace: acted on only if the
            # next check still sees the loss grown (a divergence keeps its peak at the end).
            if spike and not self._spike_grace:
                self._spike_grace = True
                return StallCheck(None)
            self._spike_grace = False
            return StallCheck(self.window, diverging=diverging)
        self._spike_grace = False
        k = 1
        while k <= MAX_STALL_WINDOWS and k * self.window <= len(losses):
            stalled = stall_test(losses[-k * self.window :])
            if stalled is not None:
                return StallCheck(k * self.window) if stalled else StallCheck(None, falling=True)
            k *= 2
        return StallCheck(None)

    def _sharpness_cost(self) -> float:
        """A λ_max estimate's cost in training-step equivalents.

        The operator's validation pass and its reduction check over the subset's batches, then the
        Lanczos products.
        """
        return len(self._sharp_data or ()) * (2.0 + HVP_COST * self.sharpness_iters)

    def _bank(self) -> float:
        """What the budget holds now, in training-step equivalents (``inf`` without a cap).

        With ``budget_clock="wall"``: the measured seconds left (the share of the training
        seconds less what the doctor spent, a diagnosis's fixed cost set aside) in units of the
        mean training step."""
        if self.doctor_share is None:
            return math.inf
        if self.budget_clock == "steps":
            return self.doctor_share * self._count - self.doctor_cost
        if self._intervals == 0 or self.train_seconds <= 0.0:
            return 0.0
        step_seconds = self.train_seconds / self._intervals
        left = self.doctor_share * self.train_seconds - self.doctor_seconds - self._fixed_seconds
        return left / step_seconds

    def _can_pay(self, cost: float) -> bool:
        return self._bank() >= cost

    def _affordable_hvps(self) -> int | None:
        """Hessian-vector products the doctor's budget can pay for now (None: no cap)."""
        if self.doctor_share is None:
            return None
        # the operator's validation pass, the gradient pass, the probe
        fixed = len(self._doctor_data) * 3.0
        return int(max(0.0, self._bank() - fixed) // (HVP_COST * self._curvature_batches))

    def _charge(self, d: Diagnosis, seconds: float) -> None:
        """What a diagnosis cost, in training-step equivalents.

        a pass over a batch is a step, a Hessian-vector product over a batch 2.5 steps, each trial
        step a step. With ``budget_clock="wall"`` the diagnosis's measured ``seconds`` beyond that
        count is a sample of the fixed cost; the next one is expected to need their median."""
        counted = len(self._doctor_data) * (1 + d.cost.get("gradients", 0))
        counted += HVP_COST * self._curvature_batches * d.cost.get("hvps", 0)
        counted += d.cost.get("trial_steps", 0)
        self.doctor_cost += counted
        if self.budget_clock == "wall" and self._intervals:
            step_seconds = self.train_seconds / self._intervals
            self._fixed_timed.append(max(0.0, seconds - counted * step_seconds))
            self._fixed_seconds = float(np.median(self._fixed_timed))

    def _check(
        self, optimizer: torch.optim.Optimizer | None, force: bool = False
    ) -> Diagnosis | None:
        check = StallCheck(self.window, diverging=True) if force else self._stall_check()
        window = check.window
        self._next_check = self._count + self.check_every
        if window is None:
            self._backoff, self._last_cause, self._next_doctor = 1, None, 0
            # Only a loss falling beyond doubt clears a stall seen before (noise leaves checks open).
            self._stall_seen = self._stall_seen and not check.falling
            return None
        # treat=True changes training only on a stall seen at two checks with no clear fall between
        # (a bump a healthy run recovers from is not treated), or at once on NaN/Inf or a clear
        # divergence.
        first_sighting = self.treat and not self._stall_seen and not check.diverging
        self._stall_seen = True
        if first_sighting:
            return None
        if self._count < self._next_doctor and not force:
            return None
        hvps = None if force or self.treat else self._affordable_hvps()
        if hvps is not None and hvps < MIN_HVPS:
            self.deferred += 1
            return None
        kwargs = dict(self.diagnose_kwargs)
        if optimizer is None and self.lr is not None:
            kwargs.setdefault("lr", self.lr)
        kwargs.setdefault("window", window)
        kwargs.setdefault("verify", self.treat)
        kwargs.setdefault("progress", None)  # inside a training loop: no bar, the verdict is logged
        kwargs.setdefault("samples", self.diagnose_samples)
        kwargs.setdefault("curvature_samples", CURVATURE_SAMPLES)
        if hvps is not None:
            kwargs.setdefault("budget", max(2, min(MAX_HVPS, hvps)))
        if self.train_step is not None:
            kwargs.setdefault("train_step", self.train_step)
        if self._checkpoint is not None:
            kwargs.setdefault("checkpoint", self._checkpoint)
        started = time.perf_counter()
        result = diagnose(
            self.model,
            self.loss_fn,
            self.data,
            history=self.record.window(window),
            optimizer=optimizer,
            previous=self._last_cause,
            **kwargs,
        )
        result = dataclasses.replace(result, step=self._count)
        seconds = time.perf_counter() - started
        self.doctor_seconds += seconds
        self._charge(result, seconds)
        if not math.isfinite(self._losses[-1]):
            self._nonfinite_reported = True
        # The same verdict again: wait longer before the next diagnosis (doubling, up to 16x).
        self._backoff = (
            min(self._backoff * 2, MAX_BACKOFF) if result.cause == self._last_cause else 1
        )
        self._last_cause = result.cause
        self._next_doctor = self._count + self.window * self._backoff
        if result.cause == "progressing":
            return None
        self.diagnoses.append(result)
        logger.warning("step %d: %s", self._count, result)
        if self.callback is not None:
            self.callback(result)
        if self.treat and optimizer is not None:
            self._treat(result, optimizer)
        return result

    # -- treatment -------------------------------------------------------------------------------
    def _treat(self, d: Diagnosis, optimizer: torch.optim.Optimizer) -> None:
        """Apply the best verified prescription that changes things in place (an optimizer switch needs your loop to use the new optimizer: it is logged as advice, not applied)."""
        if self._probation is not None:
            return
        chosen = next(
            (
                p
                for p in d.prescriptions
                if p.trial is not None
                and p.trial.better
                and p.applicable
                and "optimizer" not in p.action
                and repr(p.action) not in self._rejected
            ),
            None,
        )
        if chosen is None:
            return
        saved = {
            "model": {k: v.detach().clone() for k, v in self.model.state_dict().items()},
            "optimizer": copy.deepcopy(optimizer.state_dict()),
        }
        before = float(np.median(self._losses[-max(3, self.window // 3) :]))
        returned = chosen.apply(self.model, optimizer)
        if returned is not optimizer:  # pragma: no cover - switches are excluded above
            return
        action = MonitorAction(self._count, "applied", chosen, before)
        self.actions.append(action)
        logger.warning("step %d: applied %s", self._count, chosen.text)
        self._probation = (self._count + self.window, saved, optimizer, action)

    def _review(self, optimizer: torch.optim.Optimizer | None) -> None:
        """One window after a treatment: undo it if the loss is worse than before beyond noise."""
        if self._probation is None:
            return
        _, saved, treated, action = self._probation
        self._probation = None
        after = float(np.median(self._losses[-max(3, self.window // 3) :]))
        noise = loss_trend(self._losses, self.window).noise
        worse = not math.isfinite(after) or after > action.loss_before + max(
            2 * noise, 0.01 * abs(action.loss_before)
        )
        if worse and treated is optimizer:
            detach_hooks(treated)
            self.model.load_state_dict(saved["model"])
            treated.load_state_dict(saved["optimizer"])
            self.actions.append(
                MonitorAction(self._count, "undone", action.prescription, action.loss_before, after)
            )
            self._rejected.add(repr(action.prescription.action))
            logger.warning(
                "step %d: undid %s (loss %s -> %s)",
                self._count,
                action.prescription.text,
                fmt(action.loss_before, 5),
                fmt(after, 5),
            )
        else:
            self.actions.append(
                MonitorAction(self._count, "kept", action.prescription, action.loss_before, after)
            )


@dataclass(frozen=True)
class MonitoredRun(ResultMixin):
    """A training run with the Monitor attached: what it recorded, every diagnosis, every action.

    Returned by :func:`train_monitored`.

    Attributes:
        steps: optimizer steps trained.
        final_loss: the last step's training loss.
        record: what the monitor recorded (not in ``to_dict``).
        diagnoses: every diagnosis.
        actions: what ``treat=True`` did.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, (x, y), opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> watch = ld.Monitor(model, loss_fn, (x, y), window=40, doctor_share=None)  # no cap
        >>> run = ld.train_monitored(model, loss_fn, [(x, y)], opt, steps=80, monitor=watch)
        >>> run.steps, [(d.step, d.cause) for d in run.diagnoses], opt.param_groups[0]["lr"]
        (80, [(40, 'lr_too_small'), (80, 'lr_too_small')], 0.0001)
    """

    steps: int
    final_loss: float
    record: MonitorRecord
    diagnoses: list[Diagnosis]
    actions: list[MonitorAction]

    _skip_in_dict = ("record",)

    def __str__(self) -> str:
        lines = [
            f"trained {self.steps} steps, last training loss {fmt(self.final_loss, 5)}; "
            f"{len(self.diagnoses)} diagnoses, {len(self.actions)} actions"
        ]
        lines += [str(d) for d in self.diagnoses]
        lines += [str(a) for a in self.actions]
        return "\n".join(lines)


def train_monitored(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    monitor: Monitor | None = None,
    progress: Any = None,
) -> MonitoredRun:
    """Train ``model`` in place for ``steps`` optimizer steps with a :class:`Monitor` attached.

    Cycles over the batches of ``data``; stops early when the loss is NaN/Inf (after the
    monitor has diagnosed it).

    Args:
        model: the model to train (in place, in train mode).
        loss_fn: its loss, ``loss_fn(model(inputs), targets)``.
        data: a DataLoader or a list of batches.
        optimizer: the optimizer.
        steps: optimizer steps to train.
        monitor: the monitor (default: a new :class:`Monitor` on ``data``).
        progress: called as ``progress(done, steps)``, or ``None``.

    Returns:
        What the monitor recorded, every diagnosis and every action.

    Raises:
        TypeError: ``monitor`` is not a :class:`Monitor`, or a bad optimizer.
        ValueError: ``steps`` below 1.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, (x, y), opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> monitor = ld.Monitor(model, loss_fn, (x, y), window=40, treat=True)
        >>> run = ld.train_monitored(model, loss_fn, [(x, y)], opt, steps=80, monitor=monitor)
        >>> [str(a) for a in run.actions][0]  # the doctor's verified prescription, applied
        'step 60: applied: set the learning rate to 0.368 (3.68e+03x the current lr) (loss 1.0176)'
    """
    steps = check_int(steps, "steps", minimum=1)
    check_optimizer(optimizer)
    if monitor is not None and not isinstance(monitor, Monitor):
        raise TypeError(
            f"monitor must be a lossdoctor.Monitor (or None), got {type(monitor).__name__}."
        )
    monitor = monitor or Monitor(model, loss_fn, data)
    device = next(model.parameters()).device
    done, last = 0, math.nan
    model.train()
    while done < steps:
        for inputs, targets in iter_batches(data):
            loss = training_step(model, loss_fn, optimizer, inputs, targets, device)
            monitor.step(loss, optimizer)
            done += 1
            last = monitor.last_loss
            if progress is not None:
                progress(done, steps)
            if done >= steps or not math.isfinite(last):
                break
        if not math.isfinite(last):
            break
    return MonitoredRun(
        steps=done,
        final_loss=last,
        record=monitor.record,
        diagnoses=list(monitor.diagnoses),
        actions=list(monitor.actions),
    )
