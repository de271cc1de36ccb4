"""What one optimizer step does along each coordinate.

The per-coordinate step size ``D`` and the stability limit of the lr-scaled sharpness.

For SGD the step is ``lr`` everywhere; for Adam, RMSprop and Adagrad it is read from their state
(``lr / (sqrt(v_hat) + eps)`` for Adam). The update is stable along the sharpest direction while
the top eigenvalue ``S`` of ``D^½ H D^½`` stays below a limit: 2 for plain gradient descent,
2 + 2μ for heavy-ball momentum μ, (2 + 2β1)/(1 - β1) for Adam's moving average (38 at β1 = 0.9;
Cohen et al., 2022).

Examples:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> s = step_size(torch.optim.SGD([w], lr=0.1, momentum=0.9), [w])
    >>> s.kind, s.lr, round(s.threshold, 2), s.scale is None
    ('sgd', 0.1, 3.8, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

ADAM_FAMILY = ("adam", "adamw", "nadam", "radam", "adamax")
ADAPTIVE_FLOOR = 1e-3


@dataclass(frozen=True)
class StepSize:
    """The optimizer as the doctor models it.

    ``scale`` is the flat per-coordinate step ``D`` over ``params`` (float64), or None where it is
    the plain ``lr`` everywhere. ``momentum`` is SGD's/RMSprop's momentum or Adam's β1;
    ``threshold`` the limit of the lr-scaled sharpness; ``weight_decay`` the first group's, with
    ``decoupled`` True for AdamW-style decay. ``note`` says what was approximated.
    """

    kind: str
    lr: float
    scale: torch.Tensor | None
    momentum: float
    threshold: float
    weight_decay: float
    decoupled: bool
    adaptive: bool
    note: str | None = None

    @property
    def effective_lr(self) -> float:
        """The step on slowly varying directions.

        Heavy-ball momentum multiplies SGD's lr by 1/(1 - μ); Adam's momentum averages instead (no
        gain)."""
        if self.kind in ("sgd", "rmsprop") and self.momentum < 1:
            return self.lr / (1 - self.momentum)
        return self.lr


def check_lr(lr: Any) -> float | None:
    """The learning rate as a float, or ``None``; anything but a finite positive number is an error."""
    if lr is None:
        return None
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
        raise ValueError(
            f"lr must be a finite number > 0 (the learning rate used for the history), got {lr!r}."
        )
    return float(lr)


def step_size(  # noqa: C901 - checked options, then the documented steps in order
    optimizer: Any, params: Sequence[torch.Tensor], lr: float | None = None
) -> StepSize | None:
    """Model ``optimizer`` (or plain SGD at ``lr`` when no optimizer is given) over ``params``.

    An explicit ``lr`` with an optimizer rescales every group's lr by ``lr / groups[0]["lr"]``.
    Returns None when neither is given.
    """
    if optimizer is None:
        return None if lr is None else StepSize("sgd", lr, None, 0.0, 2.0, 0.0, False, False)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
        )
    if isinstance(optimizer, torch.optim.LBFGS):
        raise ValueError(
            "optimizer is LBFGS, which takes its own line-searched steps: the stability analysis needs "
            "a step-size optimizer (SGD, Adam, RMSprop, Adagrad...); pass lr= instead to model plain SGD."
        )
    groups = optimizer.param_groups
    trained = {id(p) for g in groups for p in g["params"]}
    if params and not any(id(p) in trained for p in params):
        raise ValueError(
            "optimizer does not train any of this model's trainable parameters: pass the optimizer "
            "built over this model's parameters (torch.optim.X(model.parameters(), ...))."
        )
    base = float(groups[0]["lr"])
    factor = 1.0 if lr is None or base == 0 else lr / base
    kind = type(optimizer).__name__.lower()
    group_of = {id(p): g for g in groups for p in g["params"]}
    note = None
    momentum, threshold = 0.0, 2.0
    if kind in ADAM_FAMILY:
        beta1 = float(groups[0].get("betas", (0.9, 0.999))[0])
        momentum, threshold = beta1, (2 + 2 * beta1) / (1 - beta1)
    elif kind in ("rmsprop", "sgd"):
        momentum = float(groups[0].get("momentum", 0.0) or 0.0)
        threshold = 2 + 2 * momentum
    elif kind != "adagrad":
        note = f"{type(optimizer).__name__} is not modelled: treated as SGD with its lr"
    wd = float(groups[0].get("weight_decay", 0.0) or 0.0)
    decoupled = kind == "adamw" or bool(groups[0].get("decoupled_weight_decay", False))
    adaptive = kind in ADAM_FAMILY or kind in ("rmsprop", "adagrad")
    lrs, roots = (
        [],
        [],
    )  # per coordinate: the lr, and the denominator of an adaptive step (None: plain lr)
    for p in params:
        g = group_of.get(id(p))
        if g is None:  # not optimized: it does not move
            lrs.append(torch.zeros(p.numel(), dtype=torch.float64, device=p.device))
            roots.append(torch.ones(p.numel(), dtype=torch.float64, device=p.device))
            continue
        glr = float(g["lr"]) * factor
        state = optimizer.state.get(p, {})
        root = None
        if kind in ADAM_FAMILY and "exp_avg_sq" in state:
            step = float(state["step"])
            v = state["exp_avg_sq"].detach().double().reshape(-1)
            v_hat = v / (1 - float(g["betas"][1]) ** step) if step > 0 else v
            root = v_hat.sqrt() + float(g["eps"])
        elif kind == "rmsprop" and "square_avg" in state:
            sq = state["square_avg"].detach().double().reshape(-1)
            if g.get("centered") and "grad_avg" in state:
                sq = sq - state["grad_avg"].detach().double().reshape(-1) ** 2
            root = sq.clamp_min(0).sqrt() + float(g["eps"])
        elif kind == "adagrad" and "sum" in state:
            step = float(state["step"])
            glr = glr / (1 + max(step - 1, 0) * float(g.get("lr_decay", 0.0)))
            root = state["sum"].detach().double().reshape(-1).sqrt() + float(g["eps"])
        if root is None:
            if adaptive and note is None:
                note = f"{type(optimizer).__name__} has no state yet: its first steps are taken as plain lr steps"
            root = torch.ones(p.numel(), dtype=torch.float64, device=p.device)
        lrs.append(torch.full((p.numel(),), glr, dtype=torch.float64, device=p.device))
        roots.append(root)
    pieces = []
    if lrs:
        lr_vec, root_vec = torch.cat(lrs), torch.cat(roots)
        if adaptive:
            # A coordinate whose second moment is (near) zero has had no gradient: its linearized
            # step lr/eps is not what the optimizer does (a new gradient raises v at once, and the
            # step stays ~lr). Floor the denominator at 1e-3 of the mean one.
            live = root_vec[lr_vec > 0]
            if live.numel():
                root_vec = root_vec.clamp_min(ADAPTIVE_FLOOR * float(live.mean()))
        pieces = [lr_vec / root_vec]
    scale = torch.cat(pieces) if pieces else torch.zeros(0, dtype=torch.float64)
    uniform = scale.numel() > 0 and bool(torch.all(scale == scale[0]))
    return StepSize(
        kind,
        base * factor,
        None if uniform and not adaptive else scale,
        momentum,
        threshold,
        wd,
        decoupled,
        adaptive,
        note,
    )


class Preconditioned:
    """``D^½ H D^½`` as an operator (``@`` on vectors or matrices).

    The Hessian in the metric of the optimizer's step, whose top eigenvalue is the lr-scaled
    sharpness ``S``."""

    def __init__(self, op: Any, d: torch.Tensor):
        self.op = op
        self.root = d.sqrt().to(torch.float64)
        self.shape = op.shape
        self.device = op.device
        self.mode = getattr(op, "mode", None)

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        r = self.root.to(x.device).reshape(-1, *([1] * (x.dim() - 1)))
        return r * (self.op @ (r * x.to(torch.float64)))
