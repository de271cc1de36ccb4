"""Command line for the stall doctor: ``lossdoctor diagnose`` and ``lossdoctor train``.

Added to :data:`lossdoctor.cli.main` by :mod:`lossdoctor.cli.commands`; argument parsing,
progress and output only.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from .._results import to_jsonable
from ..training.optimizers import OPTIMIZERS, make_optimizer
from ._common import (
    Number,
    device_option,
    fail,
    json_option,
    load,
    new_file,
    out,
    output_dir,
    problem_options,
    progress_bars,
    save_file,
    window_option,
)


def read_history_file(path: str) -> dict[str, list[float]]:
    """Per-step history from a file.

    JSON (a list of losses, or an object with ``losses`` and optionally
    ``grad_norms``/``grad_cosines``) or CSV (a header with a ``loss`` column and optionally
    ``grad_norm``/``grad_cosine``, or one loss per line without a header)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(
            f"{path} is not a text file: the history must be JSON or CSV text (one loss per line, "
            "or a CSV with a 'loss' column)."
        ) from None
    if Path(path).suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        return _history_json(path, text)
    return _history_csv(path, text)


def _history_json(path: str, text: str) -> dict[str, list[float]]:
    """The history from JSON text: a list of losses, or an object holding them."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if isinstance(data, list):
        return {"losses": data}
    if isinstance(data, dict):
        return {
            k: v
            for k, v in data.items()
            if k
            in (
                "losses",
                "loss",
                "step_loss",
                "grad_norms",
                "grad_norm",
                "grad_cosines",
                "grad_cosine",
            )
        }
    raise ValueError(f"{path}: expected a JSON list of losses or an object with 'losses'.")


def _history_csv(path: str, text: str) -> dict[str, list[float]]:
    """The history from CSV text: a header with a ``loss`` column, or one loss per line."""
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(
            f"{path} is empty: it needs one loss per line (or a CSV with a 'loss' column)."
        )
    header = [c.strip().lower() for c in rows[0]]

    def number(cell: str, line: int) -> float:
        try:
            return float(cell)
        except ValueError:
            raise ValueError(f"{path} line {line}: {cell!r} is not a number.") from None

    if any(h in ("loss", "losses") for h in header):
        col = {name: header.index(name) for name in header}
        pick = {
            "losses": ("loss", "losses"),
            "grad_norms": ("grad_norm", "grad_norms"),
            "grad_cosines": ("grad_cosine", "grad_cosines"),
        }
        out_: dict[str, list[float]] = {}
        for key, names in pick.items():
            name = next((n for n in names if n in col), None)
            if name is not None:
                out_[key] = [
                    number(r[col[name]], i + 2)
                    if col[name] < len(r) and r[col[name]].strip()
                    else math.nan
                    for i, r in enumerate(rows[1:])
                ]
        return out_
    return {"losses": [number(r[-1], i + 1) for i, r in enumerate(rows)]}


TRAIN_OPTIMIZERS = OPTIMIZERS
optimizer_option = click.option(
    "--optimizer",
    "opt_name",
    type=click.Choice(TRAIN_OPTIMIZERS),
    default=None,
    help="The optimizer the history was trained with (default: plain SGD at --lr).",
)
momentum_option = click.option(
    "--momentum",
    type=Number(minimum=0.0, below=1.0),
    default=0.0,
    show_default=True,
    help="SGD/RMSprop momentum in [0, 1) (Adam's beta1 is 0.9).",
)
weight_decay_option = click.option(
    "--weight-decay",
    type=Number(minimum=0.0),
    default=0.0,
    show_default=True,
    help="The optimizer's weight decay.",
)
optimizer_state_option = click.option(
    "--optimizer-state",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="The optimizer's state_dict (torch.save(optimizer.state_dict(), path)): Adam's moments, momentum buffers "
    "(loaded with weights_only=True).",
)


def optimizer_options(lr_help: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """--optimizer, --lr (helped by ``lr_help``), --momentum, --weight-decay, --optimizer-state.

    How the user trains, as diagnose and checkup both ask."""

    def decorate(command: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(
            [
                optimizer_option,
                click.option("--lr", type=float, default=None, help=lr_help),
                momentum_option,
                weight_decay_option,
                optimizer_state_option,
            ]
        ):
            command = option(command)
        return command

    return decorate


def optimizer_from_options(
    name: str,
    params: Any,
    lr: float | None,
    momentum: float,
    weight_decay: float,
    state: str | None,
) -> Any:
    """The optimizer the options describe, with its saved state loaded when given."""
    if lr is None:
        fail("--optimizer needs --lr (the learning rate you train with).")
    optimizer = make_optimizer(name, params, lr, momentum, weight_decay)
    if state is not None:
        import torch

        optimizer.load_state_dict(torch.load(state, weights_only=True))
    return optimizer


def _check_rate(name: str, value: float | None, *, positive: bool = True) -> None:
    if value is None:
        return
    if not math.isfinite(value) or (value <= 0 if positive else value < 0):
        fail(f"{name} must be a finite number {'> 0' if positive else '>= 0'}, got {value}.")


@click.command("diagnose")
@problem_options
@click.option(
    "--history",
    "history_file",
    type=click.Path(exists=True, dir_okay=False),
    required=True,
    help="Recent per-step training losses: a JSON list / object with 'losses' (and optionally "
    "'grad_norms', 'grad_cosines'), or a CSV with a 'loss' column or one loss per line.",
)
@optimizer_options("The learning rate the history was trained with.")
@window_option("Recent steps the trend is read from.")
@click.option(
    "--mode",
    type=click.Choice(["auto", "eval", "train"]),
    default="auto",
    show_default=True,
    help="auto: train mode (BatchNorm on batch statistics, dropout off), checked against the history.",
)
@click.option(
    "--verify/--no-verify",
    default=True,
    show_default=True,
    help="Try each prescription for a short trial against continuing unchanged, and rank by the result.",
)
@click.option(
    "--trial-steps",
    type=click.IntRange(min=2),
    default=None,
    help="Steps per trial (default: the window, doubled once when nothing separates).",
)
@device_option
@json_option
def diagnose_command(
    problem: str,
    checkpoint: str | None,
    history_file: str,
    opt_name: str | None,
    lr: float | None,
    momentum: float,
    weight_decay: float,
    optimizer_state: str | None,
    window: int,
    mode: str,
    verify: bool,
    trial_steps: int | None,
    as_json: bool,
    device: str = "auto",
) -> None:
    """Why did the loss stop going down? The cause, the numbers, and what to change, tried."""
    from .. import diagnose

    _check_rate("--lr", lr)
    _check_rate("--momentum", momentum, positive=False)
    _check_rate("--weight-decay", weight_decay, positive=False)
    if opt_name is not None and lr is None:
        fail("--optimizer needs --lr (the learning rate the history was trained with).")
    if optimizer_state is not None and opt_name is None:
        fail("--optimizer-state needs --optimizer (its type) and --lr.")
    prob = load(problem, checkpoint, device)
    try:
        history = read_history_file(history_file)
        optimizer = None
        if opt_name is not None:
            optimizer = optimizer_from_options(
                opt_name, prob.model.parameters(), lr, momentum, weight_decay, optimizer_state
            )
        prob.model.train()
        with progress_bars(not as_json) as task:
            result = diagnose(
                prob.model,
                prob.loss_fn,
                prob.train_data,
                history=history,
                optimizer=optimizer,
                lr=None if optimizer is not None else lr,
                window=window,
                mode=mode,
                verify=verify if verify is False else "auto",
                trial_steps=trial_steps or "auto",
                progress=task("diagnosis (measurements, trials)"),
            )
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        fail(str(err))
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "problem": prob.name,
                    "checkpoint": checkpoint,
                    "history": history_file,
                    "diagnosis": result.to_dict(),
                }
            )
        )
        return
    m = result.measurements
    if m is not None:
        out.print(f"{prob.name}: {m.samples} samples measured ({m.mode} mode)")
    out.print(str(result), markup=False)


@click.command("train")
@problem_options
@click.option(
    "--optimizer", "opt_name", type=click.Choice(TRAIN_OPTIMIZERS), default="sgd", show_default=True
)
@click.option("--lr", type=float, required=True, help="Learning rate.")
@momentum_option
@weight_decay_option
@click.option(
    "--steps",
    type=click.IntRange(min=1),
    required=True,
    help="Optimizer steps (cycling over the training batches).",
)
@click.option(
    "--sharpness-every",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Estimate λ_max every N steps (0: never).",
)
@window_option("Steps a stall is judged on.")
@click.option(
    "--treat",
    is_flag=True,
    help="Apply the doctor's best verified prescription when the loss stalls (undone if it hurt).",
)
@click.option(
    "--doctor-share",
    type=float,
    default=0.05,
    show_default=True,
    help="The doctor's cost cap, a share of the training steps so far.",
)
@click.option(
    "--budget-clock",
    type=click.Choice(["steps", "wall"]),
    default="steps",
    show_default=True,
    help="Count the doctor's cap in passes (steps: deterministic) or measured seconds (wall: "
    "honest on sub-millisecond steps).",
)
@click.option(
    "--out",
    "out_file",
    default=None,
    callback=new_file(),
    help="Write the trained state_dict to this new .pt file (checked before training; never overwritten).",
)
@click.option(
    "--report",
    "report_dir",
    default=None,
    callback=output_dir,
    help="Write the checkup page (index.html) here: at the first stall, or at the end of training.",
)
@click.option(
    "--report-budget", default="90s", show_default=True, help="Time for that checkup, e.g. 90s, 5m."
)
@device_option
@json_option
def train_command(
    problem: str,
    checkpoint: str | None,
    opt_name: str,
    lr: float,
    momentum: float,
    weight_decay: float,
    steps: int,
    sharpness_every: int,
    window: int,
    treat: bool,
    doctor_share: float,
    budget_clock: str,
    out_file: str | None,
    report_dir: Path | None,
    report_budget: str,
    as_json: bool,
    device: str = "auto",
) -> None:
    """Train with the Monitor attached; prints the doctor's diagnosis when the loss stalls."""
    from ..doctor.monitor import Monitor, train_monitored

    _check_rate("--lr", lr)
    report_seconds = _duration(report_budget, "--report-budget")
    _check_rate("--momentum", momentum, positive=False)
    _check_rate("--weight-decay", weight_decay, positive=False)
    if not 0 < doctor_share <= 1:
        fail(f"--doctor-share must be in (0, 1], got {doctor_share}.")
    prob = load(problem, checkpoint, device)

    def report(diagnosis) -> None:
        if not as_json:
            out.print(str(diagnosis), markup=False)

    try:
        optimizer = make_optimizer(opt_name, prob.model.parameters(), lr, momentum, weight_decay)
        monitor = Monitor(
            prob.model,
            prob.loss_fn,
            prob.train_data,
            sharpness_every=sharpness_every,
            window=window,
            callback=report,
            treat=treat,
            doctor_share=doctor_share,
            budget_clock=budget_clock,  # type: ignore[arg-type]  # click.Choice checked it
        )
        if report_dir is not None:
            from ..report.checkup import attach_checkup

            attach_checkup(monitor, optimizer, report_dir, budget=report_seconds)
        with progress_bars(not as_json) as task:
            run = train_monitored(
                prob.model,
                prob.loss_fn,
                prob.train_data,
                optimizer,
                steps=steps,
                monitor=monitor,
                progress=task(f"training ({opt_name}, lr {lr:g})"),
            )
        page = None
        if report_dir is not None:
            pages = getattr(monitor, "checkup_pages", None)  # attach_checkup's pages
            page = (
                pages[0]
                if pages
                else _final_checkup(prob, optimizer, monitor, report_dir, report_seconds)
            )
    except (ValueError, TypeError) as err:
        fail(str(err))
    written = None
    if out_file is not None:
        import torch

        written = save_file(
            Path(out_file),
            lambda handle: torch.save(prob.model.state_dict(), handle),
            "trained parameters",
        )
    if as_json:
        rec = run.record
        out.print_json(
            json.dumps(
                {
                    "problem": prob.name,
                    "optimizer": opt_name,
                    "lr": lr,
                    **run.to_dict(),
                    "losses": to_jsonable(rec.losses),
                    "sharpness": to_jsonable(rec.sharpness),
                    "doctor_cost": monitor.doctor_cost,
                    "doctor_seconds": monitor.doctor_seconds,
                    "budget_clock": budget_clock,
                    "checkpoint": written,
                    "checkup_page": None if page is None else str(page),
                },
                default=lambda v: None,
            )
        )
        return
    out.print(
        f"{prob.name}: trained {run.steps} steps with {opt_name} (lr {lr:g}); last training loss "
        f"{run.final_loss:.5g}; {len(run.diagnoses)} diagnoses, doctor cost {monitor.doctor_cost:.1f} "
        f"step-equivalents ({monitor.doctor_seconds:.3g} s)"
        + (f"; last sharpness {run.record.sharpness[-1][1]:.4g}" if run.record.sharpness else "")
    )
    for action in run.actions:
        out.print(str(action), markup=False)
    if not run.diagnoses:
        out.print(
            "no stall: the loss kept going down."
            if not monitor.deferred
            else f"a stall was seen {monitor.deferred} times but the doctor's budget (--doctor-share) did not "
            "yet allow a diagnosis."
        )
    if written:
        out.print(f"trained parameters written to {written}")
    if page is not None:
        out.print(f"checkup page: {page}")


