"""Learning-rate warm-up as a standard PyTorch scheduler.

a linear ramp followed by a constant, cosine, linear, step or inverse-square-root phase; the
Transformer schedule; Goyal et al.'s gradual warm-up with the linear scaling rule.

Every learning rate is a closed-form function of the step, so a scheduler restored from its
``state_dict`` (plain numbers only: ``torch.load(weights_only=True)`` reads it) continues exactly
where it stopped, also in the middle of the warm-up.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypedDict

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from .._checks import check_choice, check_float, check_int, check_optimizer

if TYPE_CHECKING:  # in typing from Python 3.11; typing_extensions comes with torch
    from typing_extensions import Required, Unpack

AFTER_SHAPES = ("constant", "cosine", "linear", "step", "inverse_sqrt")


def warmup_factor(
    step: int,
    *,
    warmup_steps: int,
    total_steps: int | None = None,
    start_factor: float | None = None,
    after: str = "constant",
    min_factor: float = 0.0,
    step_size: int | None = None,
    gamma: float = 0.1,
    d_model: int | None = None,
    scale: float = 1.0,
) -> float:
    """The multiplier of the base learning rate used by update number ``step`` (0-based).

    Warm-up (``step < warmup_steps``): ``start_factor + (1 - start_factor) * step / warmup_steps``.
    Afterwards, with ``u = step - warmup_steps`` and ``D = total_steps - warmup_steps``:
    constant 1; linear ``1 - (1 - min_factor) * u / D``; cosine
    ``min_factor + (1 - min_factor) * (1 + cos(pi * u / D)) / 2``; step ``gamma ** (u // step_size)``;
    inverse_sqrt ``sqrt(warmup_steps / step)``. Linear and cosine stay at ``min_factor`` after
    ``total_steps``. With ``d_model`` (and ``after="inverse_sqrt"``) the factor is the Transformer's
    ``d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)`` with ``s = step + 1``, and the base lr
    is a plain multiplier (1.0 in the paper). Everything is multiplied by ``scale``.

    Args:
        step: the update number (0-based).
        warmup_steps: updates of the linear ramp.
        total_steps: the schedule's length (needed by ``"linear"`` and ``"cosine"``).
        start_factor: the factor at step 0 (default ``1 / warmup_steps``).
        after: ``"constant"``, ``"cosine"``, ``"linear"``, ``"step"`` or ``"inverse_sqrt"``.
        min_factor: where ``"linear"`` and ``"cosine"`` end.
        step_size: updates per stair of ``"step"``.
        gamma: the factor of each stair of ``"step"``.
        d_model: the Transformer schedule's model width (with ``after="inverse_sqrt"``).
        scale: a multiplier of everything (the linear scaling rule's ``k``).

    Returns:
        The multiplier of the base lr at ``step``.

    Examples:
        >>> from lossdoctor.training.schedules import warmup_factor
        >>> warmup_factor(0, warmup_steps=4), warmup_factor(2, warmup_steps=4), warmup_factor(9, warmup_steps=4)
        (0.25, 0.625, 1.0)
        >>> round(warmup_factor(10, warmup_steps=4, total_steps=20, after="cosine"), 4)
        0.6913
    """
    if d_model is not None:
        s = step + 1
        return scale * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)
    sf = 1.0 / warmup_steps if start_factor is None and warmup_steps > 0 else (start_factor or 0.0)
    if step < warmup_steps:
        return scale * (sf + (1.0 - sf) * step / warmup_steps)
    u = step - warmup_steps
    if after == "constant":
        f = 1.0
    elif after in ("linear", "cosine"):
        span = max(int(total_steps) - warmup_steps, 1)  # type: ignore[arg-type]
        progress = min(u / span, 1.0)
        if after == "linear":
            f = 1.0 - (1.0 - min_factor) * progress
        else:
            f = min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif after == "step":
        f = gamma ** (u // int(step_size))  # type: ignore[arg-type]
    elif after == "inverse_sqrt":
        f = math.sqrt(warmup_steps / step) if step > 0 else 1.0
    else:  # validated in check_schedule; kept for direct callers
        raise ValueError(f"after must be one of {AFTER_SHAPES}, got {after!r}.")
    return scale * f


def check_schedule(
    *,
    warmup_steps: int,
    total_steps: int | None,
    start_factor: float | None,
    after: str,
    min_factor: float,
    step_size: int | None,
    gamma: float,
    d_model: int | None,
    scale: float,
) -> None:
    """Raise a ValueError (TypeError for a wrong type) naming the first bad or inconsistent setting.

    Args:
        warmup_steps: as for :func:`warmup`.
        total_steps: as for :func:`warmup`.
        start_factor: as for :func:`warmup`.
        after: as for :func:`warmup`.
        min_factor: as for :func:`warmup`.
        step_size: as for :func:`warmup`.
        gamma: as for :func:`warmup`.
        d_model: as for :func:`warmup`.
        scale: as for :func:`warmup`.

    Raises:
        ValueError: a setting out of range, or settings that do not fit together.
        TypeError: a setting of the wrong type.

    Examples:
        >>> from lossdoctor.training.schedules import check_schedule
        >>> check_schedule(warmup_steps=4, total_steps=None, start_factor=None, after="cosine",
        ...                min_factor=0.0, step_size=None, gamma=0.1, d_model=None, scale=1.0)
        Traceback (most recent call last):
        ...
        ValueError: after='cosine' decays to min_factor at total_steps: pass total_steps.
    """
    check_int(warmup_steps, "warmup_steps", minimum=0)
    check_int(total_steps, "total_steps", minimum=1, optional=True)
    check_float(
        start_factor,
        "start_factor",
        minimum=0.0,
        optional=True,
        hint="It is the multiplier of the lr at step 0.",
    )
    check_choice(after, "after", AFTER_SHAPES)
    check_float(min_factor, "min_factor", minimum=0.0, maximum=1.0)
    check_int(step_size, "step_size", minimum=1, optional=True)
    check_float(gamma, "gamma", above=0.0)
    check_int(d_model, "d_model", minimum=1, optional=True)
    check_float(scale, "scale", above=0.0)
    if after in ("linear", "cosine"):
        if total_steps is None:
            raise ValueError(
                f"after={after!r} decays to min_factor at total_steps: pass total_steps."
            )
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})."
            )
    if after == "step" and step_size is None:
        raise ValueError(
            "after='step' multiplies the lr by gamma every step_size steps: pass step_size >= 1."
        )
    if after == "inverse_sqrt" and warmup_steps < 1:
        raise ValueError(
            "after='inverse_sqrt' decays as sqrt(warmup_steps / step): warmup_steps must be >= 1."
        )
    if d_model is not None and after != "inverse_sqrt":
        raise ValueError(
            "d_model selects the Transformer schedule, which decays as 1/sqrt(step): "
            "use after='inverse_sqrt'."
        )


class ScheduleSettings(TypedDict, total=False):
    """The schedule's settings, by keyword: :func:`warmup_factor` has their defaults and meanings.

    Examples:
        >>> from lossdoctor.training.schedules import ScheduleSettings, warmup_factor
        >>> cosine: ScheduleSettings = {"warmup_steps": 4, "after": "cosine", "total_steps": 20}
        >>> warmup_factor(4, **cosine), warmup_factor(20, **cosine)
        (1.0, 0.0)
    """

    warmup_steps: Required[int]
    total_steps: int | None
    start_factor: float | None
    after: str
    min_factor: float
    step_size: int | None
    gamma: float
    d_model: int | None
    scale: float


class WarmupSettings(ScheduleSettings, total=False):
    """The keyword arguments of :func:`warmup` and :class:`WarmupScheduler`: the schedule's, and ``last_epoch``.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from lossdoctor.training.schedules import WarmupSettings
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> settings: WarmupSettings = {"warmup_steps": 4, "after": "cosine", "total_steps": 20}
        >>> ld.warmup(opt, **settings)
        WarmupScheduler(warmup_steps=4, after='cosine', total_steps=20, step=0)
    """

    last_epoch: int


# warmup_factor's keywords are the one list of the schedule's settings, their types and defaults.
_FACTOR_SIGNATURE = inspect.signature(warmup_factor)
_SETTING_NAMES = tuple(name for name in _FACTOR_SIGNATURE.parameters if name != "step")


def _with_defaults(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Every setting: the given ones, the rest at warmup_factor's defaults (TypeError: one missing or unknown)."""
    try:
        bound = _FACTOR_SIGNATURE.bind(0, **settings)
    except TypeError as err:
        raise TypeError(
            f"warm-up schedule: {err}; its settings are {', '.join(_SETTING_NAMES)}."
        ) from None
    bound.apply_defaults()
    return {name: bound.arguments[name] for name in _SETTING_NAMES}


class WarmupScheduler(LRScheduler):
    """A PyTorch lr scheduler: linear warm-up, then a decay shape.

    ``lr_g(step) = base_lr_g * warmup_factor(step, ...)`` for every parameter group ``g``.
    Build it with :func:`warmup` or :func:`gradual_warmup`, which document the arguments;
    ``last_epoch`` is as for any ``LRScheduler``. Its ``state_dict`` holds plain numbers only.

    Args:
        optimizer: the optimizer whose groups' lr it sets.
        last_epoch: the last update done (-1: start afresh; resuming needs the optimizer's
            ``initial_lr`` from its state_dict).
        **settings: the schedule (:class:`ScheduleSettings`), as for :func:`warmup`.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> sched = ld.WarmupScheduler(opt, warmup_steps=4)
        >>> sched
        WarmupScheduler(warmup_steps=4, after='constant', total_steps=None, step=0)
        >>> sched.factor(2)
        0.625
    """

    def __init__(
        self, optimizer: Optimizer, *, last_epoch: int = -1, **settings: Unpack[ScheduleSettings]
    ) -> None:
        full = _with_defaults(settings)
        check_optimizer(optimizer)
        check_int(last_epoch, "last_epoch", minimum=-1)
        if last_epoch >= 0 and any("initial_lr" not in g for g in optimizer.param_groups):
            raise ValueError(
                f"last_epoch={last_epoch} resumes a schedule, but the optimizer's param groups have "
                "no 'initial_lr': load the optimizer's state_dict (saved with the scheduler's) "
                "first, or start with last_epoch=-1."
            )
        check_schedule(**full)
        # Plain attributes only: they are the scheduler's state_dict.
        self.warmup_steps = int(full["warmup_steps"])
        self.total_steps = _int_or_none(full["total_steps"])
        self.start_factor = None if full["start_factor"] is None else float(full["start_factor"])
        self.after: str = full["after"]
        self.min_factor = float(full["min_factor"])
        self.step_size = _int_or_none(full["step_size"])
        self.gamma = float(full["gamma"])
        self.d_model = _int_or_none(full["d_model"])
        self.scale = float(full["scale"])
        super().__init__(optimizer, last_epoch)

    def factor(self, step: int) -> float:
        """The multiplier of every group's base lr at update ``step`` (0-based).

        Args:
            step: the update number.

        Returns:
            :func:`warmup_factor` at ``step`` with this scheduler's settings.
        """
        return warmup_factor(step, **{name: getattr(self, name) for name in _SETTING_NAMES})

    def get_lr(self) -> list[Any]:
        """Each group's lr at the current step (``LRScheduler``'s hook; read ``get_last_lr()``).

        Returns:
            One lr per parameter group: its base lr times :meth:`factor` of the current step.
        """
        f = self.factor(max(self.last_epoch, 0))
        return [base * f for base in self.base_lrs]

    # step(epoch) jumps straight to a step: the schedule is closed-form anyway.
    _get_closed_form_lr = get_lr

    def __repr__(self) -> str:
        extra = f", d_model={self.d_model}" if self.d_model else ""
        return (
            f"WarmupScheduler(warmup_steps={self.warmup_steps}, after={self.after!r}, "
            f"total_steps={self.total_steps}, step={self.last_epoch}{extra})"
        )


def warmup(optimizer: Optimizer, **settings: Unpack[WarmupSettings]) -> WarmupScheduler:
    """A learning-rate warm-up scheduler for ``optimizer``: call ``.step()`` after every ``optimizer.step()``.

    The lr ramps linearly from ``start_factor * lr`` (default ``lr / warmup_steps``, so no update
    is wasted at lr 0) to each group's ``lr`` over ``warmup_steps`` updates, then follows ``after``:
    ``"constant"``; ``"cosine"`` or ``"linear"`` down to ``min_factor * lr`` at ``total_steps``;
    ``"step"`` (times ``gamma`` every ``step_size`` updates); ``"inverse_sqrt"``
    (``lr * sqrt(warmup_steps / step)``). ``d_model`` with ``after="inverse_sqrt"`` gives the
    Transformer schedule ``lr * d_model**-0.5 * min(s**-0.5, s * warmup_steps**-1.5)``, ``s`` the
    1-based update number (set the optimizer's lr to 1.0 for the paper's values). Each parameter
    group keeps its own base lr. See :func:`gradual_warmup` for the linear scaling rule.

    Args:
        optimizer: any ``torch.optim`` optimizer; its groups' ``lr`` are the targets.
        **settings: the schedule, by keyword (:class:`WarmupSettings`; the defaults are
            :class:`WarmupScheduler`'s).

    Keyword Args:
        warmup_steps: updates of the linear ramp.
        total_steps: the schedule's length (needed by ``"linear"`` and ``"cosine"``).
        start_factor: the lr at step 0 as a fraction of the target (default ``1 / warmup_steps``).
        after: ``"constant"`` (default), ``"cosine"``, ``"linear"``, ``"step"`` or
            ``"inverse_sqrt"``.
        min_factor: where ``"linear"`` and ``"cosine"`` end, as a fraction of the target.
        step_size: updates per stair of ``"step"``.
        gamma: the factor of each stair of ``"step"``.
        d_model: the Transformer schedule's model width (with ``after="inverse_sqrt"``).
        scale: a multiplier of every lr.
        last_epoch: the last update done (-1: start afresh).

    Returns:
        The scheduler; it has set each group's lr to its step-0 value.

    Raises:
        ValueError: a bad or inconsistent setting (``"cosine"`` without ``total_steps``, ...).

    Examples:
        >>> import torch, lossdoctor as ld
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> sched = ld.warmup(opt, warmup_steps=4)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
        ...     opt.step()
        ...     sched.step()
        >>> lrs
        [0.025, 0.0438, 0.0625, 0.0813, 0.1, 0.1]
    """
    return WarmupScheduler(optimizer, **settings)


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


# What help() and inspect.signature show for the scheduler and warmup(): every keyword, with its
# default, as if written out.
_KEYWORDS = [p for name, p in _FACTOR_SIGNATURE.parameters.items() if name in _SETTING_NAMES]
_SIGNATURE = inspect.Signature(
    [
        inspect.Parameter(
            "optimizer", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation="Optimizer"
        ),
        *_KEYWORDS,
        inspect.Parameter(
            "last_epoch", inspect.Parameter.KEYWORD_ONLY, default=-1, annotation="int"
        ),
    ]
)
WarmupScheduler.__signature__ = _SIGNATURE  # type: ignore[attr-defined]
warmup.__signature__ = _SIGNATURE.replace(return_annotation="WarmupScheduler")  # type: ignore[attr-defined]


def linear_scaling_factor(batch_size: int, reference_batch_size: int = 256) -> float:
    """Goyal et al.'s linear scaling rule: multiply the lr by ``batch_size / reference_batch_size``.

    Args:
        batch_size: the batch size trained with.
        reference_batch_size: the batch size the lr was tuned for.

    Returns:
        ``batch_size / reference_batch_size``.

    Examples:
        >>> import lossdoctor as ld
        >>> ld.linear_scaling_factor(1024)
        4.0
    """
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    reference_batch_size = check_int(reference_batch_size, "reference_batch_size", minimum=1)
    return batch_size / reference_batch_size


def gradual_warmup(
    optimizer: Optimizer,
    *,
    batch_size: int,
    warmup_steps: int,
    reference_batch_size: int = 256,
    after: str = "constant",
    **kwargs: Any,
) -> WarmupScheduler:
    """Goyal et al.'s gradual warm-up with the linear scaling rule ("Accurate, Large Minibatch SGD").

    Each group's ``lr`` is the lr that works for ``reference_batch_size`` (256); the target lr
    is ``lr * k`` with ``k = batch_size / reference_batch_size`` (linear scaling rule), reached
    by a linear ramp that starts at ``lr`` itself over ``warmup_steps`` updates (the paper: 5
    epochs). With ``k <= 1`` no warm-up is needed and the ramp is flat.

    Args:
        optimizer: any ``torch.optim`` optimizer, its groups' ``lr`` tuned for
            ``reference_batch_size``.
        batch_size: the batch size trained with.
        warmup_steps: updates of the ramp.
        reference_batch_size: the batch size the lr was tuned for.
        after: as in :func:`warmup`.
        **kwargs: more settings, as in :func:`warmup`.

    Returns:
        The scheduler.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=0.1)
        >>> sched = ld.gradual_warmup(opt, batch_size=1024, warmup_steps=4)
        >>> lrs = []
        >>> for _ in range(6):
        ...     lrs.append(round(opt.param_groups[0]["lr"], 4))
        ...     opt.step()
        ...     sched.step()
        >>> lrs  # from 0.1 up to 4 x 0.1
        [0.1, 0.175, 0.25, 0.325, 0.4, 0.4]
    """
    k = linear_scaling_factor(batch_size, reference_batch_size)
    return warmup(
        optimizer,
        warmup_steps=warmup_steps,
        after=after,
        start_factor=min(1.0, 1.0 / k),
        scale=k,
        **kwargs,
    )


LISTED_STEPS = 10_000  # `lossdoctor schedule --json` lists every step's lr up to this many steps


def schedule_at(lr: float, steps: list[int], **warmup_kwargs: Any) -> list[float]:
    """The lr at each of ``steps`` (0-based updates) under ``warmup(..., **warmup_kwargs)``.

    The scheduler's own closed form, so the cost is one evaluation per step asked for,
    whatever the length of the schedule.

    Args:
        lr: the base lr.
        steps: the updates asked for.
        **warmup_kwargs: the schedule, as for :func:`warmup`.

    Returns:
        The lr at each of ``steps``.

    Examples:
        >>> from lossdoctor.training.schedules import schedule_at
        >>> [round(x, 4) for x in schedule_at(0.1, [0, 3, 9], warmup_steps=4, total_steps=10, after="linear")]
        [0.025, 0.0813, 0.0167]
    """
    check_float(lr, "lr", above=0.0)
    _check_defaults(warmup_kwargs)
    return [lr * warmup_factor(int(s), **warmup_kwargs) for s in steps]


def schedule_peak(lr: float, steps: int, **warmup_kwargs: Any) -> tuple[int, float]:
    """The step and value of the largest lr over the first ``steps`` updates.

    Each phase is monotone (the ramp; then constant, a decay, gamma**k or the Transformer's
    rise to the end of the warm-up and fall), so the largest value sits at an end of a phase (or
    the first step of gamma**k's top stair): a handful of evaluations instead of ``steps``.

    Args:
        lr: the base lr.
        steps: the updates considered.
        **warmup_kwargs: the schedule, as for :func:`warmup`.

    Returns:
        ``(step, lr)``: the first step reaching the largest lr, and that lr.

    Examples:
        >>> from lossdoctor.training.schedules import schedule_peak
        >>> schedule_peak(0.1, 100, warmup_steps=10, total_steps=100, after="cosine")
        (10, 0.1)
    """
    check_int(steps, "steps", minimum=1)
    warmup_steps = int(warmup_kwargs.get("warmup_steps", 0))
    ends = [0, warmup_steps - 1, warmup_steps, steps - 1]
    if (
        warmup_kwargs.get("after") == "step"
        and warmup_kwargs.get("step_size")
        and steps - 1 >= warmup_steps
    ):
        size = int(
            warmup_kwargs["step_size"]
        )  # gamma > 1 climbs in stairs: the first step of the top one
        ends.append(warmup_steps + size * ((steps - 1 - warmup_steps) // size))
    candidates = sorted({s for s in ends if 0 <= s < steps})
    values = schedule_at(lr, candidates, **warmup_kwargs)
    best = max(values)
    return candidates[values.index(best)], best


def _check_defaults(warmup_kwargs: dict[str, Any]) -> None:
    check_schedule(
        **{
            "total_steps": None,
            "start_factor": None,
            "after": "constant",
            "min_factor": 0.0,
            "step_size": None,
            "gamma": 0.1,
            "d_model": None,
            "scale": 1.0,
            **warmup_kwargs,
        }
    )


def schedule_lrs(lr: float, steps: int, **warmup_kwargs: Any) -> list[float]:
    """The lr of each of ``steps`` updates under ``warmup(..., **warmup_kwargs)``, from a real scheduler.

    Read from a real scheduler on a throw-away optimizer (cost: one scheduler step per update;
    see :func:`schedule_at` for a few steps of a long schedule).

    Args:
        lr: the base lr.
        steps: the number of updates.
        **warmup_kwargs: the schedule, as for :func:`warmup`.

    Returns:
        The lr of each update.

    Examples:
        >>> from lossdoctor.training.schedules import schedule_lrs
        >>> [round(x, 4) for x in schedule_lrs(0.1, 5, warmup_steps=4)]
        [0.025, 0.0438, 0.0625, 0.0813, 0.1]
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}.")
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    scheduler = warmup(optimizer, **warmup_kwargs)
    lrs = []
    for _ in range(steps):
        lrs.append(float(optimizer.param_groups[0]["lr"]))
        optimizer.step()
        scheduler.step()
    return lrs
