"""Why did the loss stop going down? :func:`diagnose`: measure, decide, explain, try.

Examples:
    >>> import lossdoctor as ld
    >>> from lossdoctor.zoo import crawling_regression
    >>> model, loss_fn, data, opt, losses = crawling_regression(steps=80)  # lr 1e-4: crawls
    >>> d = ld.diagnose(model, loss_fn, data, history=losses, optimizer=opt)
    >>> d.cause
    'lr_too_small'
    >>> d.prescriptions[0].action["lr"] > 1e-4
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from torch import nn

from .._checks import (
    check_arguments,
    check_callable,
    check_choice,
    check_float,
    check_int,
    check_optimizer,
    check_progress,
    check_seed,
)
from .._results import ResultMixin, fmt
from ..analysis.layers import LayerCurvature, layer_curvature
from ..analysis.step_size import check_lr
from ..data import call_model, loss_name, place
from ..progress import Progress, as_callback, scaled, with_progress
from ..types import Cause, Data, History, Mode
from .candidates import Candidate, candidates
from .explain import CAUSE_TITLES, describe_action, evidence, layer_evidence, summary
from .measure import (
    BUDGET,
    CURVATURE_SAMPLES,
    SAMPLES,
    Measurements,
    dropout_off,
    escape_step,
    first_samples,
    measure,
)
from .prescriptions import Prescription
from .rules import CAUSES as RULE_CAUSES
from .rules import Decision, Evidence, decide, overturns_progress, slow_progress
from .trend import WINDOW, LossTrend, read_history
from .trials import TrainStep, TrialReport, run_trials, trial_optimizer

# Every value Diagnosis.cause takes: the rules' causes, and "undetermined" (interrupted before the
# measurements finished, or stalled with no measured cause standing out).
CAUSES = (*RULE_CAUSES, "undetermined")
"""Every value :attr:`Diagnosis.cause` takes: the rules' causes and ``"undetermined"``."""
TRIAL_BUDGET = 5.0
PER_LAYER_CAUSES = ("oscillation", "diverging", "ill_conditioned")
LAYER_STEPS = 5
MAX_TRIAL_STEPS = 240


