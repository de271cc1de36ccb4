"""Prescriptions: what to change, as an action a program can apply and a person can read.

A :class:`Prescription` carries ``text`` (what a person reads), ``action`` (machine-readable,
JSON-safe: ``{"lr": 0.003}``, ``{"optimizer": "Adam", "lr": 0.001}``, ``{"momentum": 0.9}``,
``{"weight_decay": 1e-4}``, ``{"schedule": "cosine", "steps": 600}``, ``{"clip_grad_norm": 1.0}``,
``{"escape_saddle": {...}}``, ``{"restore_checkpoint": true, "lr": ...}``,
``{"reinit_dead_units": {...}, "lr": ...}``, ``{"reinitialize": {...}, "lr": ...}``, ``{"perturb": {...}}``, ``{"loss": "cross_entropy"}``,
``{"batch_size": 512}``, ``{"stop": true}``, ``{}`` for no change), the measured ``trial`` when it
was tried, and :meth:`Prescription.apply`.

``apply(model, optimizer)`` changes what can be changed in place and returns the optimizer to
continue with: the same one (lr, momentum, weight decay, schedule, clipping, saddle escape,
restore, re-initialized units) or a new one (an optimizer switch, over the same parameter groups
with their lr ratios and weight decay). A schedule is a real ``torch.optim.lr_scheduler`` attached
to the optimizer and stepped after every ``optimizer.step()`` by a step hook, so the training loop
needs no change (``attached_scheduler(optimizer)`` returns it). Actions that need the user's code
(another loss, another batch size, a normalization layer) have ``applicable=False``, say exactly
what to change, and ``apply`` raises :class:`NeedsCodeChange`.

Examples:
    >>> import torch
    >>> w = torch.nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([w], lr=1.0)
    >>> rx = Prescription(text="lower the lr to 0.1", action={"lr": 0.1})
    >>> rx.apply(torch.nn.Linear(1, 1), opt).param_groups[0]["lr"]
    0.1
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .._checks import check_optimizer
from .._results import ResultMixin, fmt

HOOKS_ATTR = "_lossdoctor_hooks"
SCHEDULER_ATTR = "_lossdoctor_scheduler"
OPTIMIZERS = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}


class NeedsCodeChange(ValueError):
    """Raised by :meth:`Prescription.apply` for a prescription that changes the user's code.

    Such a prescription changes the loss, the batch size or the architecture: its text says
    what to change. A ``ValueError``.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> model = torch.nn.Linear(2, 1)
        >>> rx = ld.Prescription(text="use cross-entropy", action={"loss": "cross_entropy"}, applicable=False)
        >>> try:
        ...     rx.apply(model, torch.optim.SGD(model.parameters(), lr=0.1))
        ... except ld.NeedsCodeChange as err:
        ...     print(err)
        this prescription changes your code, not the model or optimizer: use cross-entropy
    """


@dataclass(frozen=True)
class Trial(ResultMixin):
    """What a prescription did in its trial, against continuing unchanged.

    ``steps`` training steps from an exact snapshot, on the same batches as the control branch
    that continued unchanged.

    Attributes:
        steps: training steps of the trial.
        loss_before: the loss at the snapshot.
        loss: the loss after the trial on the evaluation data (mean of the last checkpoints).
        control_loss: the same for the control branch.
        gain: ``control_loss - loss`` (positive: better than unchanged).
        relative_gain: ``gain / control_loss``.
        better: the gain exceeded the control's own fluctuation.
        finite: the trial's loss stayed finite.
        curve: the trial's per-step training losses.
        control_curve: the control's.

    Examples:
        >>> import lossdoctor as ld
        >>> t = ld.Trial(steps=60, loss_before=1.0, loss=0.5, control_loss=0.8, gain=0.3,
        ...              relative_gain=0.375, better=True, finite=True)
        >>> print(t)
        trial (60 steps): loss 0.5 vs 0.8 unchanged (37.5% lower)
    """

    steps: int
    loss_before: float
    loss: float
    control_loss: float
    gain: float
    relative_gain: float
    better: bool
    finite: bool
    curve: tuple[float, ...] = ()
    control_curve: tuple[float, ...] = ()

    def __str__(self) -> str:
        if not self.finite:
            return f"trial ({self.steps} steps): the loss went to NaN/Inf"
        return (
            f"trial ({self.steps} steps): loss {fmt(self.loss, 5)} vs {fmt(self.control_loss, 5)} unchanged "
            f"({self.change})"
        )

    @property
    def change(self) -> str:
        """The trial's loss against the control in words, e.g. ``"5.6% lower"``."""
        if not math.isfinite(self.relative_gain):
            return "not comparable"
        return f"{abs(self.relative_gain):.1%} " + (
            "lower" if self.relative_gain >= 0 else "higher"
        )


