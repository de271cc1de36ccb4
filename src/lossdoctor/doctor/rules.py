"""The stall doctor's decision rules: pure functions from :class:`Measurements` to a cause.

Each rule reads a few measured numbers and compares them with documented thresholds; the first
rule that holds, in the order of :data:`RULES`, names the cause. Every comparison that decided is
returned as :class:`Evidence` (name, value, relation, threshold), so a verdict can always be traced
to its numbers, and every rule can be tested on constructed measurements without a model.

The causes (``Diagnosis.cause``):

========================  ====================================================================
``diverging``             NaN/Inf parameters or losses; under a non-adaptive optimizer, a loss
                          growing beyond its noise, or one that just jumped far above the
                          recent losses (near or past the stability limit)
``oscillation``           the step is too large for the curvature: S past its stability limit
                          (twice past it: called even while the loss still falls),
                          the optimizer's own step realizing under a quarter of its predicted
                          decrease, the iterates bouncing between the walls; under an adaptive
                          optimizer also a finite growing loss, or steps that hover on noise
``progressing``           the loss is still falling beyond doubt from its noise
``momentum_too_high``     heavy-ball momentum >= 0.98: steps 50x the lr ring around the valley
``dead_units``            a large share of ReLU-family units never fire on the data (75% and
                          more: called even while the loss still falls)
``weight_decay``          the weight-decay part of the step undoes the gradient part
``vanishing_gradients``   hidden layers' gradients are orders of magnitude smaller, relative
                          to their weights, than the output layer's (SGD-like optimizers)
``saddle_point``          the gradient is ~0 and the Hessian has a clearly negative eigenvalue
                          (or, near the small-weight saddle, a small gradient and curvature
                          down a tenth as strong as up)
``degenerate``            the gradient and the Hessian both vanish at an all-zero point
``converged``             the gradient is ~0 and no direction curves down: a minimum
``gradient_noise``        stable steps, but the minibatch gradient is mostly noise: the loss
                          hovers at SGD's noise floor
``flat_plateau``          the surface is flat: curvature far too small to hold the loss
                          (saturated outputs), or a small gradient for the loss and curvature at
                          a step between 2% and 25% of the stability limit
``lr_too_small``          stable steps below a quarter of the stability limit
``ill_conditioned``       the lr is held down by the sharpest direction (S at half its limit or
                          more) while the loss sits along flat directions that need hundreds of
                          steps (called even while the loss still crawls down)
========================  ====================================================================

Thresholds were set on the tuning seeds of ``studies/stall_cases.py`` and on two independent
sets (``benchmarks/doctor_unseen.py`` and ``benchmarks/doctor_unseen2.py``, each run once blind and
then used for tuning, so no longer held out); the held-out seeds of ``studies/doctor_validation.py``
and the held-out benchmark only measure them. A verdict no rule supports, even with relaxed
thresholds, is ``"undetermined"``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import get_args

from .._results import ResultMixin, fmt
from ..types import Cause
from .measure import Measurements

# Every cause a rule can decide: the Cause literal but "undetermined" (no rule decides that).
CAUSES: tuple[str, ...] = tuple(c for c in get_args(Cause) if c != "undetermined")
STALLED_CAUSES = tuple(c for c in CAUSES if c != "progressing")

# -- thresholds (each used by one rule; see the rule's docstring) ----------------------------------
DIVERGE_GROWTH = 1.25  # with the growth beyond the noise (separated quartiles)
UNSTABLE = 1.0  # S / limit above this: past the stability limit
FAR_UNSTABLE = 2.0  # ... above this: past it even while the loss still falls
BOUNCE_STABILITY = 0.9
BOUNCE_COSINE = -0.5
BOUNCE_EFFICIENCY = 0.1
BOUNCE_MAX_DROP = 0.3
TRUST = 0.25  # the probe step's realized / predicted decrease below this: too long a step
HIGH_MOMENTUM = 0.98
DEAD_SHARE = 0.3
DEAD_LAYER_SHARE = 0.5
DECAY_SHARE = 0.2
DECAY_ALIGNMENT = -0.15
VANISHING = 1e-2
CRITICAL_GRADIENT = 1e-2  # ||g|| / sqrt(2 |L| λ_max) below this: a critical point
CRITICAL_REDUCIBLE = 1e-3  # ½ gᵀH⁺g / |L| below this: the quadratic model has nothing left
NEGATIVE_CURVATURE = 1e-3  # |λ_min| / λ_max above this: a direction that clearly curves down
NEAR_SADDLE_GRADIENT = 0.1
NEAR_SADDLE_CURVATURE = 0.1
NEAR_SADDLE_WEIGHTS = 1.0  # the parameter norm below this: near the small-weight saddle
SETTLED = 1e-4  # ½ gᵀH⁺g / |L| below this, on a flat trend: settled in a minimum
NOISE_RATIO = 3.0
NOISE_EFFICIENCY = 0.3
FLAT_REACH = 1.0  # sqrt(2 L / λ_max) over max(||θ||, 1) above this: the surface is flat
FAR_REACH = 10.0  # ... above this: flat to rounding, before any critical-point test
# ||g|| / sqrt(2 |L| λ_max) in [BOWL_GRADIENT, BOWL_GRADIENT_MAX]: the gradient a bowl of the top
# curvature holding the loss would have (1 along its axis, never more), so a long reach means far
# down a bowl, not flat (a linear regression with large targets and a small lr; the plateaus of the
# suite sit at 0.02-0.06). Far above 1 the quadratic model does not hold (a slope with no curvature).
BOWL_GRADIENT = 0.5
BOWL_GRADIENT_MAX = 2.0
NONZERO_WEIGHTS = 1e-3  # a parameter norm above this: not an all-zero (degenerate) point
WORSE = 1.5  # near the limit, the loss now this many times the recent losses: diverging
NEAR_UNSTABLE = 0.8
JUMP = 3.0  # the loss now this many times the recent losses: it just jumped
DEAD_STRONG = 0.75
DEAD_LAYER_STRONG = 0.9
ADAPTIVE_EFFICIENCY = 0.05
VALLEY_CONDITION = 10.0
VALLEY_STEPS = 300.0
VALLEY_DROP = 0.1
FLAT_GRADIENT = 0.1  # ||g|| / sqrt(2 |L| λ_max) below this, with lr headroom: flat
SMALL_STEP = 0.02  # S / limit below this: the step is far from the stability limit
LR_HEADROOM = 0.25  # S / limit below this: the lr can grow 4x and more
SLOW = 50.0  # half-life in steps above this: slow


@dataclass(frozen=True)
class Evidence(ResultMixin):
    """One comparison that decided: ``value relation threshold`` (e.g. S/limit 1.3 > 1)."""

    name: str
    value: float | None
    relation: str
    threshold: float | None

    def __str__(self) -> str:
        if self.threshold is None:  # a value reported beside the comparisons, not compared itself
            return f"{self.name} = {fmt(self.value)}"
        return f"{self.name} = {fmt(self.value)} {self.relation} {fmt(self.threshold)}"


@dataclass(frozen=True)
class Decision(ResultMixin):
    """The cause, whether training is stalled, and the comparisons that decided."""

    cause: Cause
    stalled: bool
    evidence: tuple[Evidence, ...]
    kept_previous: bool = False

    def __str__(self) -> str:
        return f"{self.cause}: " + "; ".join(str(e) for e in self.evidence)


Check = Callable[[Measurements, float], "tuple[Evidence, ...] | None"]


def _ev(name: str, value: float | None, relation: str, threshold: float | None) -> Evidence:
    return Evidence(name, None if value is None else float(value), relation, threshold)


def _holds(value: float | None, relation: str, threshold: float) -> bool:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return False
    return (
        value > threshold
        if relation == ">"
        else value < threshold
        if relation == "<"
        else value >= threshold
        if relation == ">="
        else value <= threshold
    )


# -- the rules: each returns the deciding evidence, or None ---------------------------------------
def nonfinite(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """NaN/Inf parameters or losses."""
    if m.nonfinite_params:
        return (_ev("non-finite parameters", 1.0, "=", 1.0),)
    if m.trend.nonfinite or (m.loss is not None and not math.isfinite(m.loss)):
        return (_ev("non-finite losses in the window", float(m.trend.nonfinite), ">", 0.0),)
    return None


def worsening(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Getting worse: the full-data loss now ``JUMP`` times the recent training losses (beyond their noise); or S at ``NEAR_UNSTABLE`` of its limit or more while the loss stands ``WORSE`` times the recent losses or the window's trend grows.

    The last few steps can blow up while the medians of thirds still read a fall."""
    jump = (
        m.loss / max(abs(m.recent_loss), 1e-30)
        if m.loss is not None and m.loss_agrees is False
        else None
    )
    if _holds(jump, ">", JUMP / slack) and _holds(m.trend.tail_ratio, ">", WORSE):
        # The loss just jumped, whatever the curvature says: the full-data loss is far above the
        # recent losses and the history's last steps already show the rise.
        return (
            _ev("full-data loss / recent training losses", jump, ">", JUMP),
            _ev(
                "largest of the last 3 losses / the window's median", m.trend.tail_ratio, ">", WORSE
            ),
        )
    if not _holds(m.stability, ">", NEAR_UNSTABLE / slack):
        return None
    if _holds(jump, ">", WORSE):
        return (
            _ev("S / stability limit", m.stability, ">", NEAR_UNSTABLE),
            _ev("full-data loss / recent training losses", jump, ">", WORSE),
        )
    if _holds(m.trend.growth, ">", WORSE) and _holds(m.trend.separated_growth, ">", 1.0):
        return (
            _ev("S / stability limit", m.stability, ">", NEAR_UNSTABLE),
            _ev("loss growth over the window", m.trend.growth, ">", WORSE),
        )
    return None