def _final_checkup(
    prob: Any, optimizer: Any, monitor: Any, report_dir: Path, budget: float
) -> Path:
    """No stall was diagnosed: the checkup page of the model where training ended."""
    from ..report.checkup import monitor_checkup, write

    return write(
        monitor_checkup(monitor, optimizer, budget=budget),
        report_dir,
        title=f"lossdoctor checkup: {prob.name}",
    )


@click.command("checkup")
@problem_options
@click.option(
    "--history",
    "history_file",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Recent per-step training losses (JSON or CSV, as for diagnose). Without one, your optimizer "
    "trains two windows from an exact snapshot to produce one (then everything is put back).",
)
@optimizer_options("The learning rate you train with.")
@click.option(
    "--budget",
    default="90s",
    show_default=True,
    help="Time for the whole checkup, e.g. 90s, 5m: the sections after the doctor run while time is left.",
)
@click.option(
    "--out",
    "out_dir",
    required=True,
    callback=output_dir,
    help="Folder for index.html, results.json and the figures.",
)
@device_option
@json_option
def checkup_command(
    problem: str,
    checkpoint: str | None,
    history_file: str | None,
    opt_name: str | None,
    lr: float | None,
    momentum: float,
    weight_decay: float,
    optimizer_state: str | None,
    budget: str,
    out_dir: Path,
    as_json: bool,
    device: str = "auto",
) -> None:
    """One report on your model: the verdict, tested prescriptions, and the curvature behind them."""
    from .. import checkup
    from ..report.checkup import write

    _check_rate("--lr", lr)
    seconds = _duration(budget)
    if lr is None:
        fail("checkup needs --lr (and --optimizer when you do not train with plain SGD).")
    prob = load(problem, checkpoint, device)
    try:
        optimizer = optimizer_from_options(
            opt_name or "sgd", prob.model.parameters(), lr, momentum, weight_decay, optimizer_state
        )
        history = read_history_file(history_file) if history_file else None
        prob.model.train()
        with progress_bars(not as_json) as task:
            result = checkup(
                prob.model,
                prob.loss_fn,
                prob.train_data,
                history=history,
                optimizer=optimizer,
                budget=seconds,
                progress=task("checkup"),
            )
    except (ValueError, TypeError, KeyError, RuntimeError) as err:
        fail(str(err))
    page = write(result, out_dir, title=f"lossdoctor checkup: {prob.name}")
    if as_json:
        out.print_json(
            json.dumps(
                {"problem": prob.name, "page": str(page), "checkup": result.to_dict()},
                default=lambda v: None,
            )
        )
        return
    out.print(str(result), markup=False)
    out.print(f"page: {page}")


def _duration(text: str, option: str = "--budget") -> float:
    """'90', '90s', '5m', '1h' -> seconds."""
    value = text.strip().lower()
    unit = {"s": 1, "m": 60, "h": 3600}.get(value[-1:])
    number = value[:-1] if unit else value
    try:
        seconds = float(number) * (unit or 1)
    except ValueError:
        fail(f"{option} {text!r} is not a duration: use e.g. 90s, 5m or 1h.")
    if not math.isfinite(seconds) or seconds <= 0:
        fail(f"{option} must be a positive duration, got {text!r}.")
    return seconds