@dataclass(frozen=True)
class Prescription(ResultMixin):
    """One change to make: the text, the action, and (when tried) the measured trial.

    The ``action`` keys are listed in the module docstring (``{"lr": 0.003}``,
    ``{"optimizer": "Adam", "lr": 0.001}``, ``{"schedule": "cosine", "steps": 600}``, ...).

    Attributes:
        text: what a person reads.
        action: machine-readable and JSON-safe; ``{}`` for no change.
        trial: the measured :class:`Trial`, when it was tried.
        applicable: ``False`` for a change to the user's code (:meth:`apply` raises
            :class:`NeedsCodeChange`).
        reason: which measurement it answers.
        payload: tensors the action needs (an escape direction, a checkpoint); not in ``to_dict``.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rx = ld.Prescription(text="switch to Adam with lr 0.001", action={"optimizer": "Adam", "lr": 1e-3})
        >>> new = rx.apply(model, opt)
        >>> type(new).__name__, new.param_groups[0]["lr"]
        ('Adam', 0.001)
    """

    text: str
    action: dict[str, Any]
    trial: Trial | None = None
    applicable: bool = True
    reason: str = ""  # which measurement it answers
    payload: Any = field(default=None, repr=False, compare=False)  # tensors the action needs

    _skip_in_dict = ("payload",)

    @property
    def no_change(self) -> bool:
        """Whether the prescription is to change nothing (continue, or stop)."""
        return not self.action or self.action == {"stop": True}

    def __str__(self) -> str:
        tried = (
            f" [{self.trial}]"
            if self.trial is not None
            else (" [needs a code change]" if not self.applicable else "")
        )
        return f"{self.text}{tried}"

    def apply(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None, scheduler: Any = None
    ) -> torch.optim.Optimizer | None:
        """Apply the action to ``model`` and ``optimizer`` in place.

        A schedule or gradient clipping is attached to the optimizer as a step hook, so the
        training loop needs no change (:func:`attached_scheduler` returns the schedule).

        Args:
            model: the model being trained.
            optimizer: its optimizer (``None`` only for actions on the model alone).
            scheduler: your own lr scheduler, if any; an lr change then rescales its base lrs
                too, so its next step does not undo the change.

        Returns:
            The optimizer to continue training with: the same one, or a new one for an
            optimizer switch (over the same parameter groups with their lr ratios and weight
            decay).

        Raises:
            NeedsCodeChange: the action changes your code (see ``text``).
            ValueError: the action needs an optimizer (or a checkpoint) that was not given.
            TypeError: ``model`` or ``optimizer`` of the wrong type.

        Examples:
            >>> import torch, lossdoctor as ld
            >>> model = torch.nn.Linear(2, 1)
            >>> opt = torch.optim.SGD(model.parameters(), lr=1.0)
            >>> ld.Prescription(text="lower the lr to 0.1", action={"lr": 0.1}).apply(model, opt) is opt
            True
            >>> opt.param_groups[0]["lr"]
            0.1
        """
        return apply_action(
            self.action,
            model,
            optimizer,
            payload=self.payload,
            scheduler=scheduler,
            applicable=self.applicable,
            text=self.text,
        )


