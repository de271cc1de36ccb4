"""What to try for each cause: candidate actions with their numbers, from the measurements.

A pure function of the measurements and the decision (no model, no text): the learning rates come
from the measured stability limit with a margin (``S`` at half its limit: ``1/λ_max`` for plain
gradient descent), never the stability edge itself, or are simple multiples of the current lr
that the trials then measure. Actions that need the user's code are marked not applicable.

Examples:
    >>> safe_lr(0.1, 4.0, 2.0, 0.5)  # lr 0.1 at S = 4 with limit 2: S at half the limit
    0.025
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .explain import one_lr_cannot_fit
from .measure import Measurements
from .rules import Decision

ADAM_LRS = (1e-3, 3e-3, 1e-2)
LR_MARGIN = 0.5  # a prescribed lr puts S at this fraction of its stability limit, at most


@dataclass(frozen=True)
class Candidate:
    """An action to propose (and try, when ``applicable``).

    ``why`` names the measurement it answers; ``payload`` carries tensors the action needs (not
    JSON)."""

    action: dict[str, Any]
    why: str
    applicable: bool = True
    payload: Any = field(default=None, repr=False, compare=False)


def safe_lr(
    lr: float, s: float | None, limit: float | None, fraction: float = LR_MARGIN
) -> float | None:
    """The lr at which the lr-scaled sharpness S sits at ``fraction`` of its limit (S scales with the lr)."""
    if s is None or limit is None or not s > 0 or not lr > 0:
        return None
    return lr * fraction * limit / s


def _capped_raise(m: Measurements, factor: float) -> float | None:
    """The lr × factor, but never past ``LR_MARGIN`` of the stability limit."""
    if m.lr is None:
        return None
    cap = safe_lr(m.lr, m.lr_sharpness, m.threshold)
    new = m.lr * factor
    if cap is not None:
        new = min(new, cap)
    return new if new > m.lr * 1.5 else None


def _lowered(m: Measurements, *factors: float) -> list[float]:
    """Lower lrs: the stability bound with a margin (when S is above it) and the given fractions of the current lr, distinct and decreasing."""
    if m.lr is None:
        return []
    out = []
    bound = safe_lr(m.lr, m.lr_sharpness, m.threshold)
    if bound is not None and bound < m.lr * 0.9:
        out.append(bound)
    out += [m.lr * f for f in factors]
    seen: list[float] = []
    for v in sorted(out, reverse=True):
        if all(abs(v / s - 1) > 0.2 for s in seen):
            seen.append(v)
    return seen


def _adam(m: Measurements, lrs: tuple[float, ...] = ADAM_LRS) -> list[Candidate]:
    name = "AdamW" if m.decoupled else "Adam"
    return [Candidate({"optimizer": name, "lr": lr}, "adaptive") for lr in lrs]


def candidates(
    m: Measurements,
    decision: Decision,
    *,
    checkpoint: Any = None,
    dead_rows: Any = None,
    escape: Any = None,
    window: int = 60,
    has_normalization: bool = True,
    probability_outputs: bool = False,
    layers: Any = None,
    total_samples: int | None = None,
) -> list[Candidate]:
    """The candidate actions for ``decision.cause`` (see the module docstring).

    ``checkpoint`` (a state dict from before the loss went bad), ``dead_rows`` (weight name ->
    dead rows), ``escape`` ((direction by name, step) along negative curvature) enable the actions
    that need them. ``has_normalization`` / ``probability_outputs`` decide whether the
    normalization and loss advice apply.
    """
    build = _BUILDERS.get(decision.cause)
    if build is None:  # pragma: no cover - every cause is covered
        raise ValueError(f"no candidates for cause {decision.cause!r}")
    context = _Context(
        m,
        checkpoint=checkpoint,
        dead_rows=dead_rows,
        escape=escape,
        window=window,
        has_normalization=has_normalization,
        probability_outputs=probability_outputs,
        layers=layers,
        total_samples=total_samples,
    )
    return build(context)


@dataclass(frozen=True)
class _Context:
    """What the candidates of a cause are built from: the measurements and :func:`candidates`' options."""

    m: Measurements
    checkpoint: Any
    dead_rows: Any
    escape: Any
    window: int
    has_normalization: bool
    probability_outputs: bool
    layers: Any
    total_samples: int | None

    @property
    def lr(self) -> float | None:
        return self.m.lr

    @property
    def sgd(self) -> bool:
        return self.m.optimizer in (None, "sgd")

    @property
    def nonfinite(self) -> bool:
        """Parameters or the loss are NaN/Inf."""
        m = self.m
        return bool(m.nonfinite_params or (m.loss is not None and not math.isfinite(m.loss)))