@dataclass(frozen=True)
class Diagnosis(ResultMixin):
    """The doctor's verdict: the cause, the numbers behind it, and what to change, best first.

    Returned by :func:`diagnose`; the properties below read the measurements users reach for
    most (``None`` when they were not measured).

    Attributes:
        cause: one of :data:`CAUSES` (``"undetermined"`` when interrupted before the
            measurements were complete, or when the loss stalled and no measured cause stands
            out).
        summary: the verdict in one sentence.
        stalled: whether the loss has stopped going down (the trend's test).
        evidence: the comparisons and numbers behind the verdict, in words.
        prescriptions: what to change, as :class:`Prescription` objects, ranked by their
            measured trial when ``verified``; each has ``.text``, ``.action``, ``.trial`` and
            ``.apply(model, optimizer)``.
        decision: the comparisons that decided (the rules' output).
        measurements: every number measured.
        verified: whether the prescriptions were tried against continuing unchanged.
        trials: the trials' report (``None`` when not verified).
        cost: Hessian-vector products, full-data gradients, trial steps and seconds.
        interrupted: Ctrl-C: the measurements or trials did not finish; no confident verdict.
        step: the training step it was made at (set by the :class:`Monitor`).
        layers: per-block curvature, for causes where the lr's fit to each layer matters.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, opt, losses = crawling_regression(steps=80)  # the loss crawls
        >>> d = ld.diagnose(model, loss_fn, data, history=losses, optimizer=opt)
        >>> d.cause, d.verified
        ('lr_too_small', True)
        >>> d.lr, d.stability_threshold, round(d.max_stable_lr, 1)  # the stability edge: lr 0.7
        (0.0001, 2.0, 0.7)
        >>> d.top.action["lr"] > 1e-4
        True
    """

    cause: Cause
    summary: str
    stalled: bool
    evidence: tuple[str, ...]
    prescriptions: tuple[Prescription, ...]
    decision: Decision | None
    measurements: Measurements | None
    verified: bool
    trials: TrialReport | None
    cost: dict[str, float]
    interrupted: bool = False
    step: int | None = None  # the training step it was made at (set by the Monitor)
    layers: LayerCurvature | None = (
        None  # per-block curvature, for causes where the lr's fit matters
    )

    _skip_in_dict = ()

    # -- the numbers users reach for most ----------------------------------------------------
    @property
    def top(self) -> Prescription | None:
        """The best prescription (``None`` when there is none)."""
        return self.prescriptions[0] if self.prescriptions else None

    def _m(self, name: str) -> Any:
        return None if self.measurements is None else getattr(self.measurements, name)

    @property
    def loss(self) -> float | None:
        """The loss measured (on the samples measured), or ``None``."""
        return self._m("loss")

    @property
    def grad_norm(self) -> float | None:
        """The full gradient's norm on the samples measured, or ``None``."""
        return self._m("grad_norm")

    @property
    def sharpness(self) -> float | None:
        """λ_max, the Hessian's largest eigenvalue."""
        return self._m("lambda_max")

    @property
    def lr(self) -> float | None:
        """The learning rate read from the optimizer (or given), or ``None``."""
        return self._m("lr")

    @property
    def lr_sharpness(self) -> float | None:
        """S, the lr-scaled sharpness (``lr·λ_max`` for SGD), read against ``stability_threshold``."""
        return self._m("lr_sharpness")

    @property
    def stability_threshold(self) -> float | None:
        """The limit of S beyond which the optimizer's steps are unstable (2 for plain SGD)."""
        return self._m("threshold")

    @property
    def max_stable_lr(self) -> float | None:
        """The lr at which S would reach its stability limit: an edge, never the value to use."""
        m = self.measurements
        if (
            m is None
            or m.lr is None
            or not m.lr_sharpness
            or m.lr_sharpness <= 0
            or m.threshold is None
        ):
            return None
        return m.lr * m.threshold / m.lr_sharpness

    @property
    def grad_cosine(self) -> float | None:
        """Cosine between the gradient here and after one step of the optimizer (the probe)."""
        return self._m("probe_cosine")

    @property
    def efficiency(self) -> float | None:
        """Realized loss drop per step over the window / the first-order prediction."""
        return self._m("efficiency")

    @property
    def window(self) -> int | None:
        """The recent steps the trend was read from."""
        return None if self.measurements is None else self.measurements.trend.window

    @property
    def relative_drop(self) -> float | None:
        """The loss's relative drop over the window (medians of its first and last thirds)."""
        return None if self.measurements is None else self.measurements.trend.relative_drop

    def __str__(self) -> str:
        at = f" (step {self.step})" if self.step is not None else ""
        lines = [f"diagnosis{at}: {self.cause.replace('_', ' ')}: {self.summary}"]
        if self.interrupted:
            lines.append("INTERRUPTED: the measurements or trials did not finish; see evidence")
        lines.append("evidence:")
        lines += [f"  - {e}" for e in self.evidence]
        tried = " (ranked by their trials against continuing unchanged)" if self.verified else ""
        lines.append(f"prescriptions{tried}:")
        lines += [f"  {i + 1}. {p}" for i, p in enumerate(self.prescriptions)]
        if self.trials is not None:
            t = self.trials
            lines.append(
                f"trials: {t.candidates} candidates x {t.steps} steps ({t.trained} training steps, "
                f"{t.seconds:.2f} s); unchanged: {fmt(t.loss_before, 5)} -> {fmt(t.control_loss, 5)}"
            )
        return "\n".join(lines)