# -- applying actions ------------------------------------------------------------------------------
def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    return [p for g in optimizer.param_groups for p in g["params"]]


def _set_lr(optimizer: torch.optim.Optimizer, lr: float, scheduler: Any = None) -> None:
    """Set the first group's lr to ``lr`` and scale the others alike (their ratios kept)."""
    base = float(optimizer.param_groups[0]["lr"])
    factor = lr / base if base > 0 else None
    for g in optimizer.param_groups:
        g["lr"] = g["lr"] * factor if factor is not None else lr
        if "initial_lr" in g:
            g["initial_lr"] = g["initial_lr"] * factor if factor is not None else lr
    if scheduler is not None and hasattr(scheduler, "base_lrs"):
        scheduler.base_lrs = [b * factor if factor is not None else lr for b in scheduler.base_lrs]


def _set_momentum(optimizer: torch.optim.Optimizer, momentum: float) -> None:
    for g in optimizer.param_groups:
        if "betas" in g:
            g["betas"] = (momentum, g["betas"][1])
        elif "momentum" in g:
            g["momentum"] = momentum
        else:
            raise NeedsCodeChange(f"{type(optimizer).__name__} has no momentum setting.")


def _hooks(optimizer: torch.optim.Optimizer) -> list:
    hooks = getattr(optimizer, HOOKS_ATTR, None)
    if hooks is None:
        hooks = []
        setattr(optimizer, HOOKS_ATTR, hooks)
    return hooks


def detach_hooks(optimizer: torch.optim.Optimizer) -> None:
    """Remove every step hook a prescription attached (schedules, clipping) from ``optimizer``.

    Args:
        optimizer: an optimizer a prescription was applied to.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from lossdoctor.doctor.prescriptions import detach_hooks
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> _ = ld.Prescription(text="cosine", action={"schedule": "cosine", "steps": 100}).apply(model, opt)
        >>> detach_hooks(opt)
        >>> ld.attached_scheduler(opt) is None
        True
    """
    for handle in getattr(optimizer, HOOKS_ATTR, []):
        handle.remove()
    if hasattr(optimizer, HOOKS_ATTR):
        delattr(optimizer, HOOKS_ATTR)
    if hasattr(optimizer, SCHEDULER_ATTR):
        delattr(optimizer, SCHEDULER_ATTR)


def attached_scheduler(optimizer: torch.optim.Optimizer) -> Any:
    """The lr scheduler a ``{"schedule": ...}`` prescription attached to ``optimizer``.

    Args:
        optimizer: the optimizer the prescription was applied to.

    Returns:
        The scheduler (stepped by a hook after every ``optimizer.step()``), or ``None``.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> model = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
        >>> rx = ld.Prescription(text="cosine decay over 100 steps", action={"schedule": "cosine", "steps": 100})
        >>> _ = rx.apply(model, opt)
        >>> type(ld.attached_scheduler(opt)).__name__
        'CosineAnnealingLR'
    """
    check_optimizer(optimizer)
    return getattr(optimizer, SCHEDULER_ATTR, None)


def _attach_schedule(optimizer: torch.optim.Optimizer, kind: str, steps: int) -> None:
    if kind != "cosine":
        raise ValueError(f"unknown schedule {kind!r}; lossdoctor prescribes 'cosine'.")
    for g in optimizer.param_groups:  # the schedule starts from the current lr
        g["initial_lr"] = g["lr"]
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=int(steps), last_epoch=-1
    )
    # Stepped by the optimizer itself after each step: the user's loop needs no change.
    handle = optimizer.register_step_post_hook(lambda opt, args, kwargs: scheduler.step())
    _hooks(optimizer).append(handle)
    setattr(optimizer, SCHEDULER_ATTR, scheduler)


def _attach_clipping(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    params = _params(optimizer)

    def clip(opt: Any, args: Any, kwargs: Any) -> None:
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], max_norm)

    _hooks(optimizer).append(optimizer.register_step_pre_hook(clip))