def _growing(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    return worsening(m, slack) or growing(m, slack)


def adaptive_growth(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """With an adaptive optimizer a finite, growing loss is a bounce, not a divergence.

    Its normalized steps (about lr per coordinate) cannot run off the way SGD's do."""
    return _growing(m, slack) if m.adaptive else None


def sgd_growth(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """A growing loss without an adaptive optimizer.

    Diverging (past the stability limit and worsening, or growing beyond the noise)."""
    return None if m.adaptive else _growing(m, slack)


def growing(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The loss grew by more than ``DIVERGE_GROWTH`` over the window, beyond its noise (heavy-tailed noise included: the last third's lower quartile above the first third's upper quartile)."""
    if _holds(m.trend.growth, ">", DIVERGE_GROWTH / slack**0.5) and _holds(
        m.trend.separated_growth, ">", 1.0
    ):
        return (
            _ev("loss growth over the window", m.trend.growth, ">", DIVERGE_GROWTH),
            _ev(
                "last third's 25th percentile / first third's 75th",
                m.trend.separated_growth,
                ">",
                1.0,
            ),
        )
    return None


def bouncing(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The iterates bounce between the valley walls.

    S within 10% of its limit, the gradient flips after one step (cosine < -0.5), and the loss
    follows less than a tenth of the first-order prediction; called even while the loss still falls
    (up to 30% per window), as the lecture's valley does."""
    stab, cos, eff = m.stability, m.probe_cosine, m.efficiency
    if (
        _holds(stab, ">=", BOUNCE_STABILITY / slack)
        and _holds(cos, "<", BOUNCE_COSINE / slack)
        and _holds(eff, "<", BOUNCE_EFFICIENCY * slack)
        and _holds(m.trend.relative_drop, "<", BOUNCE_MAX_DROP)
    ):
        return (
            _ev("S / stability limit", stab, ">=", BOUNCE_STABILITY),
            _ev("gradient cosine after one step", cos, "<", BOUNCE_COSINE),
            _ev("efficiency (realized / predicted drop)", eff, "<", BOUNCE_EFFICIENCY),
        )
    return None


def progressing(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The loss falls faster than the stall threshold beyond doubt from its own noise."""
    if m.trend.stalled is False:
        return (
            _ev(
                "relative loss drop over the window", m.trend.relative_drop, ">", m.trend.threshold
            ),
        )
    return None


def momentum_too_high(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Heavy-ball momentum (SGD, RMSprop) of at least ``HIGH_MOMENTUM``.

    Steps of lr/(1-μ) on slow directions, 50x the lr and more, ring around the valley instead of
    settling."""
    if m.optimizer in ("sgd", "rmsprop") and _holds(m.momentum, ">=", HIGH_MOMENTUM):
        return (_ev("momentum", m.momentum, ">=", HIGH_MOMENTUM),)
    return None


def unstable(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The step is too large for the curvature.

    S past its stability limit, or the optimizer's own step from here (full-data gradient) realizes
    less than ``TRUST`` of the decrease its first-order prediction promises (the trust-region ratio:
    the step is longer than the region where the local model holds; below 0 it goes uphill)."""
    if _holds(m.stability, ">", UNSTABLE / slack):
        return (_ev("S / stability limit", m.stability, ">", UNSTABLE),)
    rho = m.trust_ratio
    if rho is not None and _holds(rho, "<", TRUST * slack):
        return (_ev("probe step: realized / predicted decrease", rho, "<", TRUST),)
    return None


def far_unstable(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """S at ``FAR_UNSTABLE`` times its limit or more.

    The sharpest direction's error grows every step, so a loss that still falls does so along the
    other directions, on borrowed time."""
    if _holds(m.stability, ">", FAR_UNSTABLE / slack):
        return (_ev("S / stability limit", m.stability, ">", FAR_UNSTABLE),)
    return None


def adaptive_noise(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """With an adaptive optimizer, gradient noise at least ``NOISE_RATIO`` times the signal and the loss following less than ``NOISE_EFFICIENCY`` of the prediction: the steps, normalized per coordinate, keep their size (about lr) as the gradient sinks into the noise, so the loss hovers at a level set by the lr: the lr is too high."""
    if not m.adaptive or not _flat_trend(m) or not _holds(m.stability, ">=", SMALL_STEP / slack):
        return None
    if _holds(m.noise_ratio, ">=", NOISE_RATIO / slack) and (
        m.efficiency is None or _holds(m.efficiency, "<", NOISE_EFFICIENCY * slack)
    ):
        return (
            *_noise_evidence(m),
            _ev("S / stability limit", m.stability, ">=", SMALL_STEP),
        )
    return None


def _noise_evidence(m: Measurements) -> tuple[Evidence, Evidence]:
    """The gradient-noise rules' shared evidence: the noise ratio and the efficiency."""
    return (
        _ev("gradient noise / signal at the training batch size", m.noise_ratio, ">=", NOISE_RATIO),
        _ev("efficiency (realized / predicted drop)", m.efficiency, "<", NOISE_EFFICIENCY),
    )


def _flat_trend(m: Measurements) -> bool:
    """The window's point estimate shows no fall beyond the stall threshold (a noise rule does not fire on a trend the noise merely leaves open while it still points down)."""
    return m.trend.relative_drop < m.trend.threshold


def _dead(
    m: Measurements, share_limit: float, layer_limit: float, share_slack: float, layer_slack: float
) -> tuple[Evidence, ...] | None:
    """The dead units' evidence: the share of the network, else of its worst layer, past its limit."""
    share, worst = m.dead_fraction, m.worst_dead_layer
    if _holds(share, ">=", share_limit / share_slack):
        return (_ev("share of dead hidden units", share, ">=", share_limit),)
    if worst is not None and _holds(
        worst.dead_units / worst.units, ">=", layer_limit / layer_slack
    ):
        name = f"dead units in layer {worst.name}"
        return (_ev(name, worst.dead_units / worst.units, ">=", layer_limit),)
    return None


def dead_units(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """At least ``DEAD_SHARE`` of the hidden units, or ``DEAD_LAYER_SHARE`` of one layer's, have an exactly zero gradient on every sample (ReLUs that never fire)."""
    return _dead(m, DEAD_SHARE, DEAD_LAYER_SHARE, slack, slack)


def dead_units_strong(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """So many dead units (``DEAD_STRONG`` of the hidden units, or ``DEAD_LAYER_STRONG`` of one layer) that the network is broken even while its loss still falls."""
    return _dead(m, DEAD_STRONG, DEAD_LAYER_STRONG, slack, slack**0.25)


def adaptive_bounce(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """An adaptive optimizer at S beyond half its limit whose steps the loss follows less than ``ADAPTIVE_EFFICIENCY`` of the way, falling less than ``BOUNCE_MAX_DROP`` per window: the lr is too high even while the loss still inches down."""
    if not m.adaptive:
        return None
    if (
        _holds(m.stability, ">=", 0.5 / slack)
        and _holds(m.efficiency, "<", ADAPTIVE_EFFICIENCY * slack)
        and _holds(m.trend.relative_drop, "<", BOUNCE_MAX_DROP)
    ):
        return (
            _ev("S / stability limit", m.stability, ">=", 0.5),
            _ev("efficiency (realized / predicted drop)", m.efficiency, "<", ADAPTIVE_EFFICIENCY),
        )
    return None


def slow_valley(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The lecture's valley while the loss still falls.

    S at least half its limit (the lr cannot grow), the gradient's direction ``VALLEY_CONDITION``
    times flatter than the sharpest one, the quadratic model needing over ``VALLEY_STEPS`` steps to
    halve, and the loss falling less than ``VALLEY_DROP`` per window."""
    if _at_critical_scale(m) or _holds(m.stability, ">", UNSTABLE):
        return None
    if (
        _holds(m.stability, ">=", 0.5 / slack)
        and _holds(m.condition, ">=", VALLEY_CONDITION / slack)
        and _holds(m.half_life, ">=", VALLEY_STEPS / slack)
        and _holds(m.trend.relative_drop, "<", VALLEY_DROP)
    ):
        return (
            _ev("S / stability limit", m.stability, ">=", 0.5),
            _ev(
                "S / S_g (sharpest over the gradient's curvature)",
                m.condition,
                ">=",
                VALLEY_CONDITION,
            ),
            _ev("steps to halve the reducible loss", m.half_life, ">=", VALLEY_STEPS),
        )
    return None


def _at_critical_scale(m: Measurements) -> bool:
    """The gradient is below ``CRITICAL_GRADIENT`` of its scale.

    Whatever holds the loss up here, it is not a step size (the critical-point rules speak for such
    points)."""
    return _holds(m.relative_grad, "<", CRITICAL_GRADIENT)


def _reach(m: Measurements) -> float | None:
    """sqrt(2 L / λ_max) / max(||θ||, 1).

    How far a bowl of the top curvature holding the loss reaches, against the parameters' scale
    (infinite where the curvature is zero)."""
    if m.loss is None or m.lambda_max is None or not m.loss > 0:
        return None
    if m.lambda_max < 0:
        return None  # a top Ritz value below zero: no bowl to measure (nor a flat surface)
    if m.lambda_max == 0:
        return math.inf
    return math.sqrt(2 * m.loss / m.lambda_max) / max(m.param_norm or 0.0, 1.0)


def _in_a_bowl(m: Measurements) -> bool:
    """The gradient is what a bowl of the top curvature holding the loss would give (``BOWL_GRADIENT``).

    Then a long reach is distance down a steep-enough bowl, not a flat surface."""
    return _holds(m.relative_grad, ">=", BOWL_GRADIENT) and _holds(
        m.relative_grad, "<=", BOWL_GRADIENT_MAX
    )


def settled(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Stalled where the local quadratic model has nothing left to lose (½ gᵀH⁺g below ``SETTLED`` of the loss) and no direction clearly curves down: a minimum, even where the optimizer still rattles around it (Adam at its edge of stability, a noisy gradient)."""
    if m.trend.stalled is not True or m.reducible is None or m.loss is None or m.lambda_max is None:
        return None
    if not m.lambda_max > 1e-7 * max(abs(m.loss), 1e-12):
        return None  # no curvature at all: the degenerate rule's case, not a minimum
    share = m.reducible / max(abs(m.loss), 1e-30)
    ref = max(abs(m.lambda_max), abs(m.lambda_min or 0.0), 1e-300)
    curving_down = m.lambda_min is not None and -m.lambda_min / ref > NEGATIVE_CURVATURE
    if _holds(share, "<", SETTLED * slack) and not curving_down:
        return (
            _ev("½ gᵀH⁺g / |L| (what the quadratic model can still lose)", share, "<", SETTLED),
            _ev("λ_min", m.lambda_min, ">=", None),
        )
    return None


FLAT_DIRECTION = 1e-5  # |λ_min| / λ_max below this: a direction with no curvature at all


def flat_small_weights(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Stalled at a critical point of small weights (norm below ``NEAR_SADDLE_WEIGHTS``) where some direction has no curvature at all (|λ_min| below ``FLAT_DIRECTION`` of λ_max): the higher-order saddle around a tiny initialization, whose way down is cubic or higher, not a minimum (a minimum of small weights curves up in every direction)."""
    if (
        m.trend.stalled is not True
        or m.lambda_min is None
        or m.lambda_max is None
        or not m.lambda_max > 0
    ):
        return None
    if (
        not _holds(m.param_norm, "<", NEAR_SADDLE_WEIGHTS)
        or (m.param_norm or 0.0) <= NONZERO_WEIGHTS
    ):
        return None  # all-zero weights: the degenerate rule's own case
    crit = _critical(m, slack)
    flat = abs(m.lambda_min) / m.lambda_max
    if crit is not None and _holds(flat, "<", FLAT_DIRECTION * slack):
        return (
            crit,
            _ev("|λ_min| / λ_max", flat, "<", FLAT_DIRECTION),
            _ev("parameter norm", m.param_norm, "<", NEAR_SADDLE_WEIGHTS),
        )
    return None


def far_flat(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The curvature is orders of magnitude too small for the loss (reach above ``FAR_REACH``) at a point whose weights are not all zero: saturated units or outputs, flat to rounding, where a tiny negative Ritz value is no saddle."""
    reach = _reach(m)
    if _holds(m.stability, ">", UNSTABLE):
        return None  # steps past their limit: the instability, not the flatness, is the story
    if (
        reach is not None
        and _holds(reach, ">", FAR_REACH / slack)
        and (m.param_norm or 0.0) > NONZERO_WEIGHTS
        and not _in_a_bowl(m)
    ):
        return (_ev("sqrt(2 L / λ_max) / max(||θ||, 1)", reach, ">", FAR_REACH),)
    return None


def weight_decay(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The weight-decay part of the optimizer's step is at least ``DECAY_SHARE`` of the gradient part and points against it (cosine <= ``DECAY_ALIGNMENT``): decay pulls back what the gradient gains."""
    if _holds(m.decay_share, ">=", DECAY_SHARE / slack) and _holds(
        m.decay_alignment, "<=", DECAY_ALIGNMENT / slack
    ):
        return (
            _ev("weight-decay step / gradient step", m.decay_share, ">=", DECAY_SHARE),
            _ev("cosine between them", m.decay_alignment, "<=", DECAY_ALIGNMENT),
        )
    return None


def vanishing_gradients(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Some hidden layer's gradient/weight ratio is below ``VANISHING`` of the output layer's, with a non-adaptive optimizer (an adaptive one rescales each coordinate's step)."""
    if m.adaptive:
        return None
    ratio = m.depth_gradient_ratio
    if ratio is not None and _holds(ratio, "<", VANISHING * slack) and ratio > 0:
        return (
            _ev(
                "smallest hidden-layer gradient/weight ratio over the output layer's",
                ratio,
                "<",
                VANISHING,
            ),
        )
    return None


def _critical(m: Measurements, slack: float) -> Evidence | None:
    """The gradient is ~0 on the problem's own scale and the local quadratic model has (next to) nothing left to lose: ½ gᵀH⁺g below ``CRITICAL_REDUCIBLE`` of the loss (an ill-conditioned valley has a small gradient too, but much loss left along its floor)."""
    rel = m.relative_grad
    reducible = (
        None if m.reducible is None or m.loss is None else m.reducible / max(abs(m.loss), 1e-12)
    )
    # A gradient far below its scale (a tenth of the threshold) may leave ten times as much: the
    # pseudo-inverse's flattest directions inflate ½ gᵀH⁺g where the gradient is all but zero.
    loose = 10.0 if _holds(rel, "<", CRITICAL_GRADIENT / 10 * slack) else 1.0
    if (
        rel is not None
        and _holds(rel, "<", CRITICAL_GRADIENT * slack)
        and (reducible is None or _holds(reducible, "<", CRITICAL_REDUCIBLE * loose * slack))
    ):
        return _ev("gradient norm / sqrt(2 |L| λ_max)", rel, "<", CRITICAL_GRADIENT)
    if m.grad_norm is not None and m.grad_norm == 0:
        return _ev("gradient norm", 0.0, "=", 0.0)
    return None


def saddle_point(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """A critical point (gradient below ``CRITICAL_GRADIENT`` of its scale) where the smallest Hessian eigenvalue is negative beyond ``NEGATIVE_CURVATURE`` of λ_max."""
    if m.lambda_min is None or m.lambda_max is None or not m.lambda_min < 0:
        return None
    ref = max(abs(m.lambda_max), abs(m.lambda_min))
    crit = _critical(m, slack)
    if crit is not None and ref > 0 and -m.lambda_min / ref > NEGATIVE_CURVATURE / slack:
        return (crit, _ev("λ_min / max |λ|", m.lambda_min / ref, "<", -NEGATIVE_CURVATURE))
    # Near the symmetric saddle of small weights (the one that stalls zero- and small-init
    # networks): a small gradient, curvature down as strong as a tenth of the curvature up, and
    # weights of norm below 1. Elsewhere a negative eigenvalue next to a small gradient is common
    # (transformers, recurrent nets, saturated units) and says nothing about the stall.
    if (
        _holds(m.relative_grad, "<", NEAR_SADDLE_GRADIENT * slack)
        and _flat_trend(m)
        and _holds(m.param_norm, "<", NEAR_SADDLE_WEIGHTS)
        and -m.lambda_min / ref > NEAR_SADDLE_CURVATURE / slack
    ):
        return (
            _ev("gradient norm / sqrt(2 |L| λ_max)", m.relative_grad, "<", NEAR_SADDLE_GRADIENT),
            _ev("λ_min / max |λ|", m.lambda_min / ref, "<", -NEAR_SADDLE_CURVATURE),
        )
    return None


def degenerate(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Gradient and Hessian both zero (λ_max <= 0 and |λ_min| <= 0 up to rounding) at a loss above zero: a higher-order critical point."""
    if m.grad_norm is None or m.lambda_max is None or m.loss is None:
        return None
    scale = max(abs(m.loss), 1e-12)
    if (
        m.grad_norm <= 1e-7 * scale
        and m.lambda_max <= 1e-7 * scale
        and (m.lambda_min is None or abs(m.lambda_min) <= 1e-7 * scale)
    ):
        return (
            _ev("gradient norm", m.grad_norm, "<=", 1e-7 * scale),
            _ev("λ_max", m.lambda_max, "<=", 1e-7 * scale),
        )
    return None


ROUNDING_FLOOR = 10.0  # the loss within this many times what rounding θ alone changes: at its floor
ROUNDING_EVIDENCE = "L / (eps·Σ|g_i θ_i|)"


def at_rounding_floor(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The loss is no larger than what rounding the parameters alone would change it by.

    Moving each θ_i by its float rounding (up to ``eps·|θ_i|``) changes L by up to
    ``eps·Σ|g_i θ_i|`` to first order; a loss within ``ROUNDING_FLOOR`` times that has reached the
    float floor, where step probes and trends are rounding noise (a least-squares fit at a loss of
    7e-16 in float32 was called ``lr_too_small``, and ``oscillation`` under the Monitor). Away from
    a minimum the bound is orders of magnitude below the loss; coordinate by coordinate, huge
    weights of dead units (no gradient) do not count."""
    if m.trend.stalled is False or m.loss is None or m.rounding_sensitivity is None:
        return None
    floor = m.loss_eps * m.rounding_sensitivity
    if not m.loss >= 0 or not floor > 0:
        return None
    if _holds(m.loss / floor, "<=", ROUNDING_FLOOR * slack):
        return (_ev(ROUNDING_EVIDENCE, m.loss / floor, "<=", ROUNDING_FLOOR),)
    return None


def converged(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """A critical point without clearly negative curvature: a (local) minimum."""
    crit = _critical(m, slack)
    if crit is None:
        return None
    return (crit, _ev("λ_min", m.lambda_min, ">=", None))


def gradient_noise(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """Minibatch gradient noise at least ``NOISE_RATIO`` times the full gradient's squared norm (tr Σ / B over ||g||²) and the loss follows less than ``NOISE_EFFICIENCY`` of the first-order prediction, with a step that is not tiny: stable steps bouncing on the noise (SGD's noise floor)."""
    if m.adaptive or not _flat_trend(m):
        return None
    if (
        _holds(m.stability, ">=", SMALL_STEP)
        and _holds(m.noise_ratio, ">=", NOISE_RATIO / slack)
        and (m.efficiency is None or _holds(m.efficiency, "<", NOISE_EFFICIENCY * slack))
    ):
        return _noise_evidence(m)
    return None


def flat_plateau(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """The surface is flat here.

    a bowl of curvature λ_max holding L would reach its floor sqrt(2L/λ_max) away, farther than the
    parameters' own norm, and the gradient is well below such a bowl's (a bowl's gradient means
    distance, not flatness); or, with a step that is neither tiny nor near the limit (S between
    ``SMALL_STEP`` and ``LR_HEADROOM`` of it), the gradient is small for the loss and the curvature
    (||g|| / sqrt(2 |L| λ_max) below ``FLAT_GRADIENT``)."""
    reach = _reach(m)
    if reach is not None and _holds(reach, ">", FLAT_REACH / slack) and not _in_a_bowl(m):
        return (
            _ev("sqrt(2 L / λ_max) / max(||θ||, 1)", reach, ">", FLAT_REACH),
            _ev("gradient norm / sqrt(2 |L| λ_max)", m.relative_grad, "<", BOWL_GRADIENT),
        )
    if (
        _holds(m.stability, ">=", SMALL_STEP / slack)
        and _holds(m.stability, "<", LR_HEADROOM * slack)
        and _holds(m.relative_grad, "<", FLAT_GRADIENT * slack)
        and not _at_critical_scale(m)
    ):
        return (
            _ev("S / stability limit", m.stability, "<", LR_HEADROOM),
            _ev("gradient norm / sqrt(2 |L| λ_max)", m.relative_grad, "<", FLAT_GRADIENT),
        )
    return None


def lr_too_small(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """S below ``LR_HEADROOM`` of its limit with a gradient that is not small.

    The lr could grow several-fold before the sharpest direction objects, and the loss would follow."""
    if _holds(m.stability, "<", LR_HEADROOM * slack) and not _at_critical_scale(m):
        return (_ev("S / stability limit", m.stability, "<", LR_HEADROOM),)
    return None


def ill_conditioned(m: Measurements, slack: float = 1.0) -> tuple[Evidence, ...] | None:
    """S is within reach of its limit (so the lr cannot simply grow) and the quadratic model needs more than ``SLOW`` steps to lose half of what it can: the loss crawls along flat directions while the steep ones cap the lr."""
    if _holds(m.stability, ">=", LR_HEADROOM / slack) and _holds(m.half_life, ">", SLOW / slack):
        return (
            _ev("S / stability limit", m.stability, ">=", LR_HEADROOM),
            _ev("steps to halve the reducible loss", m.half_life, ">", SLOW),
        )
    return None


# Order matters: the first rule that holds names the cause.
RULES: tuple[tuple[Cause, Check], ...] = (
    ("diverging", nonfinite),
    ("converged", at_rounding_floor),
    ("momentum_too_high", momentum_too_high),
    ("oscillation", adaptive_growth),
    ("diverging", sgd_growth),
    ("dead_units", dead_units_strong),
    ("flat_plateau", far_flat),
    ("degenerate", flat_small_weights),
    ("converged", settled),
    ("oscillation", bouncing),
    ("oscillation", adaptive_bounce),
    ("oscillation", far_unstable),
    ("ill_conditioned", slow_valley),
    ("progressing", progressing),
    ("weight_decay", weight_decay),
    ("dead_units", dead_units),
    ("vanishing_gradients", vanishing_gradients),
    ("degenerate", degenerate),
    ("saddle_point", saddle_point),
    ("converged", converged),
    ("oscillation", unstable),
    ("oscillation", adaptive_noise),
    ("gradient_noise", gradient_noise),
    ("flat_plateau", flat_plateau),
    ("lr_too_small", lr_too_small),
    ("ill_conditioned", ill_conditioned),
)
RELAXED = 1.5  # a previous verdict is kept while its rule holds with thresholds relaxed this much
FALLBACK_SLACKS = (1.5, 2.0, 3.0)


def decide(m: Measurements, previous: str | None = None) -> Decision:
    """The cause for these measurements: the first rule of :data:`RULES` that holds.

    With ``previous`` (the last verdict on the same run, as the Monitor passes it), that verdict
    is kept while its own rule still holds with thresholds relaxed by ``RELAXED`` and nothing
    earlier in the order (diverging, progressing) now holds: a verdict changes only on new
    evidence, not on a measurement wobbling around a threshold.

    Examples:
        >>> from lossdoctor.doctor.rules import CAUSES
        >>> "oscillation" in CAUSES and "progressing" in CAUSES
        True
    """
    first: tuple[Cause, tuple[Evidence, ...]] | None = None
    for cause, rule in RULES:
        found = rule(m, 1.0)
        if found is not None:
            first = (cause, found)
            break
    if first is None:
        # No rule holds at its thresholds: the nearest one, with thresholds relaxed step by step,
        # said as such; else no measured cause stands out.
        for loose in FALLBACK_SLACKS:
            nearest = next(
                ((cause, ev) for cause, rule in RULES if (ev := rule(m, loose)) is not None), None
            )
            if nearest is not None:
                first = (nearest[0], (*nearest[1], _ev("thresholds relaxed", loose, "x", None)))
                break
    if first is None:
        return Decision(
            "undetermined",
            True,
            (_ev("no rule holds, even with thresholds relaxed", FALLBACK_SLACKS[-1], "x", None),),
        )
    if (
        previous is not None
        and previous != first[0]
        and first[0] not in ("diverging", "progressing")
    ):
        for cause, rule in RULES:
            if cause == previous:
                kept = rule(m, RELAXED)
                if kept is not None:
                    return Decision(cause, True, kept, kept_previous=True)
    return Decision(first[0], first[0] != "progressing", first[1])


SLOW_DROP = 0.1  # still falling, by less than this per window: slow enough to try a measured cause
SLOW_GAIN = 0.5  # ... and a remedy overturns "progressing" only if its trial halves the loss against continuing


def overturns_progress(relative_gains: list[float]) -> bool:
    """Whether trials of a slow run's hypothesis justify changing a run that still falls.

    One remedy ended at least ``SLOW_GAIN`` below continuing unchanged (a healthy run a higher lr
    would merely speed up a little keeps "progressing").

    Examples:
        >>> overturns_progress([0.1, 0.6]), overturns_progress([0.2])
        (True, False)
    """
    return any(g >= SLOW_GAIN for g in relative_gains)


def slow_progress(m: Measurements, decision: Decision) -> Decision | None:
    """A hypothesis for a loss that still falls, but slowly (less than ``SLOW_DROP`` per window).

    The cause the rules after ``progressing`` name at their own thresholds, or None.

    It is only a hypothesis: :func:`lossdoctor.diagnose` tries its remedies and changes the verdict
    only when one beats continuing unchanged beyond the control's noise and by
    :func:`overturns_progress`'s margin (a run that is merely slow to converge keeps "progressing").

    Examples:
        >>> slow_progress.__name__
        'slow_progress'
    """
    if decision.cause != "progressing" or not _holds(m.trend.relative_drop, "<", SLOW_DROP):
        return None
    # The rules read as if the loss had stalled (several need a flat trend): what would they blame?
    as_stalled = replace(m, trend=replace(m.trend, stalled=True))
    after = RULES[[cause for cause, _ in RULES].index("progressing") + 1 :]
    for cause, rule in after:
        found = rule(as_stalled, 1.0)
        if found is not None:
            return Decision(
                cause,
                True,
                (
                    *found,
                    _ev(
                        "still falling, slowly: relative drop over the window",
                        m.trend.relative_drop,
                        "<",
                        SLOW_DROP,
                    ),
                ),
            )
    return None