def _noise_cause(decision: Decision) -> bool:
    """A stall that sits on gradient noise (SGD's noise floor, or an adaptive optimizer's steps hovering on it)."""
    return decision.cause == "gradient_noise" or any(
        "gradient noise" in e.name for e in decision.evidence
    )


def _total_samples(data: Any) -> int | None:
    """How many samples ``data`` holds, where that is cheap to know (a list of batches, one pair, a DataLoader over a sized dataset); None otherwise."""
    from ..data import batch_size, is_single_batch

    try:
        if is_single_batch(data):
            return batch_size(data[1])
        if isinstance(data, (list, tuple)):
            return sum(
                batch_size(b[1])
                for b in data
                if isinstance(b, (list, tuple)) and len(b) >= 2 and isinstance(b[1], torch.Tensor)
            )
        dataset = getattr(data, "dataset", None)
        return len(dataset) if dataset is not None and hasattr(dataset, "__len__") else None
    except (TypeError, IndexError):
        return None


def _has_normalization(model: nn.Module) -> bool:
    norms = (
        nn.modules.batchnorm._BatchNorm,
        nn.LayerNorm,
        nn.GroupNorm,
        nn.modules.instancenorm._InstanceNorm,
    )
    return any(isinstance(m, norms) for m in model.modules()) or any(
        "RMSNorm" in type(m).__name__ for m in model.modules()
    )


@torch.no_grad()
def _probability_outputs(model: nn.Module, loss_fn: Any, batch: tuple) -> bool:
    """Outputs in [0, 1] (probabilities), or a squared-error loss on integer class targets."""
    name = loss_name(loss_fn).lower()
    x, y = batch
    if ("mse" in name or isinstance(loss_fn, nn.MSELoss)) and not y.is_floating_point():
        return True
    try:
        from ..model_state import preserved_model

        with preserved_model(model):
            model.eval()
            out = call_model(model, place(x, y, next(model.parameters()).device)[0])
    except Exception:  # noqa: BLE001 - a model that cannot run here simply gets no loss advice
        return False
    return (
        isinstance(out, torch.Tensor)
        and out.is_floating_point()
        and out.numel() > 0
        and bool((out.min() >= 0) & (out.max() <= 1))
    )


def _rank(
    items: list[tuple[Candidate, Prescription]], verified: bool, no_change: Prescription | None
) -> list[Prescription]:
    """Verified improvements first (lowest trial loss first).

    Then what could not be tried (code changes; without trials, everything in the rules' order);
    then, when nothing beat continuing unchanged, ``no_change``; then tried ones with no measurable
    gain. Tried ones that did worse than continuing unchanged, and the ones cut in the first round
    of the trials (measured, and behind), are dropped: a change that lost its trial is no advice."""
    if not verified:
        return [p for _, p in items]
    won = [(p.trial.loss, p) for _, p in items if p.trial is not None and p.trial.better]
    better = [p for _, p in sorted(won, key=lambda lp: lp[0])]
    code = [p for _, p in items if p.trial is None and not p.applicable]
    flat = [
        p
        for _, p in items
        if p.trial is not None and not p.trial.better and p.trial.finite and p.trial.gain >= 0
    ]
    return better + code + ([] if better or no_change is None else [no_change]) + flat