def _progressing(c: _Context) -> list[Candidate]:
    return [Candidate({}, "progressing")]


def _converged(c: _Context) -> list[Candidate]:
    return [
        Candidate({"stop": True}, "converged"),
        Candidate({"capacity": "more"}, "converged", applicable=False),
    ]


def _diverging(c: _Context) -> list[Candidate]:
    m, lr = c.m, c.lr
    out: list[Candidate] = []
    if c.sgd and one_lr_cannot_fit(c.layers):
        out += _adam(m, (1e-3,))
    if c.nonfinite:
        if c.checkpoint is not None:
            for f in (0.1, 0.03, 0.01):
                out.append(
                    Candidate(
                        {"restore_checkpoint": True, **({"lr": lr * f} if lr else {})},
                        "nonfinite",
                        payload=c.checkpoint,
                    )
                )
        else:
            out.append(
                Candidate(
                    {"restore_checkpoint": True, **({"lr": lr * 0.1} if lr else {})},
                    "nonfinite",
                    applicable=False,
                )
            )
        return out
    for v in _lowered(m, 0.1, 0.3):
        out.append(Candidate({"lr": v}, "growth"))
    if lr:
        out.append(Candidate({"lr": lr * 0.3, "clip_grad_norm": _clip_norm(m)}, "growth"))
    out.append(Candidate({"warmup": True}, "growth", applicable=False))
    return out


def _oscillation(c: _Context) -> list[Candidate]:
    m, lr = c.m, c.lr
    out: list[Candidate] = []
    if c.checkpoint is not None and not c.nonfinite:
        # The loss went bad with the lr: back to before it did, at a lower lr.
        for f in (0.1, 0.03):
            out.append(
                Candidate(
                    {"restore_checkpoint": True, **({"lr": lr * f} if lr else {})},
                    "restore",
                    payload=c.checkpoint,
                )
            )
    for v in _lowered(m, 0.3, 0.1):
        out.append(Candidate({"lr": v}, "oscillation"))
    if lr:
        out.append(Candidate({"schedule": "cosine", "steps": 10 * c.window}, "oscillation"))
    if c.sgd:
        out += _adam(m, (1e-3,))
    return out


def _momentum_too_high(c: _Context) -> list[Candidate]:
    m, lr = c.m, c.lr
    out = [Candidate({"momentum": 0.9}, "momentum")]
    if lr:
        out.append(
            Candidate(
                {
                    "momentum": 0.9,
                    "lr": lr * (1 - 0.9) / (1 - m.momentum) * 0.5 if m.momentum < 1 else lr,
                },
                "momentum",
            )
        )
    out.append(Candidate({"momentum": 0.95}, "momentum"))
    return out


def _ill_conditioned(c: _Context) -> list[Candidate]:
    out = _adam(c.m)
    if c.sgd and c.m.momentum < 0.5:
        out.append(Candidate({"momentum": 0.9}, "valley"))
    out.append(Candidate({"preconditioning": "standardize inputs"}, "valley", applicable=False))
    return out


def _lr_too_small(c: _Context) -> list[Candidate]:
    m, lr = c.m, c.lr
    out: list[Candidate] = []
    if not lr:
        return out
    # A ladder from the current lr up to the stability bound with its margin; the trials pick.
    cap = safe_lr(lr, m.lr_sharpness, m.threshold)
    ladder = [lr * 10**k for k in (1, 2, 3)]
    if cap is not None:
        ladder = [v for v in ladder if v < cap] + [cap, cap / 10]
    for v in sorted(set(ladder)):
        if v > lr * 1.5 and all(abs(v / k.action["lr"] - 1) > 0.3 for k in out):
            out.append(Candidate({"lr": v}, "small"))
    if not out:
        out.append(Candidate({"lr": lr * 3}, "small"))
    return out


def _gradient_noise(c: _Context) -> list[Candidate]:
    m = c.m
    out = [Candidate({"lr": v}, "noise") for v in _lowered(m, 0.3, 0.1)]
    if c.lr:
        out.append(Candidate({"schedule": "cosine", "steps": 10 * c.window}, "noise"))
    larger = 4 * m.batch_size if m.batch_size else None
    if larger and c.total_samples:
        larger = min(larger, c.total_samples)
    if larger and larger > (m.batch_size or 0):
        out.append(Candidate({"batch_size": larger}, "noise", applicable=False))
    return out


