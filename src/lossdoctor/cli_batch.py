"""``lossdoctor batch ...``: the batch-size lab on the command line (parsing, progress, output)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from .cli import (
    _fail,
    _is_rank_zero,
    _load,
    checkpoint_option,
    console,
    device_option,
    json_option,
    out,
    problem_option,
    progress_bars,
)


def _ints(text: str | None, what: str) -> list[int] | None:
    if text is None:
        return None
    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        _fail(f"{what} must be comma-separated integers, e.g. 16,64,256; got {text!r}.")
    if not values:
        _fail(f"{what} is empty.")
    return values


def _emit(payload: dict[str, Any], text: str, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(payload))
    else:
        out.print(text)


@click.group()
def batch() -> None:
    """The batch-size lab: time, sweep, sharpness, landscape, noise scale."""


@batch.command("time")
@problem_option
@click.option("--sizes", default=None, help="Comma-separated batch sizes (default: 1, 2, 4, ... up to the data size).")
@click.option("--repeats", default=5, show_default=True, help="Timed updates per batch size (median reported).")
@click.option("--warmup", default=2, show_default=True, help="Untimed updates first.")
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the model's device).")
@click.option("--epoch-size", type=int, default=None, help="Samples per epoch (default: the training set size).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the log-log plot here.")
@json_option
def time_command(problem: str, sizes: str | None, repeats: int, warmup: int, device: str | None,
                 epoch_size: int | None, plot: str | None, as_json: bool) -> None:
    """Time per update and per epoch against batch size, and where the hardware saturates."""
    from .training.timing import time_batch_sizes

    prob = _load(problem, None, None, shard=False)
    with progress_bars(not as_json) as task:
        try:
            timing = time_batch_sizes(prob.model, prob.loss_fn, prob.train_data, _ints(sizes, "--sizes"),
                                      device=device, repeats=repeats, warmup=warmup, epoch_size=epoch_size,
                                      progress=task("timing batch sizes"))
        except (ValueError, TypeError, RuntimeError) as err:
            _fail(str(err))
    payload = {"problem": prob.name, **timing.to_dict()}
    if plot and _is_rank_zero():
        from .report.batch_time import timing_figure

        payload["plot"] = str(timing_figure(timing, Path(plot)))
    _emit(payload, str(timing) + (f"\nplot: {plot}" if plot else ""), as_json)


@batch.command("sweep")
@problem_option
@click.option("--sizes", required=True, help="Comma-separated batch sizes, e.g. 16,64,256,1024.")
@click.option("--seeds", default="0,1,2", show_default=True, help="Comma-separated seeds (one run per size and seed).")
@click.option("--epochs", type=float, default=None, help="Measure after this many epochs.")
@click.option("--updates", type=int, default=None, help="Measure after this many updates.")
@click.option("--stop-at-loss", "stop_at_loss", type=float, multiple=True,
              help="Measure when the training loss first reaches this (repeatable).")
@click.option("--max-epochs", default=200, show_default=True, help="Give up on a loss threshold after this.")
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--lr-rule", type=click.Choice(["constant", "linear"]), default="constant", show_default=True)
@click.option("--base-batch", default=32, show_default=True, help="Batch size at which --lr applies (linear rule).")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--sharpness", "methods", default="lambda_max,epsilon", show_default=True,
              help="What to measure at each milestone: lambda_max, epsilon, trace (comma-separated, or 'none').")
@click.option("--store", type=click.Path(file_okay=False), default=None,
              help="Directory for results: each run is saved when it finishes; rerun to resume.")
@json_option
def sweep_command(problem: str, sizes: str, seeds: str, epochs: float | None, updates: int | None,
                  stop_at_loss: tuple[float, ...], max_epochs: int, lr: float, lr_rule: str, base_batch: int,
                  optimizer: str, methods: str, store: str | None, as_json: bool) -> None:
    """Train at each batch size from the same initializations; accuracy and sharpness at equal epochs,
    equal updates and matched training loss. Resumable with --store (Ctrl-C loses at most one run)."""
    from .training.sweep import batch_size_sweep

    prob = _load(problem, None, None, shard=False)
    chosen = () if methods.strip() == "none" else tuple(m for m in methods.replace(" ", "").split(",") if m)
    with progress_bars(not as_json) as task:
        try:
            result = batch_size_sweep(prob, _ints(sizes, "--sizes"), epochs=epochs, updates=updates,
                                      stop_at_loss=stop_at_loss, max_epochs=max_epochs, lr=lr, lr_rule=lr_rule,
                                      base_batch=base_batch, optimizer=optimizer, seeds=_ints(seeds, "--seeds"),
                                      store=store, sharpness=chosen, progress=task("sweep (runs x 1000)"))
        except KeyboardInterrupt:
            where = f"finished runs are saved in {store}; rerun the same command to resume" if store else \
                "nothing was saved (use --store DIR to keep finished runs)"
            console.print(f"[yellow]interrupted[/yellow]: {where}.")
            sys.exit(130)
        except (ValueError, TypeError) as err:
            _fail(str(err))
    payload = result.to_dict()
    if as_json:
        for run in payload["runs"]:
            run.pop("curve")  # per-evaluation curves stay in the store's files
    _emit(payload, str(result), as_json)


@batch.command("sharpness")
@problem_option
@checkpoint_option
@click.option("--method", "methods", type=click.Choice(["lambda_max", "trace", "epsilon"]), multiple=True,
              help="Repeatable (default: all three).")
@click.option("--epsilon", "epsilons", type=float, multiple=True, help="Box sizes (default: 1e-3 and 5e-4).")
@click.option("--subspace-dim", default=100, show_default=True, help="Random subspace dimension (0: skip).")
@click.option("--max-iter", default=10, show_default=True, help="L-BFGS-B iterations (Keskar: 10).")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--seed", default=0, show_default=True)
@device_option
@json_option
def sharpness_command(problem: str, checkpoint: str | None, methods: tuple[str, ...], epsilons: tuple[float, ...],
                      subspace_dim: int, max_iter: int, mode: str, seed: int, as_json: bool, device: str = "auto") -> None:
    """lambda_max, Hessian trace and Keskar's epsilon-sharpness of the (checkpointed) model."""
    from .analysis.sharpness import sharpness

    prob = _load(problem, checkpoint, device, shard=False)
    with progress_bars(not as_json) as task:
        try:
            result = sharpness(prob.model, prob.loss_fn, prob.train_data,
                               method=list(methods) or ["lambda_max", "trace", "epsilon"],
                               epsilons=epsilons or (1e-3, 5e-4), subspace_dim=subspace_dim or None,
                               max_iter=max_iter, mode=mode, seed=seed, progress=task("sharpness"))
        except (ValueError, TypeError) as err:
            _fail(str(err))
    _emit({"problem": prob.name, "checkpoint": checkpoint, **result.to_dict()}, str(result), as_json)