def _switch(
    optimizer: torch.optim.Optimizer | None,
    model: nn.Module,
    name: str,
    lr: float,
    extra: dict[str, Any],
) -> torch.optim.Optimizer:
    cls = OPTIMIZERS[name.lower()]
    if optimizer is None:
        groups: list[dict[str, Any]] = [
            {"params": [p for p in model.parameters() if p.requires_grad]}
        ]
        ratios = [1.0]
        decays = [0.0]
    else:
        base = float(optimizer.param_groups[0]["lr"]) or 1.0
        groups = [{"params": list(g["params"])} for g in optimizer.param_groups]
        ratios = [float(g["lr"]) / base for g in optimizer.param_groups]
        decays = [float(g.get("weight_decay", 0.0) or 0.0) for g in optimizer.param_groups]
    for g, r, wd in zip(groups, ratios, decays):
        g["lr"] = lr * r
        g["weight_decay"] = wd
    return cls(groups, lr=lr, **extra)


def apply_action(
    action: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    *,
    payload: Any = None,
    scheduler: Any = None,
    applicable: bool = True,
    text: str = "",
) -> torch.optim.Optimizer | None:
    """Apply one action dict (see the module docstring): what :meth:`Prescription.apply` does.

    Args:
        action: the action (``{"lr": 0.01}``, ...).
        model: the model being trained.
        optimizer: its optimizer, or ``None``.
        payload: tensors the action needs.
        scheduler: the user's own lr scheduler, if any.
        applicable: ``False`` raises :class:`NeedsCodeChange`.
        text: the prescription's text, for that error.

    Returns:
        The optimizer to continue with.

    Raises:
        NeedsCodeChange: ``applicable`` is ``False``.
        ValueError: the action needs an optimizer or checkpoint that was not given.
        TypeError: ``model`` or ``optimizer`` of the wrong type.

    Examples:
        >>> import torch
        >>> from lossdoctor.doctor.prescriptions import apply_action
        >>> model = torch.nn.Linear(2, 1)
        >>> apply_action({"lr": 0.01}, model, torch.optim.SGD(model.parameters(), lr=0.1)).param_groups[0]["lr"]
        0.01
    """
    if not applicable:
        raise NeedsCodeChange(
            f"this prescription changes your code, not the model or optimizer: {text}"
        )
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}."
        )
    act = dict(action)
    if not act or act.get("stop"):
        return optimizer
    needs_opt = any(
        k in act for k in ("lr", "momentum", "weight_decay", "schedule", "clip_grad_norm")
    )
    if optimizer is None and needs_opt and "optimizer" not in act:
        raise ValueError(f"action {act} changes the optimizer: pass the optimizer you train with.")
    _change_model(act, model, optimizer, payload)
    return _change_optimizer(act, model, optimizer, scheduler)


def _change_model(
    act: dict[str, Any], model: nn.Module, optimizer: torch.optim.Optimizer | None, payload: Any
) -> None:
    """The action's changes to the model's weights (the optimizer's state of them is dropped)."""
    if "restore_checkpoint" in act:
        _restore(model, optimizer, payload)
    if "reinitialize" in act:
        _reinitialize(model, int(act["reinitialize"].get("seed", 0)))
        if optimizer is not None:
            optimizer.state.clear()
    if "reinit_dead_units" in act:
        _reinit_units(model, payload, seed=int(act["reinit_dead_units"].get("seed", 0)))
        if optimizer is not None:
            for p in _params(optimizer):
                optimizer.state.pop(p, None)
    if "escape_saddle" in act:
        direction, step = payload
        _shift(model, direction, step)
    if "perturb" in act:
        _perturb(model, float(act["perturb"]["scale"]), int(act["perturb"].get("seed", 0)))


def _restore(model: nn.Module, optimizer: torch.optim.Optimizer | None, payload: Any) -> None:
    """Load the checkpoint (a state dict, or a dict holding one) and drop the optimizer's state."""
    if payload is None:
        raise ValueError(
            "no checkpoint to restore: pass checkpoint= (a state_dict from before the loss "
            "went bad) to diagnose, or use Monitor(checkpoint_every=...)."
        )
    model.load_state_dict(
        payload["state_dict"] if isinstance(payload, dict) and "state_dict" in payload else payload
    )
    if optimizer is not None:
        optimizer.state.clear()