def _flat_plateau(c: _Context) -> list[Candidate]:
    out = _adam(c.m)
    if c.lr:
        out.append(Candidate({"reinitialize": {"seed": 0}, "lr": c.lr}, "flat"))
    raised = _capped_raise(c.m, 10.0)
    if raised is not None:
        out.append(Candidate({"lr": raised}, "flat"))
    if c.probability_outputs:
        out.append(Candidate({"loss": "cross_entropy"}, "flat", applicable=False))
    if not c.has_normalization:
        out.append(Candidate({"normalization": "add"}, "flat", applicable=False))
    return out


def _dead_units(c: _Context) -> list[Candidate]:
    lr, dead_rows = c.lr, c.dead_rows
    out: list[Candidate] = []
    if dead_rows:
        units = sum(len(r) for r in dead_rows.values())
        for f in (1.0, 0.3, 0.1, 0.03):
            out.append(
                Candidate(
                    {
                        "reinit_dead_units": {"units": units, "seed": 0},
                        **({"lr": lr * f} if lr else {}),
                    },
                    "dead",
                    payload=dead_rows,
                )
            )
    if lr:
        for f in (0.1, 0.03):
            out.append(Candidate({"reinitialize": {"seed": 0}, "lr": lr * f}, "dead"))
    out.append(Candidate({"activation": "LeakyReLU"}, "dead", applicable=False))
    return out


def _vanishing_gradients(c: _Context) -> list[Candidate]:
    return [*_adam(c.m), Candidate({"normalization": "add"}, "vanishing", applicable=False)]


def _weight_decay(c: _Context) -> list[Candidate]:
    return [Candidate({"weight_decay": c.m.weight_decay * f}, "decay") for f in (0.1, 0.01)]


def _saddle_point(c: _Context) -> list[Candidate]:
    out: list[Candidate] = []
    if c.escape is not None:
        out.append(
            Candidate(
                {"escape_saddle": {"eigenvalue": c.m.lambda_min, "step": float(c.escape[1])}},
                "saddle",
                payload=c.escape,
            )
        )
    out.append(Candidate({"perturb": {"scale": 0.01, "seed": 0}}, "saddle"))
    if c.sgd and c.m.momentum < 0.5:
        out.append(Candidate({"momentum": 0.9}, "saddle"))
    return out


def _degenerate(c: _Context) -> list[Candidate]:
    out: list[Candidate] = []
    if c.lr:
        out.append(Candidate({"reinitialize": {"seed": 0}, "lr": c.lr}, "degenerate"))
    for scale in (0.1, 0.01):
        out.append(Candidate({"perturb": {"scale": scale, "seed": 0}}, "degenerate"))
    return out


def _undetermined(c: _Context) -> list[Candidate]:
    # Stalled, and no measured cause stands out: the usual suspects, each tried.
    out = [Candidate({"lr": v}, "unclear") for v in _lowered(c.m, 0.3)]
    raised = _capped_raise(c.m, 3.0)
    if raised is not None:
        out.append(Candidate({"lr": raised}, "unclear"))
    if c.sgd:
        out += _adam(c.m, (1e-3,))
    if c.lr:
        out.append(Candidate({"schedule": "cosine", "steps": 10 * c.window}, "unclear"))
    return out


# One builder per cause (every cause of rules.CAUSES, and "undetermined").
_BUILDERS: dict[str, Callable[[_Context], list[Candidate]]] = {
    "progressing": _progressing,
    "converged": _converged,
    "diverging": _diverging,
    "oscillation": _oscillation,
    "momentum_too_high": _momentum_too_high,
    "ill_conditioned": _ill_conditioned,
    "lr_too_small": _lr_too_small,
    "gradient_noise": _gradient_noise,
    "flat_plateau": _flat_plateau,
    "dead_units": _dead_units,
    "vanishing_gradients": _vanishing_gradients,
    "weight_decay": _weight_decay,
    "saddle_point": _saddle_point,
    "degenerate": _degenerate,
    "undetermined": _undetermined,
}


def _clip_norm(m: Measurements) -> float:
    g = m.minibatch_grad_norm or m.grad_norm or 1.0
    return float(f"{g:.2g}") if g > 0 else 1.0
