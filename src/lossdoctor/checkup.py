"""A checkup of the user's own model.

Why did the loss stop, what to change, and the pictures behind it, in one result (and one page, see
``report.checkup``).

:func:`checkup` runs, cheapest and most decisive first, each under what is left of a time budget:

1. the doctor (:func:`lossdoctor.diagnose`, trials included): the verdict, the tested
   prescriptions with their trial curves against continuing unchanged;
2. the loss history with the window the verdict read (when no history is given, the optimizer
   trains ``window`` steps from an exact snapshot to produce one, and everything is put back);
3. curvature: both ends of the Hessian's spectrum with error bounds, its density, the per-layer
   table;
4. the critical-point test (gradient against its tolerance, the minimum ratio) and, at a saddle,
   the loss along the escape direction;
5. the landscape around the current point (along the top eigenvector and a random
   filter-normalized direction), the gradient noise scale with its batch-size advice, and the
   learning-rate range test around the current lr.

Each section records its cost (seconds, Hessian-vector products) and whether it was cut short
(interrupted, or out of budget: then it is skipped, never guessed). The model, the optimizer and
every RNG are left exactly as they were.

Examples:
    >>> import lossdoctor as ld
    >>> from lossdoctor.zoo import crawling_regression
    >>> model, loss_fn, data, opt, _ = crawling_regression()  # lr 1e-4: far too small
    >>> c = ld.checkup(model, loss_fn, data, optimizer=opt, budget=60)
    >>> c.diagnosis.cause
    'lr_too_small'
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ._checks import (
    check_float,
    check_int,
    check_loss_fn,
    check_module,
    check_optimizer,
    check_seed,
)
from ._results import ResultMixin, fmt
from .analysis.critical import CriticalPoint, classify_critical_point
from .analysis.landscape import Landscape, landscape
from .analysis.layers import LayerCurvature, layer_curvature
from .analysis.noise_scale import NoiseScale, gradient_noise_scale
from .analysis.step_size import check_lr
from .curvature import (
    EigenResult,
    SpectralDensity,
    eigenpairs,
    observed_reduction,
    spectral_density,
)
from .curvature.operator import stepped_hessian
from .data import check_data, is_single_batch
from .doctor.diagnosis import Diagnosis, diagnose
from .doctor.measure import first_samples
from .doctor.trend import WINDOW
from .doctor.trials import default_train_step, next_batches, snapshot, trial_optimizer
from .model_state import trainable_parameters
from .progress import Progress, as_callback, with_progress
from .training.lr_finder import LRRangeResult, lr_range_test
from .types import Mode, Reduction

BUDGET = 90.0  # seconds
CURVATURE_SAMPLES = 256


@dataclass(frozen=True)
class CheckupSection(ResultMixin):
    """What one part of the checkup cost, and whether it ran to the end.

    Attributes:
        key: the section's short name (``"doctor"``, ``"spectrum"``, ``"density"``, ...).
        title: its title on the page.
        seconds: the time it took.
        hvps: Hessian-vector products it spent.
        status: ``"done"``, ``"interrupted"``, ``"skipped: <why>"`` or ``"failed: <why>"``.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> c = ld.checkup(model, loss_fn, data, optimizer=opt, budget=60)
        >>> [(s.key, s.done) for s in c.sections][:3]
        [('doctor', True), ('spectrum', True), ('density', True)]
    """

    key: str
    title: str
    seconds: float
    hvps: int
    status: str  # "done" | "interrupted" | "skipped: ..." | "failed: ..."

    @property
    def done(self) -> bool:
        """Whether the section ran to the end."""
        return self.status == "done"


@dataclass(frozen=True)
class Checkup(ResultMixin):
    """Everything the checkup measured (see :func:`checkup` and the module docstring).

    A part is ``None`` when it was skipped (budget), failed, or does not apply (``sections``
    says which and why).

    Attributes:
        diagnosis: the doctor's verdict with its tried prescriptions.
        history: the loss history the verdict read.
        history_source: where it came from (given, or trained from a snapshot).
        spectrum: both ends of the Hessian's spectrum.
        density: the Hessian's spectral density.
        layers: the per-layer curvature table.
        critical: the critical-point test.
        escape_profile: the loss along the escape direction (at a saddle).
        landscape_top: the loss along the top eigenvector.
        landscape_random: the loss along a random filter-normalized direction.
        noise: the gradient noise scale and its batch-size advice.
        lr_range: the lr range test around the current lr.
        sections: what each part cost and whether it ran to the end.
        budget: the time budget in seconds.
        seconds: the time taken.
        num_params: trainable parameters.
        num_samples: samples measured.
        mode: ``"train"`` or ``"eval"``.
        interrupted: Ctrl-C: the parts finished, flagged.
        top_direction: the top Hessian eigenvector (flat), for drawing.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> c = ld.checkup(model, loss_fn, data, optimizer=opt, budget=60)
        >>> c.diagnosis.cause, c.critical.kind, all(s.done for s in c.sections)
        ('lr_too_small', 'not_critical', True)
    """

    diagnosis: Diagnosis
    history: list[float]
    history_source: str
    spectrum: EigenResult | None
    density: SpectralDensity | None
    layers: LayerCurvature | None
    critical: CriticalPoint | None
    escape_profile: Landscape | None
    landscape_top: Landscape | None
    landscape_random: Landscape | None
    noise: NoiseScale | None
    lr_range: LRRangeResult | None
    sections: tuple[CheckupSection, ...]
    budget: float
    seconds: float
    num_params: int
    num_samples: int
    mode: str
    interrupted: bool = False
    top_direction: torch.Tensor | None = field(default=None, repr=False)

    _skip_in_dict = ("top_direction",)

    def __str__(self) -> str:
        lines = [
            f"checkup ({self.num_params} parameters, {self.num_samples} samples measured, {self.mode} mode, "
            f"{self.seconds:.1f} s of a {self.budget:.0f} s budget)"
            + (" INTERRUPTED" if self.interrupted else ""),
            str(self.diagnosis),
            "sections:",
        ]
        lines += [
            f"  {s.title}: {s.status} ({s.seconds:.1f} s, {s.hvps} products)" for s in self.sections
        ]
        if self.spectrum is not None:
            lines.append(
                f"spectrum ends: {fmt(self.spectrum.smallest, 4)} .. {fmt(self.spectrum.largest, 4)}"
            )
        if self.noise is not None:
            lines.append(str(self.noise))
        if self.lr_range is not None:
            lines.append(f"lr range test: suggested lr {fmt(self.lr_range.suggested_lr)}")
        return "\n".join(lines)


def _probe_history(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    optimizer: Any,
    steps: int,
    train_step: Callable | None,
) -> list[float]:
    """``steps`` training steps of the user's optimizer from an exact snapshot (then put back).

    a loss history for a model that comes without one."""
    step = train_step or default_train_step(loss_fn)
    losses = []
    with snapshot(model, optimizer):
        model.train()
        for batch in next_batches(data, steps):
            loss = step(model, optimizer, batch)
            value = float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
            losses.append(value)
            if not math.isfinite(value):
                break
    return losses


@with_progress("checkup")
def checkup(  # noqa: C901 - the sections in order, each while time is left
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    history: Any = None,
    optimizer: Any = None,
    lr: float | None = None,
    budget: float = BUDGET,
    window: int = WINDOW,
    checkpoint: Any = None,
    train_step: Callable | None = None,
    seed: int = 0,
    progress: Progress | bool | str | None = "auto",
) -> Checkup:
    """One report on the user's model: the verdict, tested prescriptions, and the pictures behind them.

    The doctor's verdict and tested prescriptions first, then the curvature, critical point,
    landscape, noise scale and lr range behind them, each while the time budget lasts. The
    model, the optimizer and every RNG are left exactly as they were; draw it as a page with
    ``lossdoctor.report.checkup``.

    Args:
        model: the model as it stands.
        loss_fn: its loss, ``loss_fn(model(inputs), targets)``.
        data: its training data.
        history: recent per-step training losses; without one, the optimizer trains ``window``
            steps from an exact snapshot to produce one (then everything is put back).
        optimizer: the optimizer training the model.
        lr: the plain-SGD learning rate, when no optimizer is given.
        budget: seconds for the whole checkup; sections after the doctor run while time is left
            (cheapest and most decisive first) and say so when skipped.
        window: as for :func:`lossdoctor.diagnose`.
        checkpoint: as for :func:`lossdoctor.diagnose`.
        train_step: as for :func:`lossdoctor.diagnose`.
        seed: as for :func:`lossdoctor.diagnose`.
        progress: called as ``progress(section done, sections)``.

    Returns:
        A :class:`Checkup`: every part measured, with what each cost.

    Raises:
        ValueError: neither ``optimizer`` nor ``lr`` given, or a bad option.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import crawling_regression
        >>> model, loss_fn, data, opt, _ = crawling_regression()  # lr 1e-4: far too small
        >>> c = ld.checkup(model, loss_fn, data, optimizer=opt, budget=60)
        >>> c.diagnosis.cause, c.noise.suggested_batch_size is not None
        ('lr_too_small', True)
    """
    started = time.perf_counter()
    check_module(model)
    check_loss_fn(loss_fn)
    if optimizer is not None:
        check_optimizer(optimizer)
    budget = check_float(
        budget, "budget", above=0.0, hint="The checkup's time budget in seconds, e.g. 120."
    )
    window = check_int(window, "window", minimum=4)
    lr = check_lr(lr)
    seed = check_seed(seed)
    check_data(data)
    trial_opt = trial_optimizer(model, optimizer, lr)
    if trial_opt is None:  # neither an optimizer nor an lr
        raise ValueError(
            "checkup needs the optimizer you train with (or lr= for plain SGD): the doctor models its "
            "steps and tries its prescriptions with it."
        )
    callback = as_callback(progress)
    sections: list[CheckupSection] = []
    interrupted = False
    total = 10  # the doctor and at most nine sections after it (some apply only to some models)

    def tick() -> None:
        if callback is not None:
            callback(min(len(sections), total), total)

    def left() -> float:
        return budget - (time.perf_counter() - started)

    # 1-2. The history (given, or probed) and the doctor.
    t0 = time.perf_counter()
    source = "given"
    if history is None:
        history = _probe_history(model, loss_fn, data, trial_opt, 2 * window, train_step)
        source = f"a probe run of {len(history)} steps of your optimizer from an exact snapshot (then undone)"
    d = diagnose(
        model,
        loss_fn,
        data,
        history=history,
        optimizer=optimizer,
        lr=None if optimizer is not None else lr,
        window=window,
        checkpoint=checkpoint,
        train_step=train_step,
        seed=seed,
    )
    sections.append(
        CheckupSection(
            "doctor",
            "verdict and tested prescriptions",
            time.perf_counter() - t0,
            int(d.cost.get("hvps", 0)),
            "interrupted" if d.interrupted else "done",
        )
    )
    interrupted |= d.interrupted
    tick()
    hist_values = [
        float(v)
        for v in (
            history
            if not hasattr(history, "losses") and not isinstance(history, dict)
            else (history["losses"] if isinstance(history, dict) else history.losses)
        )
    ]
    mode: Mode = d.measurements.mode if d.measurements is not None else "eval"
    curv = first_samples(data, CURVATURE_SAMPLES)
    results: dict[str, Any] = {}

    def run(key: str, title: str, need: float, fn: Callable[[], Any]) -> Any:
        """Run one section if at least ``need`` seconds of the budget are left."""
        nonlocal interrupted
        if interrupted:
            sections.append(
                CheckupSection(key, title, 0.0, 0, "skipped: the checkup was interrupted")
            )
            return None
        if left() < need:
            sections.append(
                CheckupSection(key, title, 0.0, 0, f"skipped: {left():.0f} s of the budget left")
            )
            return None
        t = time.perf_counter()
        try:
            value = fn()
            status = "interrupted" if getattr(value, "interrupted", False) else "done"
        except KeyboardInterrupt:
            value, status = None, "interrupted"
            interrupted = True
        except (ValueError, TypeError, RuntimeError) as err:
            value, status = None, f"failed: {err}"
        hvps = getattr(value, "matvecs", 0) or 0
        sections.append(CheckupSection(key, title, time.perf_counter() - t, int(hvps), status))
        tick()
        return value

    op_holder: dict[str, Any] = {}

    # A loss function that sums its batch (no .reduction to read) is measured as stepped on by
    # the doctor and the curvature sections; the critical point and the noise scale need the
    # per-sample mean, so they are told what the first batch shows: read inside those sections,
    # so that an error or a Ctrl-C there is the section's, not the whole checkup's.
    @functools.cache
    def reduction() -> Reduction | None:
        return observed_reduction(model, loss_fn, curv)

    def op() -> Any:
        if "op" not in op_holder:
            op_holder["op"] = stepped_hessian(model, loss_fn, curv, mode)
        return op_holder["op"]

    def both_ends() -> EigenResult:
        with warnings.catch_warnings():
            # Unconverged pairs are flagged in the result and drawn with their error bounds on the page.
            warnings.simplefilter("ignore", RuntimeWarning)
            return eigenpairs(op(), k=3, which="both", tol=1e-3, seed=seed, max_matvecs=120)

    spectrum = run("spectrum", "both ends of the spectrum", 2.0, both_ends)
    density = run(
        "density",
        "spectral density",
        2.0,
        lambda: spectral_density(op(), num_probes=2, lanczos_steps=30, seed=seed),
    )
    layers = d.layers or run(
        "layers",
        "per-layer curvature",
        2.0,
        lambda: layer_curvature(
            model,
            loss_fn,
            curv,
            optimizer=optimizer,
            lr=None if optimizer is not None else lr,
            mode=mode,
            probes=1,
            lanczos_steps=8,
            seed=seed,
            op=op(),
            max_blocks=24,
        ),
    )
    if d.layers is not None:
        sections.append(
            CheckupSection("layers", "per-layer curvature", 0.0, 0, "done (from the diagnosis)")
        )

    def critical_point() -> CriticalPoint:
        with warnings.catch_warnings():
            # Unconverged pairs are flagged in the result and said on the page (at a symmetric
            # saddle the search for copies of a repeated eigenvalue outlasts the budget).
            warnings.simplefilter("ignore", RuntimeWarning)
            return classify_critical_point(
                model,
                loss_fn,
                curv,
                mode=mode,
                k=1,
                tol=1e-2,
                seed=seed,
                dense_max_params=300,
                max_matvecs=80,
                num_probes=2,
                lanczos_steps=30,
                reduction=reduction(),
            )

    critical = run("critical", "critical point", 2.0, critical_point)
    m = d.measurements
    escape = None
    if m is not None and m.escape_direction is not None and m.loss is not None:
        names = m.parameter_names
        params = dict(model.named_parameters())
        pieces = torch.split(m.escape_direction, [params[n].numel() for n in names])
        direction = [
            [piece.reshape(params[n].shape).to(params[n].dtype) for n, piece in zip(names, pieces)]
        ]
        reach = math.sqrt(2 * abs(m.loss) / max(abs(m.lambda_min or 1.0), 1e-12))
        escape = run(
            "escape",
            "loss along the escape direction",
            1.0,
            lambda: _along(model, loss_fn, curv, direction, names, 2 * reach, seed),
        )
    top = None
    if (
        m is not None
        and m.top_direction is not None
        and m.lambda_max
        and m.lambda_max > 0
        and m.loss is not None
    ):
        names = m.parameter_names
        params = dict(model.named_parameters())
        pieces = torch.split(m.top_direction, [params[n].numel() for n in names])
        direction = [
            [piece.reshape(params[n].shape).to(params[n].dtype) for n, piece in zip(names, pieces)]
        ]
        span = math.sqrt(2 * max(abs(m.loss), 1e-12) / m.lambda_max)
        top = run(
            "landscape-top",
            "landscape along the top eigenvector",
            1.0,
            lambda: _along(model, loss_fn, curv, direction, names, span, seed),
        )
    rand = run(
        "landscape-random",
        "landscape along a random filter-normalized direction",
        1.0,
        lambda: landscape(model, loss_fn, curv, dims=1, steps=21, span=1.0, seed=seed),
    )
    noise = None
    if not is_single_batch(data) or (m is not None and m.batch_size):
        noise = run(
            "noise",
            "gradient noise scale",
            2.0,
            lambda: gradient_noise_scale(
                model,
                loss_fn,
                data,
                small_batch=max(2, min(32, m.batch_size or 32)),
                pairs=20,
                seed=seed,
                reduction=reduction(),
            ),
        )
    lr_range = run(
        "lr-range",
        "learning-rate range test around the current lr",
        2.0,
        lambda: _range_around(model, loss_fn, data, trial_opt),
    )
    results.update(
        spectrum=spectrum,
        density=density,
        layers=layers,
        critical=critical,
        escape_profile=escape,
        landscape_top=top,
        landscape_random=rand,
        noise=noise,
        lr_range=lr_range,
    )
    if (
        callback is not None
    ):  # sections that did not apply still count as done: the bar ends at 100%
        callback(total, total)
    return Checkup(
        diagnosis=d,
        history=hist_values,
        history_source=source,
        sections=tuple(sections),
        budget=budget,
        seconds=time.perf_counter() - started,
        num_params=sum(p.numel() for p in model.parameters() if p.requires_grad),
        num_samples=m.samples if m is not None else 0,
        mode=mode,
        interrupted=interrupted,
        top_direction=None if m is None else m.top_direction,
        **results,
    )


def _along(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    direction: list,
    names: tuple[str, ...],
    span: float,
    seed: int,
) -> Landscape:
    """The loss along ``direction`` (given per parameter name, in ``names`` order) through the current point; trainable parameters outside ``names`` get a zero direction."""
    by_name = dict(zip(names, direction[0]))
    full = [[by_name.get(n, torch.zeros_like(p)) for n, p in trainable_parameters(model)]]
    return landscape(
        model,
        loss_fn,
        data,
        dims=1,
        steps=25,
        span=span,
        seed=seed,
        directions=full,
        ignore_bias_bn=False,
    )


def _range_around(
    model: nn.Module, loss_fn: Any, data: Any, optimizer: torch.optim.Optimizer
) -> LRRangeResult:
    """The lr range test over three decades around the current lr (the model and optimizer are put back)."""
    lr = float(optimizer.param_groups[0]["lr"])
    return lr_range_test(
        model, loss_fn, data, optimizer, start_lr=lr / 100, end_lr=lr * 100, steps=60
    )