def _change_optimizer(
    act: dict[str, Any], model: nn.Module, optimizer: Any, scheduler: Any
) -> torch.optim.Optimizer | None:
    """The action's changes to the optimizer (a new one for ``"optimizer"``); the one to use."""
    if "optimizer" in act:
        extra: dict[str, Any] = {k: act[k] for k in ("betas", "eps") if k in act}
        if "momentum" in act and act["optimizer"].lower() in ("sgd", "rmsprop"):
            extra["momentum"] = act["momentum"]
        optimizer = _switch(optimizer, model, act["optimizer"], float(act["lr"]), extra)
    elif "lr" in act:
        _set_lr(optimizer, float(act["lr"]), scheduler)
    if "momentum" in act and "optimizer" not in act:
        _set_momentum(optimizer, float(act["momentum"]))
    if "weight_decay" in act:
        for g in optimizer.param_groups:
            g["weight_decay"] = float(act["weight_decay"])
    if "clip_grad_norm" in act:
        _attach_clipping(optimizer, float(act["clip_grad_norm"]))
    if "schedule" in act:
        _attach_schedule(optimizer, act["schedule"], int(act["steps"]))
    return optimizer


def _flat_params(model: nn.Module, names: list[str]) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    missing = [n for n in names if n not in named]
    if missing:
        raise ValueError(
            f"the model has no parameters {missing[:3]}: apply this prescription to the model it "
            "was made for."
        )
    return [named[n] for n in names]


def _shift(model: nn.Module, direction: dict[str, torch.Tensor], step: float) -> None:
    """θ += step · direction (direction given per parameter name)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, d in direction.items():
            p = params[name]
            p.add_(step * d.to(device=p.device, dtype=p.dtype))


def _perturb(model: nn.Module, scale: float, seed: int) -> None:
    """Add Gaussian noise of std ``scale`` (relative to each parameter's RMS, or absolute for an all-zero parameter) to every trainable parameter, from a local generator."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.requires_grad:
                continue
            rms = float(p.detach().double().pow(2).mean().sqrt()) if p.numel() else 0.0
            fan_in = p[0].numel() if p.dim() > 1 else max(p.numel(), 1)
            size = scale * (rms if rms > 0 else 1.0 / math.sqrt(fan_in))
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float64) * size
            p.add_(noise.to(device=p.device, dtype=p.dtype))


def _reinitialize(model: nn.Module, seed: int) -> None:
    """Every module's own ``reset_parameters()`` (torch's default initialization), drawn from a seeded generator inside a saved-and-restored RNG state (the global RNG is left as it was)."""
    devices = [p.device for p in model.parameters() if p.device.type == "cuda"]
    with torch.random.fork_rng(devices=sorted({d.index or 0 for d in devices})):
        torch.manual_seed(seed)
        for module in model.modules():
            reset = getattr(module, "reset_parameters", None)
            if callable(reset):
                reset()


def _reinit_units(model: nn.Module, units: dict[str, list[int]], seed: int) -> None:
    """Re-draw the incoming weights (uniform, ±1/sqrt(fan_in), as torch's Linear/Conv default) and zero the bias of each dead unit; ``units`` maps a weight's name to its dead rows."""
    if not units:
        return
    params = dict(model.named_parameters())
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight_name, rows in units.items():
            w = params[weight_name]
            fan_in = w[0].numel()
            bound = 1.0 / math.sqrt(max(fan_in, 1))
            fresh = (
                torch.rand((len(rows), *w.shape[1:]), generator=gen, dtype=torch.float64) * 2 - 1
            ) * bound
            w[rows] = fresh.to(device=w.device, dtype=w.dtype)
            bias = params.get(weight_name[: -len("weight")] + "bias")
            if bias is not None and bias.shape[0] == w.shape[0]:
                bias[rows] = 0.0