@batch.command("landscape")
@problem_option
@checkpoint_option
@click.option("--compare", type=click.Path(dir_okay=False), default=None,
              help="A second checkpoint: plot the interpolation between --checkpoint and it instead.")
@click.option("--dims", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option("--steps", default=41, show_default=True, help="Points per axis.")
@click.option("--span", default=1.0, show_default=True, help="Coordinates from -span to span.")
@click.option("--normalization", type=click.Choice(["filter", "layer", "none"]), default="filter", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default="landscape.png", show_default=True)
@device_option
@json_option
def landscape_command(problem: str, checkpoint: str | None, compare: str | None, dims: str, steps: int, span: float,
                      normalization: str, seed: int, plot: str, as_json: bool, device: str = "auto") -> None:
    """Filter-normalized 1-D/2-D loss landscape (train and test), or the interpolation to --compare."""
    from .analysis.landscape import interpolate, landscape
    from .report.flat_sharp import curve_figure, landscape_figure

    prob = _load(problem, checkpoint, device, shard=False)
    with progress_bars(not as_json) as task:
        try:
            if compare is not None:
                other = _load(problem, compare, device, shard=False)
                result = interpolate(prob.model, other.model, prob.loss_fn, prob.train_data,
                                     test_data=prob.test_data, progress=task("interpolation"))
            else:
                result = landscape(prob.model, prob.loss_fn, prob.train_data, dims=int(dims), steps=steps, span=span,
                                   normalization=normalization, test_data=prob.test_data, seed=seed,
                                   progress=task(f"{dims}-D landscape"))
        except (ValueError, TypeError) as err:
            _fail(str(err))
    payload = {"problem": prob.name, "checkpoint": checkpoint, "compare": compare, **result.to_dict()}
    if plot and _is_rank_zero():
        path = curve_figure(result, Path(plot)) if compare else landscape_figure(result, Path(plot))
        payload["plot"] = str(path)
    _emit(payload, f"{result}\nplot: {plot}", as_json)


@batch.command("noise")
@problem_option
@checkpoint_option
@click.option("--small-batch", default=32, show_default=True)
@click.option("--big-batch", type=int, default=None, help="Default: the data size (at most 4096).")
@click.option("--pairs", default=100, show_default=True, help="(small, big) batch pairs to average.")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--seed", default=0, show_default=True)
@device_option
@json_option
def noise_command(problem: str, checkpoint: str | None, small_batch: int, big_batch: int | None, pairs: int,
                  mode: str, seed: int, as_json: bool, device: str = "auto") -> None:
    """McCandlish's gradient noise scale B_simple and the batch size it suggests."""
    from .analysis.noise_scale import gradient_noise_scale

    prob = _load(problem, checkpoint, device, shard=False)
    with progress_bars(not as_json) as task:
        try:
            result = gradient_noise_scale(prob.model, prob.loss_fn, prob.train_data, small_batch=small_batch,
                                          big_batch=big_batch, pairs=pairs, mode=mode, seed=seed,
                                          progress=task("gradient noise scale"))
        except (ValueError, TypeError) as err:
            _fail(str(err))
    _emit({"problem": prob.name, "checkpoint": checkpoint, **result.to_dict()}, str(result), as_json)