@with_progress("diagnosis")
def diagnose(  # noqa: C901 - measure, decide, explain, try: the documented steps in order
    model: nn.Module,
    loss_fn: Any,
    data: Data,
    *,
    history: History,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    window: int = WINDOW,
    mode: Mode | Literal["auto"] = "auto",
    verify: bool | str = "auto",
    trial_steps: int | str = "auto",
    train_step: TrainStep | None = None,
    eval_data: Any = None,
    checkpoint: dict[str, torch.Tensor] | None = None,
    samples: int | None = SAMPLES,
    curvature_samples: int | None = CURVATURE_SAMPLES,
    batch: int | None = None,
    budget: int = BUDGET,
    trial_budget: float = TRIAL_BUDGET,
    seed: int = 0,
    previous: str | None = None,
    progress: Progress | bool | str | None = "auto",
) -> Diagnosis:
    """Why did the loss stop going down? The cause, the evidence, and what to change, tried.

    Measures the loss, gradient, curvature and gradient noise where training stands; pure rules
    decide the cause; each applicable prescription is then tried for a few steps from an exact
    snapshot against continuing unchanged, and ranked by the loss it reaches.

    Args:
        model: the model where training stands now. Left exactly as it was.
        loss_fn: its loss, ``loss_fn(model(inputs), targets)``.
        data: its training data (a DataLoader, a list of ``(inputs, targets)`` batches, or one
            pair).
        history: the recent per-step training losses, oldest first (a list/array/tensor, a dict
            with ``losses`` and optionally ``grad_norms``/``grad_cosines``, ``monitor.record``).
        optimizer: the optimizer that produced the history; its lr, momentum, weight decay and
            (Adam, RMSprop, Adagrad) per-coordinate steps are measured, and trials continue it.
        lr: the learning rate when no optimizer is given (plain SGD is assumed), or an override.
        window: the recent steps the trend is read from (widened up to 8x while noise leaves
            the stall test open).
        mode: ``"auto"`` measures in the mode the model is in (train mode: BatchNorm on batch
            statistics; dropout switched off so the loss is deterministic), ``"train"``, ``"eval"``.
        verify: try every applicable prescription for ``trial_steps`` steps from an exact snapshot
            against continuing unchanged, and rank them by the loss they reach. ``"auto"``: when
            the run has stalled and an optimizer or lr is known.
        trial_steps: steps per trial (``"auto"``: the window, at least 20 and at most 200).
        train_step: ``train_step(model, optimizer, batch) -> loss`` for custom loops (AMP,
            gradient accumulation, HF models); default ``loss_fn(model(x), y).backward();
            optimizer.step()``.
        eval_data: batches the trials are ranked on (default: the measured subset of ``data``).
        checkpoint: a ``state_dict`` from before the loss went bad, for the restore prescription.
        samples: measure the loss, gradient and noise on the first this many samples of ``data``
            (None: all).
        curvature_samples: Hessian-vector products on the first this many of those.
        batch: the training batch size when ``data`` is one pair (for the gradient noise).
        budget: Hessian-vector products the measurements may use.
        trial_budget: the trials' cost cap in multiples of ``trial_steps`` training steps.
        seed: the seed of the measurements' random vectors and of the trials.
        previous: the last verdict on this run (the Monitor passes it): kept while its rule
            still holds with relaxed thresholds.
        progress: called as ``progress(done, total)``; ``"auto"`` (default) shows a bar on a
            terminal for long runs.

    Returns:
        A :class:`Diagnosis`: the cause, the evidence, and the prescriptions, best first. Ctrl-C
        returns what was finished, flagged ``interrupted``, never a confident verdict.

    Raises:
        ValueError: a bad history, option or learning rate.
        TypeError: an argument of the wrong type (a model that is not an ``nn.Module``...).

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, opt, losses = crawling_regression(steps=80)  # the loss crawls
        >>> d = ld.diagnose(model, loss_fn, data, history=losses, optimizer=opt)
        >>> d.cause
        'lr_too_small'
        >>> print(d.top.text)  # doctest: +ELLIPSIS
        set the learning rate to ...
    """
    started = time.perf_counter()
    hist = read_history(history)
    lr = check_lr(lr)
    check_arguments(model=model, loss_fn=loss_fn)
    if optimizer is not None:
        check_optimizer(optimizer)
    window = check_int(window, "window", minimum=4)
    check_choice(mode, "mode", ("auto", "train", "eval"))
    if verify not in (True, False, "auto"):
        raise ValueError(f"verify must be True, False or 'auto', got {verify!r}.")
    check_callable(
        train_step,
        "train_step",
        optional=True,
        hint="Pass a function called as train_step(model, optimizer, batch) returning the loss.",
    )
    if trial_steps != "auto":
        trial_steps = check_int(trial_steps, "trial_steps", minimum=2, hint="Or 'auto'.")
    samples = check_int(samples, "samples", minimum=1, optional=True)
    curvature_samples = check_int(curvature_samples, "curvature_samples", minimum=1, optional=True)
    batch = check_int(batch, "batch", minimum=1, optional=True)
    budget = check_int(budget, "budget", minimum=2)
    trial_budget = check_float(trial_budget, "trial_budget", minimum=1.0)
    seed = check_seed(seed)
    check_progress(progress)
    callback = as_callback(progress)
    if previous is not None:
        check_choice(previous, "previous", CAUSES)
    try:
        m = measure(
            model,
            loss_fn,
            data,
            hist,
            optimizer=optimizer,
            lr=lr,
            window=window,
            mode=mode,
            samples=samples,
            curvature_samples=curvature_samples,
            batch=batch,
            budget=budget,
            seed=seed,
            progress=scaled(callback, 0, 2 * budget),
        )
    except KeyboardInterrupt:
        return _undetermined(
            started,
            "interrupted while measuring: no verdict is drawn from an unfinished measurement",
        )
    decision = decide(m, previous=previous)
    batches = first_samples(data, samples, batch)
    trial_opt = trial_optimizer(model, optimizer, lr)

    def prescribe(
        decision: Decision,
    ) -> tuple[list[Prescription], TrialReport | None, bool, bool, LayerCurvature | None]:
        """Candidates for ``decision``, tried when asked (or stalled).

        (ranked, trials report, verified, interrupted, per-layer table)."""
        layers = None
        if decision.cause in PER_LAYER_CAUSES and m.lambda_max is not None and m.lr is not None:
            # Which block breaks stability, and can one lr fit them all? Within what is left of the budget.
            left = max(budget - m.hvps, 0)
            blocks = left // (LAYER_STEPS + 1)
            if blocks >= 2:
                try:
                    with dropout_off(model):
                        layers = layer_curvature(  # the loss as stepped on, like measure's
                            model,
                            loss_fn,
                            first_samples(batches, curvature_samples),
                            optimizer=optimizer,
                            lr=None if optimizer is not None else m.lr,
                            mode=m.mode,
                            probes=1,
                            lanczos_steps=LAYER_STEPS,
                            seed=seed,
                            max_blocks=blocks,
                        )
                except KeyboardInterrupt:
                    layers = None
        extra: dict[str, Any] = {
            "window": window,
            "checkpoint": checkpoint,
            "dead_rows": m.dead_rows,
            "has_normalization": _has_normalization(model),
            "layers": layers,
            "total_samples": _total_samples(data),
        }
        if batches:
            extra["probability_outputs"] = _probability_outputs(model, loss_fn, batches[0])
        if (
            decision.cause == "saddle_point"
            and m.escape_direction is not None
            and m.loss is not None
        ):
            extra["escape"] = escape_step(
                model,
                loss_fn,
                batches,
                m.mode,
                m.parameter_names,
                m.escape_direction,
                m.lambda_min or -1.0,
                m.loss,
            )
            if extra["escape"][1] == 0.0:
                extra["escape"] = None
        cands = candidates(m, decision, **extra)
        items = [
            (
                c,
                Prescription(
                    text=describe_action(
                        c.action, lr=m.lr, momentum=m.momentum, weight_decay=m.weight_decay
                    ),
                    action=c.action,
                    applicable=c.applicable,
                    reason=c.why,
                    payload=c.payload,
                ),
            )
            for c in cands
        ]
        run = verify is True or (verify == "auto" and decision.stalled)
        run = (
            run
            and trial_opt is not None
            and any(c.applicable and c.action and not c.action.get("stop") for c in cands)
        )
        report, interrupted = None, False
        if run and trial_opt is not None:  # run requires trial_opt; this tells the type checker
            # A lower lr pays off slowly at a noise floor (the loss relaxes to a lower level): longer trials.
            shortest = 2 * window if _noise_cause(decision) else window
            steps = (
                min(max(shortest, 20), MAX_TRIAL_STEPS)
                if trial_steps == "auto"
                else int(trial_steps)
            )
            tryable = [
                c if c.applicable and c.action else replace(c, applicable=False) for c in cands
            ]
            evals = first_samples(eval_data, samples) if eval_data is not None else batches
            try:
                for attempt in range(2):
                    trials, report = run_trials(
                        model,
                        loss_fn,
                        data,
                        trial_opt,
                        tryable,
                        steps=steps,
                        eval_batches=evals,
                        mode=m.mode,
                        train_step=train_step,
                        budget=trial_budget,
                        progress=scaled(callback, budget, 2 * budget),
                    )
                    # Adaptive length: when nothing separated from the control, try once more twice as long.
                    if (
                        report.interrupted
                        or attempt == 1
                        or any(t is not None and t.better for t in trials)
                        or trial_steps != "auto"
                        or 2 * steps > MAX_TRIAL_STEPS
                    ):
                        break
                    steps *= 2
            except KeyboardInterrupt:
                trials, interrupted = [None] * len(cands), True
            interrupted = interrupted or (report is not None and report.interrupted)
            items = [(c, replace(p, trial=t)) for (c, p), t in zip(items, trials)]
        no_change = None
        if run and not interrupted and decision.stalled and report is not None:
            no_change = Prescription(
                text=f"no change: nothing tried beat continuing unchanged over {report.steps} "
                "steps",
                action={},
            )
        ranked = _rank(items, run and not interrupted, no_change)
        if not ranked:
            ranked = [Prescription(text=describe_action({}), action={})]
        return ranked, report, bool(run and not interrupted), interrupted, layers

    ranked, report, verified, interrupted, layers = prescribe(decision)
    slow = slow_progress(m, decision)
    if slow is not None and verify is not False and trial_opt is not None and not interrupted:
        # Still falling, but slowly, and a measured cause holds: its remedies are tried; the verdict
        # changes only if one of them beats continuing unchanged beyond the control's own noise.
        tried = prescribe(slow)  # a hypothesis is a stalled decision: its remedies are tried
        gains = [p.trial.relative_gain for p in tried[0] if p.trial is not None and p.trial.better]
        if tried[2] and overturns_progress(gains):
            decision = slow
            ranked, report, verified, interrupted, layers = tried
        else:
            interrupted = tried[3]
    cost = {
        "hvps": m.hvps,
        "gradients": m.gradients,
        "trial_steps": 0 if report is None else report.trained,
        "seconds": time.perf_counter() - started,
    }
    if callback is not None:
        callback(2 * budget, 2 * budget)
    return Diagnosis(
        cause=decision.cause,
        summary=summary(decision, m),
        stalled=decision.stalled,
        evidence=evidence(decision, m) + layer_evidence(layers),
        prescriptions=tuple(ranked),
        decision=decision,
        measurements=m,
        verified=verified,
        trials=report,
        cost=cost,
        interrupted=interrupted,
        layers=layers,
    )


def _undetermined(started: float, why: str) -> Diagnosis:
    return Diagnosis(
        cause="undetermined",
        summary=why,
        stalled=False,
        evidence=(why,),
        prescriptions=(Prescription(text="run the diagnosis again to completion", action={}),),
        decision=None,
        measurements=None,
        verified=False,
        trials=None,
        cost={"seconds": time.perf_counter() - started},
        interrupted=True,
    )


__all__ = ["CAUSES", "CAUSE_TITLES", "Diagnosis", "Evidence", "LossTrend", "diagnose"]
