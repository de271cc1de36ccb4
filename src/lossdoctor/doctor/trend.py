"""Loss-trend statistics: is the loss still falling, beyond doubt from minibatch noise?

Everything here reads a sequence of per-step training losses; nothing touches a model. The
doctor (:func:`lossdoctor.diagnose`) and the :class:`lossdoctor.Monitor` share these rules.

Examples:
    >>> import numpy as np
    >>> from lossdoctor.doctor.trend import loss_trend
    >>> t = loss_trend(np.linspace(2.0, 1.0, 60))
    >>> t.stalled, round(t.relative_drop, 2)
    (False, 0.37)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._results import ResultMixin, fmt

MIN_STEPS = 4
WINDOW = 60
# The relative loss drop over WINDOW steps below which the loss counts as stalled (a rate: over
# longer windows it compounds, see stall_threshold).
STALL_REL = 0.02
# Standard errors the noise-aware stall test wants before it decides either way.
STALL_Z = 2.0
# Loss at the window's end over its start above this: the loss is growing.
DIVERGE_GROWTH = 1.5


@dataclass(frozen=True)
class StepHistory(ResultMixin):
    """Recent per-step signals, however they were given (list, dict, TrainHistory, Monitor record).

    Attributes:
        losses: the per-step training losses, oldest first.
        grad_norms: the gradient norms (NaN on steps where they were not taken), or ``None``.
        grad_cosines: the cosines between successive gradients (NaN likewise), or ``None``.

    Examples:
        >>> from lossdoctor.doctor.trend import read_history
        >>> h = read_history({"losses": [4.0, 3.0, 2.0, 1.5], "grad_norms": [2.0, 1.0, 0.5, 0.4]})
        >>> h.losses.tolist(), h.grad_norms.tolist(), h.grad_cosines
        ([4.0, 3.0, 2.0, 1.5], [2.0, 1.0, 0.5, 0.4], None)
    """

    losses: np.ndarray
    grad_norms: np.ndarray | None = None
    grad_cosines: np.ndarray | None = None


@dataclass(frozen=True)
class LossTrend(ResultMixin):
    """The trend of the last ``window`` losses (:func:`loss_trend`).

    ``start``/``end`` are the medians of the window's first and last thirds (robust to minibatch
    noise); ``relative_drop`` = (start - end)/|start|; ``growth`` = end/start. ``noise`` is the
    standard deviation of one loss around the smooth trend (from second differences) and
    ``drop_se`` the standard error of ``relative_drop``. ``stalled`` is the verdict of
    :func:`stall_test`: True (stopped falling beyond doubt), False (still falling beyond doubt)
    or None (the noise leaves it open). ``lag1`` is the lag-1 autocorrelation of the losses
    around their trend: near -1 the loss bounces up and down every other step (a period-2
    oscillation). ``nonfinite`` counts NaN/Inf losses in the window. ``separated_growth`` is the
    25th percentile of the last third over the 75th percentile of the first: above 1 only when
    the loss grew by more than its (possibly heavy-tailed) noise.

    Attributes:
        window: the steps read.
        start: the median of the window's first third.
        end: the median of its last third.
        relative_drop: ``(start - end) / |start|``.
        growth: ``end / start``.
        drop_per_step: the loss drop per step between the thirds' centres.
        noise: the standard deviation of one loss around the smooth trend.
        drop_se: the standard error of ``relative_drop``.
        threshold: the relative drop below which the window counts as stalled.
        stalled: ``True``, ``False`` or ``None`` (open).
        lag1: the lag-1 autocorrelation around the trend.
        nonfinite: NaN/Inf losses in the window.
        separated_growth: the 25th percentile of the last third over the 75th of the first.
        tail_ratio: the largest of the last 3 losses over the window's median.

    Examples:
        >>> from lossdoctor.doctor.trend import loss_trend
        >>> print(loss_trend([1.0] * 60))
        last 60 steps: 1 -> 1 (relative drop +0.00% ± 0.00%, threshold 2.00%): stalled
    """

    window: int
    start: float
    end: float
    relative_drop: float
    growth: float
    drop_per_step: float
    noise: float
    drop_se: float
    threshold: float
    stalled: bool | None
    lag1: float
    nonfinite: int
    separated_growth: float = math.nan  # 25th percentile of the last third / 75th of the first
    tail_ratio: float = math.nan  # the largest of the last 3 losses / the window's median

    @property
    def falling(self) -> bool:
        """Whether the loss is still falling beyond doubt from the noise (``stalled is False``)."""
        return self.stalled is False

    def __str__(self) -> str:
        verdict = {True: "stalled", False: "still falling", None: "open (noise)"}[self.stalled]
        return (
            f"last {self.window} steps: {fmt(self.start, 5)} -> {fmt(self.end, 5)} "
            f"(relative drop {self.relative_drop:+.2%} ± {self.drop_se:.2%}, threshold "
            f"{self.threshold:.2%}): {verdict}"
        )


# -- reading a history ---------------------------------------------------------------------------
def _as_array(values: Any, what: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise TypeError(f"{what} must be real numbers, got a {values.dtype} tensor.")
        if values.dim() > 1 and sum(s > 1 for s in values.shape) > 1:
            raise ValueError(
                f"{what} must be one-dimensional (one value per step), got shape {tuple(values.shape)}."
            )
        values = values.detach().cpu().double().numpy()
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(
            f"{what} must be a sequence of numbers (list, numpy array or tensor), "
            f"got {type(values).__name__}."
        )
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must contain numbers only: {err}") from None
    if arr.dtype == bool or arr.dtype.kind not in "iuf":
        raise TypeError(f"{what} must contain real numbers (one per step), got dtype {arr.dtype}.")
    if arr.ndim > 1 and sum(s > 1 for s in arr.shape) > 1:
        raise ValueError(
            f"{what} must be one-dimensional (one value per step), got shape {arr.shape}."
        )
    return arr.astype(np.float64).reshape(-1)


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
    """Per-step losses (and optional gradient norms and successive-gradient cosines) from a list, array or tensor of losses, a dict with keys ``losses``/``grad_norms``/``grad_cosines``, or an object with those attributes (``monitor.record``, a ``TrainHistory``'s ``step_loss``).

    Args:
        history: the losses, or a dict or object carrying them (see above).

    Returns:
        The history as float64 arrays.

    Raises:
        ValueError: no history, fewer than ``MIN_STEPS`` losses, or signals of other lengths.
        TypeError: a string, or an object without losses.

    Examples:
        >>> read_history({"losses": [3.0, 2.0, 1.5, 1.4]}).losses.tolist()
        [3.0, 2.0, 1.5, 1.4]
    """
    if history is None:
        raise ValueError(
            "history is None: pass the recent per-step training losses (a list), a dict "
            "{'losses': [...], 'grad_norms': [...]}, or monitor.record."
        )
    if isinstance(history, StepHistory):
        return history
    if isinstance(history, (str, bytes)):
        raise TypeError(
            "history is a string: pass the per-step losses as a sequence of numbers (a list, "
            "array or tensor), a dict {'losses': [...]}, or monitor.record; the CLI reads files."
        )
    if isinstance(history, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(
        history, (str, bytes)
    ):
        losses, grads, cosines = history, None, None
    else:
        losses = _pick(history, LOSS_KEYS)
        if losses is None:
            raise TypeError(
                f"history of type {type(history).__name__} has no losses: pass a list of "
                f"per-step losses, or a dict/object with one of {LOSS_KEYS}."
            )
        grads, cosines = _pick(history, GRAD_KEYS), _pick(history, COS_KEYS)
    loss_arr = _as_array(losses, "history losses")
    if loss_arr.size < MIN_STEPS and (loss_arr.size == 0 or np.all(np.isfinite(loss_arr))):
        raise ValueError(
            f"history has {loss_arr.size} losses; the doctor needs at least {MIN_STEPS} "
            "consecutive training steps to see a trend (pass more of the recent history)."
        )
    grad_arr = None if grads is None else _as_array(grads, "history grad_norms")
    if grad_arr is not None and grad_arr.size != loss_arr.size:
        raise ValueError(
            f"history has {loss_arr.size} losses but {grad_arr.size} gradient norms; "
            "give one gradient norm per step (or none)."
        )
    cos_arr = None if cosines is None else _as_array(cosines, "history grad_cosines")
    if cos_arr is not None and cos_arr.size > loss_arr.size:
        raise ValueError(
            f"history has {cos_arr.size} gradient cosines for {loss_arr.size} steps; "
            "give at most one per step."
        )
    return StepHistory(losses=loss_arr, grad_norms=grad_arr, grad_cosines=cos_arr)


# -- the trend -----------------------------------------------------------------------------------
def stall_threshold(steps: int) -> float:
    """The relative loss drop below which ``steps`` steps count as stalled.

    ``STALL_REL`` per ``WINDOW`` steps, compounding over longer windows (a drop rate, not a total).

    Args:
        steps: the window's length.

    Returns:
        The threshold, a relative drop.

    Examples:
        >>> from lossdoctor.doctor.trend import stall_threshold
        >>> stall_threshold(60), round(stall_threshold(120), 4)
        (0.02, 0.0396)
    """
    return STALL_REL if steps <= WINDOW else 1 - (1 - STALL_REL) ** (steps / WINDOW)


def _quantile_sorted(s: np.ndarray, q: float) -> float:
    """``np.quantile(s, q)`` (linear interpolation) of an already sorted array.

    Without numpy's per-call overhead: the Monitor runs these on every check inside a training
    loop."""
    pos = q * (s.size - 1)
    lo = int(pos)
    frac = pos - lo
    if frac == 0.0 or lo + 1 >= s.size:
        return float(s[lo])
    return float(s[lo] + frac * (s[lo + 1] - s[lo]))


def _median(w: np.ndarray) -> float:
    return _quantile_sorted(np.sort(w), 0.5)


def _noise(w: np.ndarray) -> float:
    """The standard deviation of iid noise around a smooth trend.

    Second differences cancel a linear trend and have median absolute value 1.652 sigma for Gaussian
    noise."""
    if w.size < 3:
        return 0.0
    return _median(np.abs(w[2:] - 2 * w[1:-1] + w[:-2])) / 1.652


def _drop(
    finite: np.ndarray, z: float, threshold: float
) -> tuple[float, float, float, float, float, bool | None]:
    """The stall test's core on finite losses (at least ``MIN_STEPS``).

    Returns start and end (medians of the first and last thirds), relative drop, noise, the
    drop's standard error and the verdict."""
    third = max(1, finite.size // 3)
    start, end = _median(finite[:third]), _median(finite[-third:])
    scale = max(abs(start), 1e-12)
    drop = (start - end) / scale
    sigma = _noise(finite)
    se = math.sqrt(math.pi / 2) * sigma * math.sqrt(2 / third) / scale
    stalled: bool | None = None
    if finite.size >= 2 * MIN_STEPS:
        if drop + z * se < threshold:
            stalled = True
        elif drop - z * se > threshold:
            stalled = False
    return start, end, drop, sigma, se, stalled


def _ratio(later: float, earlier: float) -> float:
    """Return ``later / earlier`` for losses; where ``earlier`` is not positive, ``inf`` if the loss rose, else 1."""
    return later / earlier if earlier > 0 else (math.inf if later > earlier else 1.0)


def separated_growth(finite: np.ndarray) -> float:
    """The 25th percentile of the last third of these losses over the 75th percentile of the first.

    Above 1 only when the loss grew by more than its (possibly heavy-tailed) noise.

    Args:
        finite: the finite losses, oldest first.

    Returns:
        The ratio (``inf`` when the first third's percentile is 0 and the loss grew).

    Examples:
        >>> round(separated_growth(np.array([1.0, 1.1, 0.9, 3.0, 3.2, 2.9])), 3)  # 2.975 / 1.075
        2.767
    """
    third = max(1, finite.size // 3)
    q_first = _quantile_sorted(np.sort(finite[:third]), 0.75)
    q_last = _quantile_sorted(np.sort(finite[-third:]), 0.25)
    return _ratio(q_last, q_first)


def growth(finite: np.ndarray) -> float:
    """The median of the last third of these losses over the median of the first.

    See :class:`LossTrend`'s ``growth``."""
    third = max(1, finite.size // 3)
    start, end = _median(finite[:third]), _median(finite[-third:])
    return _ratio(end, start)


def recovering(finite: np.ndarray) -> bool:
    """Whether these losses spiked and are already coming back down.

    The peak lies before the last sixth of the window and that sixth's median is below half the
    peak: a transient spike (a bad batch, a momentum overshoot) the run is correcting by itself,
    where a divergence keeps its largest losses at the end.

    Args:
        finite: the finite losses, oldest first.

    Returns:
        True for a spike the loss is leaving, False otherwise (or for fewer than 6 losses).

    Examples:
        >>> recovering(np.array([1.0, 1.0, 1.0, 1.0, 5.0, 4.0, 1.5, 1.2, 1.1, 1.0, 1.0, 1.0]))
        True
        >>> recovering(np.array([1.0, 1.2, 1.5, 2.0, 2.6, 3.4, 4.5, 6.0, 8.0, 10.0, 13.0, 17.0]))
        False
    """
    tail = max(2, finite.size // 6)
    if finite.size < 6:
        return False
    peak = int(np.argmax(finite))
    return peak < finite.size - tail and _median(finite[-tail:]) < 0.5 * float(finite[peak])


def _lag1(w: np.ndarray) -> float:
    """Lag-1 autocorrelation of the losses around a straight-line fit (0 when undefined)."""
    if w.size < 6:
        return 0.0
    scale = float(np.max(np.abs(w)))
    if not scale > 0 or not math.isfinite(scale):
        return 0.0
    w = w / scale  # diverging losses of 1e300 would overflow the products
    t = np.arange(w.size, dtype=np.float64)
    resid = w - np.polyval(np.polyfit(t, w, 1), t)
    denom = float(resid @ resid)
    return float(resid[1:] @ resid[:-1]) / denom if denom > 0 else 0.0


def loss_trend(
    losses: Sequence[float] | np.ndarray, window: int = WINDOW, *, z: float = STALL_Z
) -> LossTrend:
    """The trend of the last ``window`` losses (see :class:`LossTrend`).

    The stall test: the relative drop (medians of the first and last thirds) has standard error
    sqrt(pi/2)·sigma·sqrt(2/n_third)/|start| for iid noise of size sigma; the loss is stalled when
    the drop is below :func:`stall_threshold` by ``z`` standard errors, falling when above it by
    ``z``, and open otherwise (a longer window will tell).

    Args:
        losses: the per-step losses, oldest first.
        window: the last steps read.
        z: the standard errors that put the verdict beyond doubt.

    Returns:
        The trend with its stall verdict.

    Examples:
        >>> loss_trend([1.0] * 60).stalled
        True
    """
    arr = np.asarray(losses, dtype=np.float64).reshape(-1)
    w = arr[-window:]
    finite = w[np.isfinite(w)]
    nonfinite = int(w.size - finite.size)
    threshold = stall_threshold(w.size)
    if finite.size < MIN_STEPS:
        return LossTrend(
            window=int(w.size),
            start=math.nan,
            end=math.nan,
            relative_drop=-math.inf,
            growth=math.inf,
            drop_per_step=math.nan,
            noise=math.nan,
            drop_se=math.nan,
            threshold=threshold,
            stalled=None,
            lag1=0.0,
            nonfinite=nonfinite,
        )
    start, end, drop, sigma, se, stalled = _drop(finite, z, threshold)
    third = max(1, finite.size // 3)
    separated = separated_growth(finite)
    middle = _median(finite)
    tail = float(np.max(finite[-3:])) / middle if middle > 0 else math.nan
    return LossTrend(
        window=int(w.size),
        start=start,
        end=end,
        relative_drop=float(drop),
        growth=_ratio(end, start),
        drop_per_step=(start - end) / max(finite.size - third, 1),
        noise=sigma,
        drop_se=float(se),
        threshold=threshold,
        stalled=stalled,
        lag1=_lag1(finite),
        nonfinite=nonfinite,
        separated_growth=float(separated),
        tail_ratio=tail,
    )


def stall_test(
    losses: Sequence[float], *, threshold: float | None = None, z: float = STALL_Z
) -> bool | None:
    """Has the loss stopped falling over these steps, beyond doubt from minibatch noise?

    True (stalled), False (still falling) or None (the noise leaves it open); see
    :func:`loss_trend`.

    Args:
        losses: the per-step losses, oldest first (all are read).
        threshold: overrides :func:`stall_threshold`.
        z: the standard errors that put the verdict beyond doubt.

    Returns:
        ``True`` (stalled), ``False`` (still falling) or ``None`` (open).

    Examples:
        >>> stall_test([2.0 - 0.01 * i for i in range(60)])
        False
    """
    arr = np.asarray(losses, dtype=np.float64).reshape(-1)
    finite = arr[np.isfinite(arr)]
    if finite.size < MIN_STEPS:
        return None
    _, _, drop, _, se, stalled = _drop(finite, z, stall_threshold(arr.size))
    if threshold is None or stalled is None and arr.size < 2 * MIN_STEPS:
        return stalled
    if drop + z * se < threshold:
        return True
    if drop - z * se > threshold:
        return False
    return None
