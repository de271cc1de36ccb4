"""Escaping a saddle point.

Along the Hessian's negative-curvature eigenvector, and the cheap alternatives (perturbed gradient
descent, momentum) compared on the same saddle.

For an eigenvector u with eigenvalue λ < 0, L(θ' + ηu) ≈ L(θ') + η gᵀu + ½λη², so a step along
±u lowers the loss even where the gradient g is zero; the lecture's point is that the update
direction then comes from the Hessian itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_arguments,
    check_bool,
    check_choice,
    check_float,
    check_int,
    check_progress,
    check_seed,
    describe,
)
from .._results import ResultMixin, fmt
from ..curvature import hessian
from ..curvature.operator import HessianOperator, LossFn, loss_reduction
from ..data import iter_batches
from ..evaluation import mean_loss
from ..model_state import evaluation_mode, load_flat, preserved_model, preserved_rng
from ..progress import Progress, scaled
from ..types import Mode, Reduction
from .critical import CriticalPoint, classify_critical_point

PROBE_OCTAVES = range(3, 10)  # short probe steps eta0 * 2**-j, both signs (quadratic-model check)
MAX_HALVINGS = 40
MAX_DOUBLINGS = 60
REFINE_ITERS = 30  # golden-section iterations around the best point


@dataclass(frozen=True)
class EscapeResult(ResultMixin):
    """One step θ' + sign·step·u along the most negative-curvature eigenvector u (:func:`escape_saddle`).

    Attributes:
        escaped: whether a step lowered the loss.
        applied: whether the model now holds the escaped parameters (only with ``apply=True``).
        loss_before: the loss at the saddle.
        loss_after: the loss after the step.
        actual_change: ``loss_after - loss_before``.
        predicted_change: the second-order prediction ½·λ·step².
        first_order_change: the gradient term sign·step·gᵀu (zero at an exact critical point).
        eigenvalue: λ, the most negative eigenvalue.
        step: the step length chosen by the line search.
        sign: +1 or -1: which way along u.
        line_search_steps: every (signed) step the search evaluated.
        line_search_losses: the loss at each.
        loss_evaluations: full-data loss evaluations spent.
        matvecs: Hessian-vector products spent.
        critical: the classification of the starting point (``None`` only when interrupted
            before it finished).
        message: why there was no escape, or what was done.
        direction: the unit eigenvector u (flat).
        interrupted: Ctrl-C: no step taken, the model untouched.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()  # L = 1 at the saddle (0, 0), 0 on the valley w1*w2 = 1
        >>> e = ld.escape_saddle(p.model, p.loss_fn, p.train_data)
        >>> e.escaped, e.eigenvalue, round(e.loss_after, 6), round(e.step, 4)
        (True, -2.0, 0.0, 1.4142)
    """

    escaped: bool
    applied: bool
    loss_before: float
    loss_after: float
    actual_change: float
    predicted_change: float
    first_order_change: float
    eigenvalue: float
    step: float
    sign: int
    line_search_steps: np.ndarray
    line_search_losses: np.ndarray
    loss_evaluations: int
    matvecs: int
    critical: CriticalPoint | None  # None only when interrupted before the classification finished
    message: str
    direction: torch.Tensor | None = None
    interrupted: bool = False  # Ctrl-C: no step taken, the model untouched

    _skip_in_dict = ("direction",)

    def __str__(self) -> str:
        if not self.escaped:
            return f"no escape: {self.message}"
        return (
            f"escape step along the eigenvector of λ = {fmt(self.eigenvalue, 6)}: step {self.sign:+d} x "
            f"{fmt(self.step)}; loss {fmt(self.loss_before, 6)} -> {fmt(self.loss_after, 6)} (change "
            f"{fmt(self.actual_change)}; second-order prediction ½λη² = {fmt(self.predicted_change)}, "
            f"first-order term {fmt(self.first_order_change)}); {self.loss_evaluations} loss evaluations "
            f"and {self.matvecs} Hessian-vector products; "
            + ("applied to the model." if self.applied else "model unchanged (apply=False).")
        )


@dataclass(frozen=True)
class MethodTrace(ResultMixin):
    """One escape method run from the same saddle: the loss after every step and its cost.

    Attributes:
        name: the method (``"gradient descent"``, ``"momentum"``, ``"perturbed GD"``, ...).
        losses: the loss before the first step and after every step.
        gradients: full-data gradients spent.
        matvecs: Hessian-vector products spent.
        loss_evaluations: full-data loss evaluations spent (the eigenvector step's line search).
        kicks: random kicks taken (perturbed methods).
        escaped_at: the first step whose loss dropped by the comparison's ``escape_drop``, or
            ``None``.
        path: the flat parameters at every step (when recorded).
        interrupted: Ctrl-C: the steps taken so far.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle(0.1, 0.2)
        >>> run = ld.gradient_descent_path(p.model, p.loss_fn, p.train_data, steps=5, lr=0.1)
        >>> run.name, round(run.final_loss, 4), run.gradients
        ('gradient descent', 0.7608, 6)
    """

    name: str
    losses: list[float]
    gradients: int
    matvecs: int
    loss_evaluations: int
    kicks: int
    escaped_at: int | None
    path: list[list[float]] = field(default_factory=list)
    interrupted: bool = False  # Ctrl-C: the steps taken so far

    @property
    def final_loss(self) -> float:
        """The loss after the last step."""
        return self.losses[-1]


@dataclass(frozen=True)
class SaddleEscapeComparison(ResultMixin):
    """Escape methods compared from the same saddle (:func:`compare_saddle_escapes`).

    Every method gets ``steps`` updates at learning rate ``lr`` from the same point; a method's
    ``escaped_at`` is the first step whose loss is at least ``escape_drop`` below the start.

    Attributes:
        loss_start: the loss at the saddle.
        steps: updates per method.
        lr: the learning rate.
        momentum: the heavy-ball coefficient of the momentum methods.
        kick_radius: the radius of the perturbed methods' random kicks.
        kick_threshold: the gradient norm at or below which a kick may come.
        escape_drop: the loss drop that counts as an escape.
        seed: the seed of the kicks.
        methods: one :class:`MethodTrace` per method.
        escape: the eigenvector step (:class:`EscapeResult`) the last method started with.
        interrupted: Ctrl-C: the methods finished (the one in progress is flagged).

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()
        >>> cmp = ld.compare_saddle_escapes(p.model, p.loss_fn, p.train_data, steps=20)
        >>> {m.name: m.escaped_at for m in cmp.methods}
        {'gradient descent': None, 'momentum': None, 'perturbed GD': 19, 'momentum + kicks': 12, 'eigenvector step + GD': 1}
    """

    loss_start: float
    steps: int
    lr: float
    momentum: float
    kick_radius: float
    kick_threshold: float
    escape_drop: float
    seed: int
    methods: list[MethodTrace]
    escape: EscapeResult
    interrupted: bool = False  # Ctrl-C: the methods finished (the one in progress is flagged)

    def __str__(self) -> str:
        lines = [
            f"saddle escape from loss {fmt(self.loss_start, 6)}: {self.steps} steps, lr {fmt(self.lr)}, "
            f"kick radius {fmt(self.kick_radius)} below gradient norm {fmt(self.kick_threshold)}, "
            f"escaped = loss {fmt(self.escape_drop)} below the start, seed {self.seed}",
            f"{'method':<26} {'final loss':>12} {'escaped at':>10} {'gradients':>9} {'HVPs':>6} "
            f"{'loss evals':>10} {'kicks':>5}",
        ]
        for m in self.methods:
            lines.append(
                f"{m.name:<26} {fmt(m.final_loss, 6):>12} "
                f"{'never' if m.escaped_at is None else m.escaped_at:>10} {m.gradients:>9} "
                f"{m.matvecs:>6} {m.loss_evaluations:>10} {m.kicks:>5}"
                + ("  (interrupted)" if m.interrupted else "")
            )
        if self.interrupted:
            lines.append(f"INTERRUPTED: {len(self.methods)} methods run")
        return "\n".join(lines)


# -- moving the parameters -------------------------------------------------------------------
def _set_parameters(op: HessianOperator, vector: torch.Tensor) -> None:
    load_flat(op.params, vector)


def _names(names: Any, limit: int = 4) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _mean_loss(op: HessianOperator) -> float:
    """The mean loss over all of the operator's data at the model's current parameters (forward only)."""
    weighted_sum = getattr(op, "reduction", loss_reduction(op.loss_fn)) == "sum"
    with preserved_rng(), evaluation_mode(op.model, op.mode):
        return mean_loss(
            op.model, op.loss_fn, iter_batches(op.data), op.device, summed=weighted_sum
        )


def _line_search(
    loss_at: Callable[[float], float], eta0: float, loss0: float
) -> tuple[float, float, list[tuple[float, float]]]:
    """Minimise ``loss_at(t)`` over signed steps t.

    On each sign: halve from ``eta0`` until the loss is below ``loss0``, then double while it keeps
    falling (so the scale of ``eta0`` need not be right); then golden-section refinement in the
    bracket around the best point. A few short probe steps record how well the quadratic model
    predicts small steps."""
    tried = [
        (s * eta0 * 2.0**-j, loss_at(s * eta0 * 2.0**-j)) for s in (1, -1) for j in PROBE_OCTAVES
    ]
    for sign in (1, -1):
        t, f = eta0, loss_at(sign * eta0)
        tried.append((sign * t, f))
        for _ in range(MAX_HALVINGS):
            if f < loss0:
                break
            t /= 2
            f = loss_at(sign * t)
            tried.append((sign * t, f))
        for _ in range(MAX_DOUBLINGS):
            f2 = loss_at(sign * 2 * t)
            tried.append((sign * 2 * t, f2))
            if not f2 < f:
                break
            t, f = 2 * t, f2
    best_t, best_loss = min(tried, key=lambda item: item[1])
    same_side = sorted({t for t, _ in tried if t * best_t > 0} | {0.0})
    i = same_side.index(best_t)
    lo = same_side[i - 1] if i > 0 else best_t
    hi = same_side[i + 1] if i + 1 < len(same_side) else best_t
    a, b = min(lo, hi), max(lo, hi)
    golden = (math.sqrt(5) - 1) / 2
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = loss_at(c), loss_at(d)
    tried += [(c, fc), (d, fd)]
    for _ in range(REFINE_ITERS):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = loss_at(c)
            tried.append((c, fc))
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = loss_at(d)
            tried.append((d, fd))
    best_t, best_loss = min(tried, key=lambda item: item[1])
    return best_t, best_loss, tried


def _reference_step(loss: float, eigenvalue: float) -> float:
    """The step at which the quadratic model ½λη² would have removed the whole loss (at least a tiny positive length): where the line search starts."""
    return math.sqrt(2.0 * max(abs(loss), 1e-12) / abs(eigenvalue))


def escape_saddle(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    apply: bool = False,
    critical: CriticalPoint | None = None,
    mode: Mode = "eval",
    progress: Progress | None = None,
    reduction: Reduction | None = None,
    params: Any = None,
    **classify_options: Any,
) -> EscapeResult:
    """Step out of a saddle along the eigenvector of the Hessian's most negative eigenvalue.

    Both signs are tried, with a line search on the step length; the loss before and after is
    reported with the second-order prediction ½·λ·η² beside the actual change.

    Args:
        model: any ``nn.Module``, at (or near) a saddle point.
        loss_fn: the loss, as for :func:`lossdoctor.hessian`.
        data: a DataLoader, a list of batches or one batch, as for :func:`lossdoctor.hessian`.
        apply: write the escaped parameters into ``model``; otherwise the model is left exactly
            as it was (the search runs inside :func:`lossdoctor.model_state.preserved_model`).
        critical: a :class:`CriticalPoint` from :func:`classify_critical_point` at the model's
            current parameters, to reuse instead of recomputing it.
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` combines a batch's samples, for a
            loss function without a ``.reduction`` attribute (see :func:`lossdoctor.hessian`);
            the line search measures the same mean per-sample loss.
        params: escape in the subspace of these parameters only (tensors, names or glob
            patterns, modules; see :func:`lossdoctor.hessian`), the others held fixed;
            ``requires_grad`` is not touched. A given ``critical`` must be of the same subset.
        mode: ``"eval"`` (default) or ``"train"``.
        progress: called as ``progress(done, total)``, or ``None``.
        **classify_options: passed to :func:`classify_critical_point` (``k``, ``dense``,
            ``eig_tol``...).

    Returns:
        The step taken, with the loss before and after and the prediction; ``escaped=False``
        (and the model untouched) when there is no direction of negative curvature or no step
        lowers the loss.

    Raises:
        ValueError: a bad option, or ``critical`` from another model.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()  # gradient zero at (0, 0): gradient descent cannot move
        >>> e = ld.escape_saddle(p.model, p.loss_fn, p.train_data, apply=True)
        >>> e.loss_before, round(e.loss_after, 6), e.applied
        (1.0, 0.0, True)
        >>> round(abs(p.model.w1.item() * p.model.w2.item()), 4)  # now on the valley w1*w2 = 1
        1.0
    """
    check_arguments(model=model, loss_fn=loss_fn)
    apply = check_bool(apply, "apply")
    if critical is not None and not isinstance(critical, CriticalPoint):
        raise TypeError(
            f"critical must be a CriticalPoint from classify_critical_point, got {describe(critical)}."
        )
    check_choice(mode, "mode", ("eval", "train"))
    check_progress(progress)
    op = hessian(model, loss_fn, data, mode=mode, reduction=reduction, params=params)
    empty = np.zeros(0)

    def unfinished(point: CriticalPoint | None, message: str) -> EscapeResult:
        return EscapeResult(
            escaped=False,
            applied=False,
            loss_before=op.loss,
            loss_after=op.loss,
            actual_change=0.0,
            predicted_change=0.0,
            first_order_change=0.0,
            eigenvalue=point.min_eigenvalue if point is not None else math.nan,
            step=0.0,
            sign=0,
            line_search_steps=empty,
            line_search_losses=empty,
            loss_evaluations=0,
            matvecs=point.matvecs if point is not None else 0,
            critical=point,
            message=message,
            interrupted=True,
        )

    if critical is None:
        try:
            with _interrupt.propagating():
                critical = classify_critical_point(
                    model,
                    loss_fn,
                    data,
                    mode=mode,
                    reduction=op.reduction,
                    params=op.params,
                    progress=scaled(progress, 0, 2),
                    **classify_options,
                )
        except KeyboardInterrupt:
            _interrupt.keep_partial()
            return unfinished(
                None,
                "interrupted while classifying the point: no step taken, the model is unchanged.",
            )
        if _interrupt.was_interrupted(critical):
            _interrupt.note()
            return unfinished(
                critical,
                "the classification was interrupted, so there is no trustworthy "
                "escape direction: no step taken, the model is unchanged.",
            )
    elif critical.num_params != op.num_params or (
        critical.parameter_names and tuple(critical.parameter_names) != tuple(op.names)
    ):
        raise ValueError(
            f"critical was computed for {critical.num_params} parameters "
            f"({_names(critical.parameter_names)}) but this escape is over {op.num_params} "
            f"({_names(op.names)}): classify this model's current parameters first, with the "
            "same params=."
        )
    theta0 = op.parameter_vector().to(torch.float64)
    try:
        loss0, grad = op.gradient()
    except KeyboardInterrupt:
        _interrupt.keep_partial()
        return unfinished(
            critical, "interrupted before the line search: no step taken, the model is unchanged."
        )
    if critical.escape_direction is None:
        return EscapeResult(
            escaped=False,
            applied=False,
            loss_before=loss0,
            loss_after=loss0,
            actual_change=0.0,
            predicted_change=0.0,
            first_order_change=0.0,
            eigenvalue=critical.min_eigenvalue,
            step=0.0,
            sign=0,
            line_search_steps=empty,
            line_search_losses=empty,
            loss_evaluations=0,
            matvecs=critical.matvecs,
            critical=critical,
            message=(
                f"no direction of negative curvature: the smallest eigenvalue "
                f"{fmt(critical.min_eigenvalue, 6)} is not below -{fmt(critical.eig_tol)}"
                f" ({critical.kind.replace('_', ' ')})."
            ),
        )
    u = critical.escape_direction.to(device=theta0.device, dtype=torch.float64)
    lam = critical.min_eigenvalue
    slope = float(grad.to(torch.float64) @ u)

    def loss_at(t: float) -> float:
        _set_parameters(op, theta0 + t * u)
        value = _mean_loss(op)
        return value if math.isfinite(value) else math.inf

    try:
        with preserved_model(model):
            best_t, best_loss, tried = _line_search(loss_at, _reference_step(loss0, lam), loss0)
    except KeyboardInterrupt:
        _interrupt.keep_partial()
        return unfinished(
            critical, "interrupted during the line search: no step taken, the model is unchanged."
        )
    tried.sort()
    steps = np.array([t for t, _ in tried])
    losses = np.array([v for _, v in tried])
    escaped = best_loss < loss0
    applied = bool(apply and escaped)
    if applied:
        _set_parameters(op, theta0 + best_t * u)
    if progress is not None:
        progress(2, 2)
    eta = abs(best_t) if escaped else 0.0
    sign = (1 if best_t > 0 else -1) if escaped else 0
    return EscapeResult(
        escaped=escaped,
        applied=applied,
        loss_before=loss0,
        loss_after=best_loss if escaped else loss0,
        actual_change=(best_loss - loss0) if escaped else 0.0,
        predicted_change=0.5 * lam * eta**2,
        first_order_change=sign * eta * slope,
        eigenvalue=lam,
        step=eta,
        sign=sign,
        line_search_steps=steps,
        line_search_losses=losses,
        loss_evaluations=len(tried),
        matvecs=critical.matvecs,
        critical=critical,
        message=""
        if escaped
        else "no step along the negative-curvature eigenvector lowered the loss.",
        direction=u.clone(),
    )


# -- the cheap alternatives ------------------------------------------------------------------
def _ball_kick(
    n: int, radius: float, generator: torch.Generator, dtype: torch.dtype
) -> torch.Tensor:
    """A uniform sample from the n-ball of ``radius`` (Jin et al., 2017's perturbation)."""
    direction = torch.randn(n, generator=generator, dtype=torch.float64)
    direction /= torch.linalg.vector_norm(direction)
    scale = radius * float(torch.rand((), generator=generator, dtype=torch.float64)) ** (1.0 / n)
    return (direction * scale).to(dtype)


def _descend(
    op: HessianOperator,
    start: torch.Tensor,
    *,
    steps: int,
    lr: float,
    momentum: float,
    kick_radius: float,
    kick_threshold: float,
    kick_interval: int,
    seed: int,
    record_path: bool,
) -> tuple[list[float], int, int, list[list[float]], bool]:
    """Gradient descent (heavy-ball momentum if ``momentum`` > 0, random kicks if ``kick_radius`` > 0) from ``start``: the loss at every step, gradients spent, kicks given, the path, and whether a Ctrl-C cut it short (then the lists hold the steps taken, unpadded)."""
    losses: list[float] = []
    path: list[list[float]] = []
    generator = torch.Generator().manual_seed(seed)
    theta = start.clone()
    velocity = torch.zeros_like(theta)
    kicks, last_kick, gradients = 0, -kick_interval, 0
    try:
        for step in range(steps + 1):
            _set_parameters(op, theta)
            if record_path:
                path.append(theta.cpu().tolist())
            loss, grad = op.gradient()
            gradients += 1
            losses.append(loss if math.isfinite(loss) else math.inf)
            if step == steps or not math.isfinite(loss):
                break
            grad = grad.to(theta.dtype)
            if (
                kick_radius > 0
                and float(torch.linalg.vector_norm(grad)) <= kick_threshold
                and step - last_kick >= kick_interval
            ):
                kick = _ball_kick(theta.numel(), kick_radius, generator, theta.dtype)
                theta = theta + kick.to(theta.device)
                kicks += 1
                last_kick = step
                _set_parameters(op, theta)
                loss, grad = op.gradient()
                gradients += 1
                grad = grad.to(theta.dtype)
            velocity = momentum * velocity - lr * grad
            theta = theta + velocity
    except KeyboardInterrupt:
        _interrupt.keep_partial(finished=bool(losses))
        return losses, gradients, kicks, path, True
    losses += [losses[-1]] * (steps + 1 - len(losses))  # a diverged run keeps its last value
    return losses, gradients, kicks, path, False


def _first_escape(losses: list[float], start: float, drop: float) -> int | None:
    for i, value in enumerate(losses):
        if value <= start - drop:
            return i
    return None


def compare_saddle_escapes(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    steps: int = 50,
    lr: float | None = None,
    momentum: float = 0.9,
    kick_radius: float | None = None,
    kick_threshold: float | None = None,
    kick_interval: int = 10,
    escape_drop: float | None = None,
    seed: int = 0,
    critical: CriticalPoint | None = None,
    record_paths: bool = False,
    mode: Mode = "eval",
    progress: Progress | None = None,
    reduction: Reduction | None = None,
    params: Any = None,
    **classify_options: Any,
) -> SaddleEscapeComparison:
    """Run the escape methods from the model's current parameters (a saddle) and compare them.

    Methods, all full-batch with ``steps`` updates at learning rate ``lr``: plain gradient descent;
    heavy-ball momentum; perturbed gradient descent (a random kick uniform in a ball of
    ``kick_radius`` whenever the gradient norm is at most ``kick_threshold`` and no kick came in
    the last ``kick_interval`` steps; Jin et al., 2017); momentum with the same kicks; and the
    eigenvector step of :func:`escape_saddle` followed by gradient descent. Each reports its
    loss after every step, gradients, Hessian-vector products and loss evaluations spent.

    Defaults: ``lr`` = 0.5 / λ_max (curvature grows away from a saddle), ``kick_threshold`` = the
    classification's ``grad_tol``, ``kick_radius`` = 1e-3 of the eigenvector step's length,
    ``escape_drop`` = half the loss drop of the eigenvector step. The model is left as it was.

    ``reduction`` and ``params`` (a subset of the parameters: every method moves only those) are
    as for :func:`escape_saddle`.

    Args:
        model: any ``nn.Module``, at (or near) a saddle point.
        loss_fn: the loss, as for :func:`lossdoctor.hessian`.
        data: a DataLoader, a list of batches or one batch, as for :func:`lossdoctor.hessian`.
        steps: updates per method.
        lr: the learning rate (default 0.5 / λ_max).
        momentum: the heavy-ball coefficient of the momentum methods.
        kick_radius: the radius of the random kicks (default 1e-3 of the eigenvector step).
        kick_threshold: kicks come only at gradient norms at most this (default ``grad_tol``).
        kick_interval: the fewest steps between two kicks.
        escape_drop: the loss drop that counts as an escape (default half the eigenvector
            step's drop).
        seed: the seed of the kicks.
        critical: a :class:`CriticalPoint` at the model's current parameters, to reuse.
        record_paths: keep every method's flat parameters at every step (small models).
        mode: ``"eval"`` (default) or ``"train"``.
        progress: called as ``progress(done, total)``, or ``None``.
        reduction: as for :func:`escape_saddle`.
        params: every method moves only these parameters (as for :func:`escape_saddle`).
        **classify_options: passed to :func:`classify_critical_point`.

    Returns:
        Each method's loss after every step, when it escaped, and what it spent.

    Raises:
        ValueError: a bad option.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()
        >>> cmp = ld.compare_saddle_escapes(p.model, p.loss_fn, p.train_data, steps=20)
        >>> [(m.name, round(m.final_loss, 3)) for m in cmp.methods][:2]  # the gradient is zero
        [('gradient descent', 1.0), ('momentum', 1.0)]
        >>> cmp.methods[-1].escaped_at  # the eigenvector step leaves at once
        1
    """
    check_arguments(model=model, loss_fn=loss_fn)
    steps = check_int(steps, "steps", minimum=1)
    momentum = check_float(momentum, "momentum", minimum=0.0, below=1.0)
    lr, kick_radius, kick_threshold, escape_drop = (
        check_float(value, name, above=0.0, optional=True)
        for name, value in (
            ("lr", lr),
            ("kick_radius", kick_radius),
            ("kick_threshold", kick_threshold),
            ("escape_drop", escape_drop),
        )
    )
    kick_interval = check_int(kick_interval, "kick_interval", minimum=1)
    seed = check_seed(seed)
    record_paths = check_bool(record_paths, "record_paths")
    check_choice(mode, "mode", ("eval", "train"))
    check_progress(progress)
    if critical is not None and not isinstance(critical, CriticalPoint):
        raise TypeError(
            f"critical must be a CriticalPoint from classify_critical_point, got {describe(critical)}."
        )
    op = hessian(model, loss_fn, data, mode=mode, reduction=reduction, params=params)
    total = 6
    with preserved_model(model):
        escape = escape_saddle(
            model,
            loss_fn,
            data,
            critical=critical,
            mode=mode,
            apply=True,
            progress=scaled(progress, 0, total),
            reduction=op.reduction,
            params=op.params,
            **classify_options,
        )
        if escape.interrupted:
            return SaddleEscapeComparison(
                loss_start=escape.loss_before,
                steps=steps,
                lr=math.nan if lr is None else lr,
                momentum=momentum,
                kick_radius=math.nan,
                kick_threshold=math.nan,
                escape_drop=math.nan,
                seed=seed,
                methods=[],
                escape=escape,
                interrupted=True,
            )
        if not escape.escaped or escape.critical is None:  # an escape was classified first
            raise ValueError(
                f"nothing to compare: {escape.message} compare_saddle_escapes needs a saddle "
                "(a direction of negative curvature)."
            )
        critical = escape.critical
        after_step = op.parameter_vector().to(torch.float64)
    start = op.parameter_vector().to(torch.float64)
    lr = float(lr) if lr is not None else 0.5 / max(abs(critical.max_eigenvalue), 1e-12)
    kick_threshold = (
        float(kick_threshold) if kick_threshold is not None else max(critical.grad_tol, 1e-12)
    )
    kick_radius = float(kick_radius) if kick_radius is not None else 1e-3 * escape.step
    escape_drop = float(escape_drop) if escape_drop is not None else 0.5 * abs(escape.actual_change)
    loss_start = escape.loss_before
    runs = [
        ("gradient descent", 0.0, 0.0, start),
        ("momentum", momentum, 0.0, start),
        ("perturbed GD", 0.0, kick_radius, start),
        ("momentum + kicks", momentum, kick_radius, start),
        ("eigenvector step + GD", 0.0, 0.0, after_step),
    ]
    methods: list[MethodTrace] = []
    cut = False
    with preserved_model(model):
        try:
            _run_methods(
                op,
                runs,
                methods,
                after_step,
                start,
                escape,
                steps=steps,
                lr=lr,
                kick_threshold=kick_threshold,
                kick_interval=kick_interval,
                seed=seed,
                record_paths=record_paths,
                loss_start=loss_start,
                escape_drop=escape_drop,
                progress=progress,
                total=total,
            )
        except KeyboardInterrupt:
            cut = _interrupt.keep_partial()
        cut = cut or any(m.interrupted for m in methods)
    return SaddleEscapeComparison(
        loss_start=loss_start,
        steps=steps,
        lr=lr,
        momentum=momentum,
        kick_radius=kick_radius,
        kick_threshold=kick_threshold,
        escape_drop=escape_drop,
        seed=seed,
        methods=methods,
        escape=escape,
        interrupted=cut,
    )


def _run_methods(
    op: HessianOperator,
    runs: list,
    methods: list[MethodTrace],
    after_step: torch.Tensor,
    start: torch.Tensor,
    escape: EscapeResult,
    *,
    steps: int,
    lr: float,
    kick_threshold: float,
    kick_interval: int,
    seed: int,
    record_paths: bool,
    loss_start: float,
    escape_drop: float,
    progress: Progress | None,
    total: int,
) -> None:
    """Run each method in turn, appending its trace to ``methods`` (so a Ctrl-C keeps the finished ones); an interrupted method is appended flagged, and ends the loop."""
    for i, (name, beta, radius, origin) in enumerate(runs):
        eigen = origin is after_step
        n_steps = steps - 1 if eigen else steps
        losses, grads, kicks, path, cut = _descend(
            op,
            origin,
            steps=n_steps,
            lr=lr,
            momentum=beta,
            kick_radius=radius,
            kick_threshold=kick_threshold,
            kick_interval=kick_interval,
            seed=seed,
            record_path=record_paths,
        )
        if eigen:
            losses = [loss_start] + losses
            if record_paths:
                path = [start.cpu().tolist()] + path
        methods.append(
            MethodTrace(
                name=name,
                losses=losses,
                gradients=grads + (1 if eigen else 0),
                matvecs=escape.matvecs if eigen else 0,
                loss_evaluations=escape.loss_evaluations if eigen else 0,
                kicks=kicks,
                escaped_at=_first_escape(losses, loss_start, escape_drop),
                path=path,
                interrupted=cut,
            )
        )
        if cut:
            break
        if progress is not None:
            progress(i + 2, total)


def gradient_descent_path(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    *,
    steps: int,
    lr: float,
    momentum: float = 0.0,
    mode: Mode = "eval",
    reduction: Reduction | None = None,
    params: Any = None,
) -> MethodTrace:
    """Full-batch gradient descent from the model's current parameters, recording its path.

    Heavy-ball if ``momentum`` > 0. The loss and the flat parameter vector are recorded at
    every step; the model is left as it was. For drawing paths on small models (the lecture's
    2-D toy).

    Args:
        model: any ``nn.Module``.
        loss_fn: the loss, as for :func:`lossdoctor.hessian`.
        data: a DataLoader, a list of batches or one batch, as for :func:`lossdoctor.hessian`.
        steps: the number of updates.
        lr: the learning rate.
        momentum: the heavy-ball coefficient (0: plain gradient descent).
        mode: ``"eval"`` (default) or ``"train"``.
        reduction: as for :func:`escape_saddle`.
        params: only these parameters move (as for :func:`escape_saddle`).

    Returns:
        The losses and parameters along the path, with the gradients spent.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle(0.1, 0.2)
        >>> run = ld.gradient_descent_path(p.model, p.loss_fn, p.train_data, steps=3, lr=0.1)
        >>> [round(x, 4) for x in run.losses]
        [0.9604, 0.9398, 0.9124, 0.8754]
        >>> [round(w, 4) for w in run.path[1]]
        [0.1392, 0.2196]
    """
    check_arguments(model=model, loss_fn=loss_fn)
    steps = check_int(steps, "steps", minimum=1)
    lr = check_float(lr, "lr", above=0.0)
    momentum = check_float(momentum, "momentum", minimum=0.0, below=1.0)
    check_choice(mode, "mode", ("eval", "train"))
    op = hessian(model, loss_fn, data, mode=mode, reduction=reduction, params=params)
    with preserved_model(model):
        losses, grads, _, path, cut = _descend(
            op,
            op.parameter_vector().to(torch.float64),
            steps=steps,
            lr=lr,
            momentum=momentum,
            kick_radius=0.0,
            kick_threshold=0.0,
            kick_interval=1,
            seed=0,
            record_path=True,
        )
    return MethodTrace(
        name="gradient descent" if momentum == 0 else "momentum",
        losses=losses,
        gradients=grads,
        matvecs=0,
        loss_evaluations=0,
        kicks=0,
        escaped_at=None,
        path=path,
        interrupted=cut,
    )
