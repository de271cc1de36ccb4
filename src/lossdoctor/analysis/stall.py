"""Why did the loss stop going down? The stall doctor (the lecture's section 2).

:func:`diagnose` reads the recent per-step training loss (and, when available, gradient norms and
the cosine between successive gradients) and looks at the model where it stands now: the
full-data loss and gradient, the sharpness λ_max (the Hessian's largest eigenvalue) and, for an
adaptive optimizer, the preconditioned sharpness. The verdict is one of

* ``"diverging"``: the loss grows or is NaN/Inf;
* ``"oscillation"``: the gradient is not small but the loss barely moves, because each step
  overshoots the valley floor along the sharpest direction (lr·λ_max > 1 for gradient descent;
  the stability limit is lr·λ_max < 2) and successive gradients point against each other;
* ``"critical_point"``: the loss stalled where the gradient is zero: a local minimum or a saddle
  point (the :class:`CriticalPoint` with the escape direction is attached);
* ``"flat_plateau"``: the loss stalled where the gradient is small but the point is not a
  meaningful critical point: the curvature is far too small to hold the loss it sits at, or the
  gradient is simply too small for the learning rate;
* ``"progressing"``: no stall.

Every verdict carries the numbers behind it and concrete prescriptions with numbers in them.

Stability of the update along the sharpest direction, with ``S`` the lr-scaled sharpness (lr·λ_max
for SGD; the top eigenvalue of D^½ H D^½ with D the optimizer's per-coordinate step size for an
adaptive one): plain gradient descent is stable for S < 2; heavy-ball momentum μ for S < 2 + 2μ;
Adam's moving average with β1 for S < (2 + 2β1)/(1 - β1) (38 at β1 = 0.9; Cohen et al., 2022).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin, fmt
from ..curvature import eigenpairs, hessian
from ..curvature.lanczos import apply64, block_lanczos_tridiagonals, tridiagonal
from ..curvature.operator import HessianOperator, LossFn
from ..model_state import preserved_model
from .critical import CriticalPoint, classify_critical_point

CAUSES = ("critical_point", "flat_plateau", "oscillation", "diverging", "progressing")
MIN_STEPS = 4
WINDOW = 60
# Thresholds, tuned on the validation study's tuning seeds only (studies/doctor_validation.py),
# then checked on seeds the tuning never saw.
DIVERGE_GROWTH = 1.5  # loss at the window's end / its start above this: diverging
STALL_REL = 0.02  # relative loss drop over WINDOW steps (or fewer) below this: stalled
OVERSHOOT = 0.5  # S / threshold above this: each step crosses the valley floor (lr·λ > 1 for GD)
COS_OSC = -0.2  # successive gradients point against each other
EFFICIENCY_OSC = 0.5  # realised loss drop / first-order prediction below this
OSC_MAX_DROP = 0.3  # ... and the loss fell less than this over the window (it "barely moves")
FLAT_RATIO = 1.0  # Newton step (or sqrt(2L/λ_max)) longer than FLAT_RATIO·max(||θ||, 1): a plateau
SHARPNESS_TOL = 1e-5
ZERO_LOSS = 1e-10
SADDLE_GAIN = 0.05  # a saddle whose escape gains less than this fraction of the loss is a plateau  # a loss this small (relative to the history's largest) is zero
CLASSIFY_MATVECS = 80  # budget of the critical-point test's Lanczos (a negative Ritz value certifies a saddle)
NEWTON_STEPS = 20  # Lanczos steps from the gradient for the Newton-step length
NEWTON_FLOOR = 1e-6  # curvatures below this fraction of λ_max are taken as flat (left out)
STALL_Z = 2.0  # standard errors the minibatch-noise-aware stall test wants before it decides
# Gradient noise dominates the step when the minibatch gradient's mean squared norm exceeds the
# full-data gradient's by this factor (E||g_B||² = ||g||² + tr Σ / B: noise variance > signal).
NOISE_DOMINATES = 2.0


@dataclass(frozen=True)
class StepHistory(ResultMixin):
    """Recent per-step signals, however they were given (list, dict, TrainHistory, Monitor record)."""

    losses: np.ndarray
    grad_norms: np.ndarray | None = None
    grad_cosines: np.ndarray | None = None


@dataclass(frozen=True)
class Diagnosis(ResultMixin):
    """The stall doctor's verdict, the numbers behind it, and what to change.

    ``cause`` is one of ``CAUSES``. ``lr_sharpness`` is S (lr·λ_max for SGD, the preconditioned
    sharpness for adaptive optimizers) and ``stability_threshold`` the value S must stay below;
    ``max_stable_lr`` is the learning rate at which S would reach it. ``efficiency`` is the loss
    drop per step over the window divided by the first-order prediction (the gradient's squared
    norm in the optimizer's metric): about 1 for a healthy small step, near 0 or negative when
    the steps bounce. ``grad_cosine`` is the mean cosine between successive gradients (from the
    history, or from one probe step of the optimizer from the current point).
    """

    cause: str
    summary: str
    evidence: tuple[str, ...]
    prescriptions: tuple[str, ...]
    stalled: bool
    window: int
    relative_drop: float
    loss_growth: float
    loss: float | None
    grad_norm: float | None
    sharpness: float | None
    lr: float | None
    optimizer: str | None
    momentum: float
    lr_sharpness: float | None
    stability_threshold: float | None
    max_stable_lr: float | None
    efficiency: float | None
    grad_cosine: float | None
    cosine_source: str | None
    param_norm: float | None
    critical: CriticalPoint | None
    num_params: int | None
    num_samples: int | None
    newton_step: float | None = None
    floor_distance: float | None = None
    step: int | None = None  # the training step it was made at (set by the Monitor)

    def __str__(self) -> str:
        at = f" (step {self.step})" if self.step is not None else ""
        lines = [f"diagnosis{at}: {self.cause.replace('_', ' ')}: {self.summary}", "evidence:"]
        lines += [f"  - {e}" for e in self.evidence]
        lines.append("prescriptions:")
        lines += [f"  - {p}" for p in self.prescriptions]
        return "\n".join(lines)


# -- reading the history ---------------------------------------------------------------------
def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{what} must be a sequence of numbers (list, numpy array or tensor), "
                        f"got {type(values).__name__}.")
    try:
        arr = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must contain numbers only: {err}") from None
    return arr


def _pick(source: Any, names: tuple[str, ...]) -> Any:
    for name in names:
        if isinstance(source, Mapping):
            if name in source and source[name] is not None:
                return source[name]
        elif getattr(source, name, None) is not None:
            return getattr(source, name)
    return None


LOSS_KEYS = ("losses", "loss", "step_loss")
GRAD_KEYS = ("grad_norms", "grad_norm")
COS_KEYS = ("grad_cosines", "grad_cosine")


def read_history(history: Any) -> StepHistory:
    """Per-step losses (and optional gradient norms and successive-gradient cosines) from a list,
    array or tensor of losses, a dict with keys ``losses``/``grad_norms``/``grad_cosines``, or an
    object with those attributes (a :class:`~lossdoctor.training.monitor.MonitorRecord`,
    ``TrainHistory.step_loss``)."""
    if history is None:
        raise ValueError("history is None: pass the recent per-step training losses (a list), a dict "
                         "{'losses': [...], 'grad_norms': [...]}, or monitor.record.")
    if isinstance(history, StepHistory):
        return history
    if isinstance(history, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(history, (str, bytes)):
        losses, grads, cosines = history, None, None
    else:
        losses = _pick(history, LOSS_KEYS)
        if losses is None:
            raise TypeError(f"history of type {type(history).__name__} has no losses: pass a list of "
                            f"per-step losses, or a dict/object with one of {LOSS_KEYS}.")
        grads, cosines = _pick(history, GRAD_KEYS), _pick(history, COS_KEYS)
    loss_arr = _as_array(losses, "history losses")
    if loss_arr.size < MIN_STEPS:
        raise ValueError(f"history has {loss_arr.size} losses; the doctor needs at least {MIN_STEPS} "
                         "consecutive training steps to see a trend (pass more of the recent history).")
    grad_arr = None if grads is None else _as_array(grads, "history grad_norms")
    if grad_arr is not None and grad_arr.size != loss_arr.size:
        raise ValueError(f"history has {loss_arr.size} losses but {grad_arr.size} gradient norms; "
                         "give one gradient norm per step (or none).")
    cos_arr = None if cosines is None else _as_array(cosines, "history grad_cosines")
    if cos_arr is not None and cos_arr.size > loss_arr.size:
        raise ValueError(f"history has {cos_arr.size} gradient cosines for {loss_arr.size} steps; "
                         "give at most one per step.")
    return StepHistory(losses=loss_arr, grad_norms=grad_arr, grad_cosines=cos_arr)


def _trend(losses: np.ndarray, window: int) -> tuple[float, float, float, float]:
    """Over the last ``window`` losses: (relative drop, growth, start level, drop per step), from
    the medians of the first and last thirds (robust to minibatch noise)."""
    w = [float(v) for v in losses[-window:]]
    third = max(1, len(w) // 3)
    # statistics.median on a short list: the Monitor calls this often, numpy's would cost more.
    start, end = statistics.median(w[:third]), statistics.median(w[-third:])
    scale = max(abs(start), 1e-12)
    steps_between = max(len(w) - third, 1)
    return (start - end) / scale, end / start if start > 0 else (math.inf if end > start else 1.0), \
        start, (start - end) / steps_between



def stall_threshold(steps: int) -> float:
    """The relative loss drop below which ``steps`` steps count as stalled: ``STALL_REL`` per
    ``WINDOW`` steps, compounding over longer windows (a drop rate, not a total)."""
    return STALL_REL if steps <= WINDOW else 1 - (1 - STALL_REL) ** (steps / WINDOW)


def stall_test(losses: Sequence[float], *, threshold: float | None = None, z: float = STALL_Z) -> bool | None:
    """Has the loss stopped falling over these steps, beyond doubt from minibatch noise?

    The relative drop is read as in :func:`diagnose` (medians of the first and last thirds).
    Its standard error comes from the noise of the losses themselves: for iid noise of size σ
    around a smooth trend, the second differences have median absolute value 1.652·σ (a linear
    trend cancels in them), and the median of n values has standard error √(π/2)·σ/√n.

    Returns True when the drop is below ``threshold`` (default :func:`stall_threshold` of the
    number of losses) by ``z`` standard errors (stalled), False
    when above it by ``z`` (progressing), and None when the noise leaves it open: a longer window
    will tell. A run at SGD's noise floor that still falls slowly reads as None on a short window
    where a point estimate would call a stall at random.
    """
    w = np.asarray(losses, dtype=np.float64)
    if w.size < 2 * MIN_STEPS:
        return None
    if threshold is None:
        threshold = stall_threshold(w.size)
    third = w.size // 3
    start, end = float(np.median(w[:third])), float(np.median(w[-third:]))
    scale = max(abs(start), 1e-12)
    sigma = float(np.median(np.abs(np.diff(w, n=2)))) / 1.652
    se = math.sqrt(math.pi / 2) * sigma * math.sqrt(2 / third) / scale
    drop = (start - end) / scale
    if drop + z * se < threshold:
        return True
    if drop - z * se > threshold:
        return False
    return None


# -- the optimizer's step size per coordinate -------------------------------------------------
@dataclass(frozen=True)
class _StepSize:
    name: str
    lr: float  # the base learning rate (after any override)
    scale: torch.Tensor | None  # per-coordinate step D (flat); None: the plain lr everywhere
    momentum: float
    threshold: float  # S = top eigenvalue of D^½ H D^½ must stay below this
    note: str | None = None


def _check_lr(lr: Any) -> float | None:
    if lr is None:
        return None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"lr must be a finite number > 0 (the learning rate used for the history), got {lr!r}.")
    return float(lr)


def _step_size(optimizer: Any, op: HessianOperator | None, lr: float | None) -> _StepSize | None:
    if optimizer is None:
        return None if lr is None else _StepSize("sgd", lr, None, 0.0, 2.0)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}.")
    groups = optimizer.param_groups
    base = float(groups[0]["lr"])
    factor = 1.0 if lr is None else lr / base  # an explicit lr rescales the optimizer's own
    kind = type(optimizer).__name__.lower()
    group_of = {id(p): g for g in groups for p in g["params"]}
    params = op.params if op is not None else [p for g in groups for p in g["params"]]
    pieces, note = [], None
    momentum, threshold = 0.0, 2.0
    if kind in ("adam", "adamw", "nadam", "radam", "adamax"):
        beta1 = float(groups[0].get("betas", (0.9, 0.999))[0])
        momentum, threshold = beta1, (2 + 2 * beta1) / (1 - beta1)
    elif kind == "rmsprop" or kind == "sgd":
        momentum = float(groups[0].get("momentum", 0.0) or 0.0)
        threshold = 2 + 2 * momentum
    elif kind != "adagrad":
        note = f"{type(optimizer).__name__} is not modelled: treated as SGD with its lr"
    for p in params:
        g = group_of.get(id(p))
        if g is None:  # not optimized: it does not move
            pieces.append(torch.zeros(p.numel(), dtype=torch.float64, device=p.device))
            continue
        glr = float(g["lr"]) * factor
        state = optimizer.state.get(p, {})
        if kind in ("adam", "adamw", "nadam", "radam", "adamax") and "exp_avg_sq" in state:
            step = float(state["step"])
            beta2 = float(g["betas"][1])
            v = state["exp_avg_sq"].detach().double().reshape(-1)
            v_hat = v / (1 - beta2 ** step) if step > 0 else v
            d = glr / (v_hat.sqrt() + float(g["eps"]))
        elif kind == "rmsprop" and "square_avg" in state:
            sq = state["square_avg"].detach().double().reshape(-1)
            if g.get("centered") and "grad_avg" in state:
                sq = sq - state["grad_avg"].detach().double().reshape(-1) ** 2
            d = glr / (sq.clamp_min(0).sqrt() + float(g["eps"]))
        elif kind == "adagrad" and "sum" in state:
            step = float(state["step"])
            clr = glr / (1 + max(step - 1, 0) * float(g.get("lr_decay", 0.0)))
            d = clr / (state["sum"].detach().double().reshape(-1).sqrt() + float(g["eps"]))
        else:
            if kind not in ("sgd",) and note is None:
                note = f"{type(optimizer).__name__} has no state yet: its first steps are taken as plain lr steps"
            d = torch.full((p.numel(),), glr, dtype=torch.float64, device=p.device)
        pieces.append(d)
    scale = torch.cat(pieces)
    uniform = bool(torch.all(scale == scale[0]))
    return _StepSize(kind, base * factor, None if uniform and kind == "sgd" else scale, momentum, threshold, note)


class _Preconditioned:
    """D^½ H D^½ as an operator, for the preconditioned sharpness of adaptive optimizers."""

    def __init__(self, op: HessianOperator, d: torch.Tensor):
        self.op = op
        self.root = d.sqrt().to(torch.float64)
        self.shape = op.shape
        self.device = op.device
        self.mode = op.mode

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        r = self.root.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        return r * (self.op @ (r * x.to(torch.float64)))


def sharpness(op: HessianOperator, *, tol: float = SHARPNESS_TOL, seed: int = 0) -> float:
    """λ_max of the Hessian (largest algebraic eigenvalue) by Lanczos."""
    return float(eigenpairs(op, k=1, which="largest", tol=tol, seed=seed).eigenvalues[0])


def _lr_sharpness(op: HessianOperator, steps: _StepSize, lam: float, tol: float, seed: int) -> float:
    if steps.scale is None:
        return steps.lr * lam
    return float(eigenpairs(_Preconditioned(op, steps.scale), k=1, which="largest", tol=tol,
                            seed=seed).eigenvalues[0])


def newton_step_length(op: HessianOperator, grad: torch.Tensor, lam: float, steps: int = NEWTON_STEPS
                       ) -> float:
    """||H⁺g||, the length of the Newton step to the stationary point of the local quadratic model,
    restricted to the positive-curvature part of the spectrum, by Lanczos quadrature from ``g``
    (exact once ``steps`` reaches the number of distinct eigenvalues). Long: the curvature is far
    too small for the gradient, the minimum of the quadratic model is far away (a plateau)."""
    g = grad.to(torch.float64).reshape(-1, 1)
    gnorm = float(torch.linalg.vector_norm(g))
    if gnorm == 0 or not lam > 0:
        return 0.0
    ((alpha, beta),) = block_lanczos_tridiagonals(lambda X: apply64(op, X), g.to(op.device), steps)
    theta, vecs = torch.linalg.eigh(tridiagonal(alpha, beta))
    weights = vecs[0] ** 2
    keep = theta > NEWTON_FLOOR * lam
    return gnorm * math.sqrt(float((weights[keep] / theta[keep] ** 2).sum()))


def _set_flat(op: HessianOperator, vector: torch.Tensor) -> None:
    with torch.no_grad():
        for p, piece in zip(op.params, torch.split(vector.to(device=op.device, dtype=op.dtype), op.numels)):
            p.copy_(piece.view_as(p))


def _probe_cosine(model: nn.Module, op: HessianOperator, grad: torch.Tensor, steps: _StepSize) -> float:
    """Cosine between the gradient here and after one step of the optimizer's size (no momentum)."""
    d = steps.scale if steps.scale is not None else steps.lr
    theta = op.parameter_vector()
    g64 = grad.to(torch.float64)
    with preserved_model(model):
        _set_flat(op, theta.to(torch.float64) - d * g64)
        _, g2 = op.gradient()
    g2 = g2.to(torch.float64)
    denom = float(torch.linalg.vector_norm(g64) * torch.linalg.vector_norm(g2))
    return float(g64 @ g2) / denom if denom > 0 else 0.0


# -- the verdict -----------------------------------------------------------------------------
def _fmt_lr(x: float) -> str:
    return f"{x:.5g}"


def _bound_text(steps: _StepSize | None, lam: float | None, S: float | None) -> str | None:
    if steps is None or lam is None or lam <= 0:
        return None
    if steps.scale is None:
        bound = steps.threshold / lam
        label = "2/λ_max" if steps.momentum == 0 else f"(2+2·{steps.momentum:g})/λ_max"
        return f"lr <= {label} = {_fmt_lr(bound)}"
    if S is None or S <= 0:
        return None
    return (f"lr <= lr·{fmt(steps.threshold, 3)}/S = {_fmt_lr(steps.lr * steps.threshold / S)} "
            f"(S = {fmt(S, 4)} is the preconditioned sharpness)")


def diagnose(model: nn.Module, loss_fn: LossFn, data: Any, *, history: Any, optimizer: Any = None,
             lr: float | None = None, window: int = WINDOW, mode: str = "eval", seed: int = 0,
             classify: bool = True) -> Diagnosis:
    """Why did the loss stop going down? The cause, the evidence, and what to change.

    Args:
        model, loss_fn, data: the model where training stands now, its loss, and the data to
            measure the full-data loss, gradient and curvature on (a DataLoader, a list of
            ``(inputs, targets)`` batches, or one pair). The model is left exactly as it was.
        history: the recent per-step training losses (oldest first): a list/array/tensor, a
            dict with ``losses`` and optionally ``grad_norms`` and ``grad_cosines``, a
            ``Monitor.record``, or a ``TrainHistory``.
        optimizer: the optimizer that produced the history; its lr, momentum and (for Adam,
            RMSprop, Adagrad) its per-coordinate step sizes enter the stability test.
        lr: the learning rate, when no optimizer is given (or to override the optimizer's).
        window: how many of the most recent steps the trend is read from.
        classify: run the critical-point test (Hessian at both ends) when the loss stalled.
    """
    hist = read_history(history)
    lr = _check_lr(lr)
    if isinstance(window, bool) or not isinstance(window, int) or window < MIN_STEPS:
        raise ValueError(f"window must be an integer >= {MIN_STEPS}, got {window!r}.")
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    losses = hist.losses
    w = min(window, losses.size)
    recent = losses[-w:]
    evidence: list[str] = []
    nonfinite = not np.all(np.isfinite(recent))
    finite = recent[np.isfinite(recent)]
    if finite.size >= MIN_STEPS:
        drop, growth, start_level, per_step = _trend(finite, w)
    else:
        drop, growth, start_level, per_step = -math.inf, math.inf, math.nan, math.nan
    threshold = stall_threshold(w)
    evidence.append(f"over the last {w} steps the loss went from {fmt(start_level, 5)} to "
                    f"{fmt(float(np.median(finite[-max(1, len(finite) // 3):])) if finite.size else math.nan, 5)} "
                    f"(median of first and last thirds): relative drop {drop:+.2%}")
    if hist.grad_norms is not None and np.isfinite(hist.grad_norms[-w:]).any():
        g_recent = hist.grad_norms[-w:]
        evidence.append(f"minibatch gradient norm over the window: median {fmt(float(np.nanmedian(g_recent)))}")

    # The current point: loss and gradient (the Hessian operator refuses a non-finite loss).
    op = None
    try:
        op = hessian(model, loss_fn, data, mode=mode)
    except ValueError as err:
        if "loss is" not in str(err):
            raise
        nonfinite = True
        evidence.append(f"the full-data loss at the current parameters is not finite ({err})")
    steps = _step_size(optimizer, op, lr)
    if steps is not None and steps.note:
        evidence.append(steps.note)

    common = dict(window=w, relative_drop=float(drop), loss_growth=float(growth),
                  lr=None if steps is None else steps.lr, optimizer=None if steps is None else steps.name,
                  momentum=0.0 if steps is None else steps.momentum,
                  stability_threshold=None if steps is None else steps.threshold)

    loss = grad_norm = lam = S = eff = cos = pnorm = None
    cos_source = None
    if op is not None:
        loss, grad = op.gradient()
        grad_norm = float(torch.linalg.vector_norm(grad.to(torch.float64)))
        pnorm = float(torch.linalg.vector_norm(op.parameter_vector().to(torch.float64)))
        if not math.isfinite(grad_norm):
            nonfinite = True
            op = None
    if op is not None:
        lam = sharpness(op, seed=seed)
        evidence.append(f"full-data loss {fmt(loss, 5)}, gradient norm {fmt(grad_norm)}, sharpness "
                        f"λ_max = {fmt(lam, 5)} (2/λ_max = {_fmt_lr(2 / lam) if lam > 0 else 'inf'})")
        if steps is not None:
            S = _lr_sharpness(op, steps, lam, SHARPNESS_TOL, seed)
            what = "lr·λ_max" if steps.scale is None else "preconditioned sharpness S (top eigenvalue of D^½HD^½)"
            evidence.append(f"{what} = {fmt(S, 4)} against the stability limit {fmt(steps.threshold, 3)} "
                            f"({steps.name}, momentum {steps.momentum:g}); above half the limit every "
                            "step overshoots the valley floor along the sharpest direction")
            d = steps.scale if steps.scale is not None else steps.lr
            g64 = grad.to(torch.float64)
            predicted = float((g64 * d * g64).sum()) / (1 - steps.momentum if steps.name == "sgd" else 1.0)
            if predicted > 0 and math.isfinite(per_step):
                eff = per_step / predicted
                evidence.append(f"loss drop per step {fmt(per_step)} vs first-order prediction "
                                f"{fmt(predicted)}: efficiency {eff:.3f}")
        if hist.grad_cosines is not None and np.isfinite(hist.grad_cosines[-w:]).any():
            cos = float(np.nanmean(hist.grad_cosines[-w:]))
            cos_source = "history"
        elif steps is not None:
            cos = _probe_cosine(model, op, grad, steps)
            cos_source = "probe"
        if cos is not None:
            evidence.append(f"cosine between successive gradients {cos:+.3f} ({cos_source})")

    bound = _bound_text(steps, lam, S)
    max_lr = None
    if steps is not None and lam is not None and lam > 0:
        max_lr = steps.threshold / lam if steps.scale is None else (
            steps.lr * steps.threshold / S if S and S > 0 else None)
    common.update(loss=None if loss is None else float(loss), grad_norm=grad_norm, sharpness=lam,
                  lr_sharpness=S, max_stable_lr=max_lr, efficiency=eff, grad_cosine=cos,
                  cosine_source=cos_source, param_norm=pnorm,
                  num_params=None if op is None else op.num_params,
                  num_samples=None if op is None else op.num_samples)

    def verdict(cause: str, summary: str, prescriptions: list[str], stalled: bool,
                critical: CriticalPoint | None = None) -> Diagnosis:
        return Diagnosis(cause=cause, summary=summary, evidence=tuple(evidence),
                         prescriptions=tuple(prescriptions), stalled=stalled, critical=critical, **common)

    # 1. Diverging: NaN/Inf, or the loss grew over the window.
    if nonfinite or growth > DIVERGE_GROWTH:
        what = "the loss is NaN/Inf" if nonfinite else f"the loss grew {growth:.2f}x over the last {w} steps"
        rx = []
        if bound:
            rx.append(f"lower the learning rate below the stability limit: {bound}")
        elif steps is not None:
            rx.append(f"lower the learning rate at least 10x (to {_fmt_lr(steps.lr / 10)})")
        else:
            rx.append("lower the learning rate at least 10x")
        rx.append("warm the learning rate up from a small value (lossdoctor.warmup) so early, sharp "
                  "regions are crossed with small steps")
        gclip = float(np.nanmedian(hist.grad_norms[-w:])) if hist.grad_norms is not None and \
            np.isfinite(hist.grad_norms[-w:]).any() else None
        rx.append("clip gradients: torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm="
                  f"{fmt(gclip) if gclip and math.isfinite(gclip) else '1.0'})")
        return verdict("diverging", what, rx, True)

    # 2. Oscillation: steps overshoot the sharpest direction, gradients flip, the loss barely moves.
    overshoot = S is not None and OVERSHOOT * steps.threshold < S
    flipping = cos is not None and cos < COS_OSC
    wasted = drop < OSC_MAX_DROP and ((eff is not None and eff < EFFICIENCY_OSC) or (eff is None and drop < threshold))
    if overshoot and flipping and wasted:
        rx = []
        if bound:
            rx.append(f"lower the learning rate: {bound} is the stability limit of the sharpest "
                      f"direction; well below it the bouncing stops (lr ≈ {_fmt_lr(max_lr / 2)} "
                      "damps it in one step)")
        rx.append("use an adaptive method (Adam, RMSprop, Adagrad): per-parameter step sizes give the "
                  "steep direction small steps and the flat valley floor large ones")
        rx.append("decay the learning rate (cosine or step schedule) so late steps settle into the valley "
                  "instead of bouncing between its walls")
        summary = (f"the gradient is not small (norm {fmt(grad_norm)}) but the loss barely moves "
                   f"(efficiency {eff:.3f}): the parameters bounce across a valley"
                   if eff is not None else "the parameters bounce across a valley")
        return verdict("oscillation", summary, rx, drop < threshold)

    stalled = drop < threshold
    if not stalled:
        return verdict("progressing", f"the loss fell {drop:.1%} over the last {w} steps: keep training",
                       ["no change needed; diagnose again if the loss stops falling"], False)

    if op is None or lam is None:  # pragma: no cover - op is None only when non-finite (handled above)
        return verdict("flat_plateau", "the loss stalled", [], True)

    # 3. Stalled: a flat plateau (the local quadratic model's minimum is far away), or a critical
    # point (minimum / saddle, from the Hessian's two ends).
    floor_distance = math.sqrt(2 * max(loss, 0.0) / lam) if lam > 0 else math.inf
    newton = newton_step_length(op, grad, lam)
    reach = FLAT_RATIO * max(pnorm or 0.0, 1.0)
    flat = floor_distance > reach or newton > reach
    evidence.append(f"the Newton step to the local quadratic model's minimum is {fmt(newton)} long, and a bowl "
                    f"of the largest curvature λ_max holding the loss {fmt(loss, 4)} would reach its floor "
                    f"{fmt(floor_distance)} away; the parameters' norm is {fmt(pnorm)}")
    common.update(newton_step=newton, floor_distance=floor_distance)
    critical = None
    if classify:
        critical = classify_critical_point(model, loss_fn, data, mode=mode, seed=seed, k=1, tol=1e-2,
                                           num_probes=1, lanczos_steps=20, max_matvecs=CLASSIFY_MATVECS)
        evidence.append(f"critical-point test: {critical.kind.replace('_', ' ')} (gradient norm "
                        f"{fmt(critical.grad_norm)} vs tolerance {fmt(critical.grad_tol)}; eigenvalues "
                        f"{fmt(critical.min_eigenvalue, 4)} .. {fmt(critical.max_eigenvalue, 4)})")
    negative = critical is not None and critical.escape_direction is not None and critical.is_critical
    if negative:
        # A saddle is only a meaningful stall if going down its negative curvature gains something:
        # along a step as long as the parameters themselves, ½|λ_min| r² against the loss. On a
        # saturated plateau the curvature is as tiny as the gradient and the "saddle" is just flat.
        r = max(pnorm or 0.0, 1.0)
        gain = 0.5 * abs(critical.min_eigenvalue) * r * r
        evidence.append(f"stepping {fmt(r)} along the negative-curvature direction would lower the loss by about "
                        f"{fmt(gain)} (quadratic model), against the loss {fmt(loss, 4)}")
        if gain < SADDLE_GAIN * abs(loss):
            negative, flat = False, True
    lr_raise = []
    if max_lr is not None and S is not None and OVERSHOOT * steps.threshold > S:
        lr_raise.append(f"the step is small for this curvature (S = {fmt(S, 3)}): the learning rate can be "
                        f"raised up to the stability limit, {bound}")
    if negative:
        return verdict("critical_point",
                       f"the gradient is zero and the Hessian has a negative eigenvalue "
                       f"({fmt(critical.min_eigenvalue, 4)}): a saddle point",
                       ["step along the escape direction (Diagnosis.critical.escape_direction, or "
                        "lossdoctor.escape_saddle) to go down",
                        "cheap alternatives: momentum, a little noise (perturbed gradient descent), "
                        "smaller batches", "or re-initialize with small random weights (not all zeros)"],
                       True, critical)
    is_critical = critical.is_critical if critical is not None else not flat
    top = float(np.max(finite)) if finite.size else 0.0
    if 0 <= loss <= ZERO_LOSS * max(top, 1.0):
        # A nonnegative loss at zero is at its global minimum, whatever a relative gradient test says.
        return verdict("critical_point", f"the loss is zero ({fmt(loss)}): a global minimum of a nonnegative "
                       "loss; training has converged", ["stop: there is nothing left to fit (check the test loss "
                                                       "for overfitting)"], True, critical)
    # Gradient noise: the minibatch gradients of the history are much longer than the full-data one.
    mb_grad = float(np.nanmedian(hist.grad_norms[-w:])) if hist.grad_norms is not None and \
        np.isfinite(hist.grad_norms[-w:]).any() else None
    noisy = mb_grad is not None and bool(grad_norm) and mb_grad ** 2 > NOISE_DOMINATES * grad_norm ** 2
    if noisy:
        evidence.append(f"the minibatch gradients (median norm {fmt(mb_grad)}) are {mb_grad / grad_norm:.2g}x as long as "
                        f"the full-data gradient ({fmt(grad_norm)}): noise makes up "
                        f"{1 - (grad_norm / mb_grad) ** 2:.0%} of their squared norm")
    if not flat and not is_critical and (flipping or noisy) and eff is not None and eff < EFFICIENCY_OSC:
        # The gradient is not zero and the steps are stable along the sharpest direction, yet the
        # loss does not follow the gradient: minibatch noise throws the parameters back and forth
        # (SGD's noise floor). Raising the lr, as a flat surface would want, makes it worse.
        rx = ["decay the learning rate (cosine or step schedule): smaller late steps average the gradient "
              "noise out instead of bouncing on it",
              "or a larger batch (less gradient noise per step)"]
        summary = (f"the gradient is not small (norm {fmt(grad_norm)}) but the loss barely moves "
                   f"(efficiency {eff:.3f}) although lr·λ_max is within the stability limit: the parameters "
                   "bounce on minibatch gradient noise")
        return verdict("oscillation", summary, rx, True, critical)
    if flat or not is_critical:
        if flat:
            reason = (f"the gradient (norm {fmt(grad_norm)}) is small but the curvature is smaller still: the "
                      f"minimum of the local quadratic model is {fmt(max(newton, floor_distance))} away, "
                      f"against ||θ|| = {fmt(pnorm)}")
        else:
            reason = (f"the gradient (norm {fmt(grad_norm)}) is not zero, so this is no critical point, but "
                      f"each step gains only {fmt(per_step)} of the loss {fmt(loss, 4)}")
        rx = ["change the loss or the parametrization: cross-entropy instead of MSE on softmax/sigmoid "
              "outputs keeps a gradient where the outputs saturate",
              "normalization (BatchNorm/LayerNorm) and an initialization that keeps units out of "
              "saturation", "momentum or an adaptive optimizer (Adam) to move faster along flat directions"]
        return verdict("flat_plateau", f"the surface is flat here: {reason}", lr_raise + rx, True, critical)
    what = (f"the gradient is zero here (norm {fmt(grad_norm)}) and no direction curves down: a "
            f"{critical.kind.replace('_', ' ') if critical is not None else 'critical point'}")
    return verdict("critical_point", f"{what}; this is where gradient descent ends",
                   ["if the loss is low enough, stop: training has converged",
                    "if not: more capacity, a different initialization (restart), or regularization "
                    "to reach a different minimum"] + lr_raise, True, critical)
