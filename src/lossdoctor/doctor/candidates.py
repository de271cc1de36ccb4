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
    cause = decision.cause
    lr = m.lr
    out: list[Candidate] = []
    sgd = m.optimizer in (None, "sgd")
    if cause == "progressing":
        return [Candidate({}, "progressing")]
    if cause == "converged":
        return [
            Candidate({"stop": True}, "converged"),
            Candidate({"capacity": "more"}, "converged", applicable=False),
        ]
    if cause == "diverging":
        if sgd and one_lr_cannot_fit(layers):
            out += _adam(m, (1e-3,))
        if m.nonfinite_params or (m.loss is not None and not math.isfinite(m.loss)):
            if checkpoint is not None:
                for f in (0.1, 0.03, 0.01):
                    out.append(
                        Candidate(
                            {"restore_checkpoint": True, **({"lr": lr * f} if lr else {})},
                            "nonfinite",
                            payload=checkpoint,
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
    if (
        cause in ("diverging", "oscillation")
        and checkpoint is not None
        and not (m.nonfinite_params or (m.loss is not None and not math.isfinite(m.loss)))
    ):
        # The loss went bad with the lr: back to before it did, at a lower lr.
        for f in (0.1, 0.03):
            out.append(
                Candidate(
                    {"restore_checkpoint": True, **({"lr": lr * f} if lr else {})},
                    "restore",
                    payload=checkpoint,
                )
            )
    if cause == "oscillation":
        for v in _lowered(m, 0.3, 0.1):
            out.append(Candidate({"lr": v}, "oscillation"))
        if lr:
            out.append(Candidate({"schedule": "cosine", "steps": 10 * window}, "oscillation"))
        if sgd:
            out += _adam(m, (1e-3,))
        return out
    if cause == "momentum_too_high":
        out.append(Candidate({"momentum": 0.9}, "momentum"))
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
    if cause == "ill_conditioned":
        out += _adam(m)
        if sgd and m.momentum < 0.5:
            out.append(Candidate({"momentum": 0.9}, "valley"))
        out.append(Candidate({"preconditioning": "standardize inputs"}, "valley", applicable=False))
        return out
    if cause == "lr_too_small":
        # A ladder from the current lr up to the stability bound with its margin; the trials pick.
        cap = safe_lr(lr, m.lr_sharpness, m.threshold) if lr else None
        ladder = [lr * 10**k for k in (1, 2, 3)] if lr else []
        if cap is not None:
            ladder = [v for v in ladder if v < cap] + [cap, cap / 10]
        for v in sorted(set(ladder)):
            if lr and v > lr * 1.5 and all(abs(v / c.action["lr"] - 1) > 0.3 for c in out):
                out.append(Candidate({"lr": v}, "small"))
        if not out and lr:
            out.append(Candidate({"lr": lr * 3}, "small"))
        return out
    if cause == "gradient_noise":
        for v in _lowered(m, 0.3, 0.1):
            out.append(Candidate({"lr": v}, "noise"))
        if lr:
            out.append(Candidate({"schedule": "cosine", "steps": 10 * window}, "noise"))
        larger = 4 * m.batch_size if m.batch_size else None
        if larger and total_samples:
            larger = min(larger, total_samples)
        if larger and larger > (m.batch_size or 0):
            out.append(Candidate({"batch_size": larger}, "noise", applicable=False))
        return out
    if cause == "flat_plateau":
        out += _adam(m)
        if lr:
            out.append(Candidate({"reinitialize": {"seed": 0}, "lr": lr}, "flat"))
        raised = _capped_raise(m, 10.0)
        if raised is not None:
            out.append(Candidate({"lr": raised}, "flat"))
        if probability_outputs:
            out.append(Candidate({"loss": "cross_entropy"}, "flat", applicable=False))
        if not has_normalization:
            out.append(Candidate({"normalization": "add"}, "flat", applicable=False))
        return out
    if cause == "dead_units":
        if dead_rows:
            for f in (1.0, 0.3, 0.1, 0.03):
                out.append(
                    Candidate(
                        {
                            "reinit_dead_units": {
                                "units": sum(len(r) for r in dead_rows.values()),
                                "seed": 0,
                            },
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
    if cause == "vanishing_gradients":
        out += _adam(m)
        out.append(Candidate({"normalization": "add"}, "vanishing", applicable=False))
        return out
    if cause == "weight_decay":
        for f in (0.1, 0.01):
            out.append(Candidate({"weight_decay": m.weight_decay * f}, "decay"))
        return out
    if cause == "saddle_point":
        if escape is not None:
            out.append(
                Candidate(
                    {"escape_saddle": {"eigenvalue": m.lambda_min, "step": float(escape[1])}},
                    "saddle",
                    payload=escape,
                )
            )
        out.append(Candidate({"perturb": {"scale": 0.01, "seed": 0}}, "saddle"))
        if sgd and m.momentum < 0.5:
            out.append(Candidate({"momentum": 0.9}, "saddle"))
        return out
    if cause == "degenerate":
        if lr:
            out.append(Candidate({"reinitialize": {"seed": 0}, "lr": lr}, "degenerate"))
        for scale in (0.1, 0.01):
            out.append(Candidate({"perturb": {"scale": scale, "seed": 0}}, "degenerate"))
        return out
    if cause == "undetermined":
        # Stalled, and no measured cause stands out: the usual suspects, each tried.
        out += [Candidate({"lr": v}, "unclear") for v in _lowered(m, 0.3)]
        raised = _capped_raise(m, 3.0)
        if raised is not None:
            out.append(Candidate({"lr": raised}, "unclear"))
        if sgd:
            out += _adam(m, (1e-3,))
        if lr:
            out.append(Candidate({"schedule": "cosine", "steps": 10 * window}, "unclear"))
        return out
    raise ValueError(
        f"no candidates for cause {cause!r}"
    )  # pragma: no cover - every cause is covered


def _clip_norm(m: Measurements) -> float:
    g = m.minibatch_grad_norm or m.grad_norm or 1.0
    return float(f"{g:.2g}") if g > 0 else 1.0
