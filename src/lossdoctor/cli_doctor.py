"""Command line for the stall doctor: ``lossdoctor diagnose`` and ``lossdoctor train``.

Added to :data:`lossdoctor.cli.main` by ``cli``; argument parsing,
progress and output only.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import click

from ._results import to_jsonable
from .cli import (
    _fail,
    _load,
    checkpoint_option,
    device_option,
    json_option,
    out,
    problem_option,
    progress_bars,
)

TRAIN_OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")


def read_history_file(path: str) -> dict[str, list[float]]:
    """Per-step history from a file: JSON (a list of losses, or an object with ``losses`` and
    optionally ``grad_norms``/``grad_cosines``) or CSV (a header with a ``loss`` column and
    optionally ``grad_norm``/``grad_cosine``, or one loss per line without a header)."""
    text = Path(path).read_text(encoding="utf-8")
    if Path(path).suffix.lower() == ".json" or text.lstrip()[:1] in ("[", "{"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not valid JSON: {err}") from None
        if isinstance(data, list):
            return {"losses": data}
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if k in ("losses", "loss", "step_loss", "grad_norms",
                                                            "grad_norm", "grad_cosines", "grad_cosine")}
        raise ValueError(f"{path}: expected a JSON list of losses or an object with 'losses'.")
    rows = [r for r in csv.reader(text.splitlines()) if r and any(c.strip() for c in r)]
    if not rows:
        raise ValueError(f"{path} is empty: it needs one loss per line (or a CSV with a 'loss' column).")
    header = [c.strip().lower() for c in rows[0]]

    def number(cell: str, line: int) -> float:
        try:
            return float(cell)
        except ValueError:
            raise ValueError(f"{path} line {line}: {cell!r} is not a number.") from None

    if any(h in ("loss", "losses") for h in header):
        col = {name: header.index(name) for name in header}
        pick = {"losses": ("loss", "losses"), "grad_norms": ("grad_norm", "grad_norms"),
                "grad_cosines": ("grad_cosine", "grad_cosines")}
        out_: dict[str, list[float]] = {}
        for key, names in pick.items():
            name = next((n for n in names if n in col), None)
            if name is not None:
                out_[key] = [number(r[col[name]], i + 2) if col[name] < len(r) and r[col[name]].strip() else math.nan
                             for i, r in enumerate(rows[1:])]
        return out_
    return {"losses": [number(r[-1], i + 1) for i, r in enumerate(rows)]}


@click.command("diagnose")
@problem_option
@checkpoint_option
@click.option("--history", "history_file", type=click.Path(exists=True, dir_okay=False), required=True,
              help="Recent per-step training losses: a JSON list / object with 'losses' (and optionally "
                   "'grad_norms', 'grad_cosines'), or a CSV with a 'loss' column or one loss per line.")
@click.option("--lr", type=float, default=None, help="The learning rate the history was trained with.")
@click.option("--window", default=60, show_default=True, help="Recent steps the trend is read from.")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@device_option
@json_option
def diagnose_command(problem: str, checkpoint: str | None, history_file: str, lr: float | None, window: int,
                     mode: str, as_json: bool, device: str = "auto") -> None:
    """Why did the loss stop going down? The cause, the numbers, and what to change."""
    from . import diagnose

    prob = _load(problem, checkpoint, device)
    try:
        history = read_history_file(history_file)
        result = diagnose(prob.model, prob.loss_fn, prob.train_data, history=history, lr=lr, window=window,
                          mode=mode)
    except (ValueError, TypeError) as err:
        _fail(str(err))
    if as_json:
        out.print_json(json.dumps({"problem": prob.name, "checkpoint": checkpoint, "history": history_file,
                                   "diagnosis": result.to_dict()}))
        return
    out.print(f"{prob.name}: {result.num_params} parameters, {result.num_samples} samples")
    out.print(str(result), markup=False)


def _make_optimizer(name: str, params: Any, lr: float, momentum: float):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, momentum=momentum)
    if name == "adagrad":
        return torch.optim.Adagrad(params, lr=lr)
    return (torch.optim.AdamW if name == "adamw" else torch.optim.Adam)(params, lr=lr)


@click.command("train")
@problem_option
@checkpoint_option
@click.option("--optimizer", "opt_name", type=click.Choice(TRAIN_OPTIMIZERS), default="sgd", show_default=True)
@click.option("--lr", type=float, required=True, help="Learning rate.")
@click.option("--momentum", default=0.0, show_default=True, help="Momentum (sgd, rmsprop).")
@click.option("--steps", type=int, required=True, help="Optimizer steps (cycling over the training batches).")
@click.option("--sharpness-every", type=int, default=None,
              help="Estimate λ_max every N steps (0: never; default: every 1000 steps, less often where "
                   "that would cost over 1% of training time).")
@click.option("--window", default=60, show_default=True, help="Steps a stall is judged on.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="Write the trained state_dict to this new file (never overwritten).")
@device_option
@json_option
def train_command(problem: str, checkpoint: str | None, opt_name: str, lr: float, momentum: float, steps: int,
                  sharpness_every: int | None, window: int, out_file: str | None, as_json: bool, device: str = "auto") -> None:
    """Train with the Monitor attached; prints the doctor's diagnosis when the loss stalls."""
    from .doctor.monitor import Monitor, train_monitored

    if out_file is not None and Path(out_file).exists():
        _fail(f"{out_file} already exists; lossdoctor never overwrites a file: choose another --out.")
    if not (math.isfinite(lr) and lr > 0):
        _fail(f"--lr must be a finite number > 0, got {lr}.")
    prob = _load(problem, checkpoint, device)

    def report(diagnosis) -> None:
        if not as_json:
            out.print(str(diagnosis), markup=False)

    try:
        optimizer = _make_optimizer(opt_name, prob.model.parameters(), lr, momentum)
        monitor = Monitor(prob.model, prob.loss_fn, prob.train_data, sharpness_every=sharpness_every,
                          window=window, callback=report)
        with progress_bars(not as_json) as task:
            run = train_monitored(prob.model, prob.loss_fn, prob.train_data, optimizer, steps=steps,
                                  monitor=monitor, progress=task(f"training ({opt_name}, lr {lr:g})"))
    except (ValueError, TypeError) as err:
        _fail(str(err))
    written = None
    if out_file is not None:
        import torch

        with open(out_file, "xb") as handle:  # exclusive create: never overwrite
            torch.save(prob.model.state_dict(), handle)
        written = out_file
    if as_json:
        rec = run.record
        out.print_json(json.dumps({"problem": prob.name, "optimizer": opt_name, "lr": lr, **run.to_dict(),
                                   "losses": to_jsonable(rec.losses), "sharpness": to_jsonable(rec.sharpness), "checkpoint": written},
                                  default=lambda v: None))
        return
    out.print(f"{prob.name}: trained {run.steps} steps with {opt_name} (lr {lr:g}); last training loss "
              f"{run.final_loss:.5g}; {len(run.diagnoses)} diagnoses"
              + (f"; last sharpness {run.record.sharpness[-1][1]:.4g}" if run.record.sharpness else ""))
    if not run.diagnoses:
        out.print("no stall: the loss kept going down.")
    if written:
        out.print(f"trained parameters written to {written}")
