"""``lossdoctor batch ...``: the batch-size lab on the command line (parsing, progress, output).

Every option is checked while parsing, before any computing (output paths included); errors of the
library and of the user's problem are handled by :class:`lossdoctor.cli._common.CheckedGroup` (exit 2),
and a Ctrl-C prints the partial result the library returns, then exits 130.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._common import (
    POSITIVE,
    IntList,
    console,
    device_option,
    is_rank_zero,
    json_option,
    load,
    mode_option,
    out,
    output_dir,
    plot_option,
    problem_option,
    problem_options,
    progress_bars,
    reduction_option,
    seed_option,
    written,
)


def _emit(payload: dict[str, Any], text: str, as_json: bool) -> None:
    if as_json:
        out.print_json(json.dumps(payload))
    else:
        out.print(text, markup=False)


@click.group()
def batch() -> None:
    """The batch-size lab: time, sweep, sharpness, landscape, noise scale."""


@batch.command("time")
@problem_option
@click.option(
    "--sizes",
    type=IntList(),
    default=None,
    help="Comma-separated batch sizes (default: 1, 2, 4, ... up to the data size).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Timed updates per batch size (median reported).",
)
@click.option(
    "--warmup",
    type=click.IntRange(min=0),
    default=2,
    show_default=True,
    help="Untimed updates first.",
)
@click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: the model's device).")
@click.option(
    "--epoch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Samples per epoch (default: the training set size).",
)
@plot_option("the log-log plot")
@json_option
def time_command(
    problem: str,
    sizes: list[int] | None,
    repeats: int,
    warmup: int,
    device: str | None,
    epoch_size: int | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Time per update and per epoch against batch size, and where the hardware saturates."""
    from ..training.timing import time_batch_sizes

    if device is not None:
        from ._common import resolve_device

        device = str(resolve_device(device))
    prob = load(problem, None, None, shard=False)
    with progress_bars(not as_json) as task:
        timing = time_batch_sizes(
            prob.model,
            prob.loss_fn,
            prob.train_data,
            sizes,
            device=device,
            repeats=repeats,
            warmup=warmup,
            epoch_size=epoch_size,
            progress=task("timing batch sizes"),
        )
    payload = {"problem": prob.name, **timing.to_dict()}
    if plot is not None and is_rank_zero():
        from ..report.batch_time import timing_figure

        payload["plot"] = written(timing_figure(timing, plot), plot)
    _emit(
        payload,
        str(timing) + (f"\nplot: {payload['plot']}" if payload.get("plot") else ""),
        as_json,
    )


@batch.command("sweep")
@problem_option
@click.option(
    "--sizes",
    type=IntList(),
    required=True,
    help="Comma-separated batch sizes, e.g. 16,64,256,1024.",
)
@click.option(
    "--seeds",
    type=IntList(minimum=0),
    default="0,1,2",
    show_default=True,
    help="Comma-separated seeds (one run per size and seed).",
)
@click.option("--epochs", type=POSITIVE, default=None, help="Measure after this many epochs.")
@click.option(
    "--updates", type=click.IntRange(min=1), default=None, help="Measure after this many updates."
)
@click.option(
    "--stop-at-loss",
    "stop_at_loss",
    type=POSITIVE,
    multiple=True,
    help="Measure when the training loss first reaches this (repeatable).",
)
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1),
    default=200,
    show_default=True,
    help="Give up on a loss threshold after this.",
)
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True)
@click.option(
    "--lr-rule", type=click.Choice(["constant", "linear"]), default="constant", show_default=True
)
@click.option(
    "--base-batch",
    type=click.IntRange(min=1),
    default=32,
    show_default=True,
    help="Batch size at which --lr applies (linear rule).",
)
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option(
    "--sharpness",
    "methods",
    default="lambda_max,epsilon",
    show_default=True,
    help="What to measure at each milestone: lambda_max, epsilon, trace (comma-separated, or 'none').",
)
@click.option(
    "--store",
    default=None,
    callback=output_dir,
    help="Directory for results: each run is saved when it finishes; rerun to resume.",
)
@json_option
def sweep_command(
    problem: str,
    sizes: list[int],
    seeds: list[int],
    epochs: float | None,
    updates: int | None,
    stop_at_loss: tuple[float, ...],
    max_epochs: int,
    lr: float,
    lr_rule: str,
    base_batch: int,
    optimizer: str,
    methods: str,
    store: Path | None,
    as_json: bool,
) -> None:
    """Train at each batch size from the same initializations.

    Accuracy and sharpness at equal epochs, equal updates and matched training loss. Resumable with
    --store (Ctrl-C loses at most one run)."""
    from ..training.sweep import batch_size_sweep

    chosen = (
        ()
        if methods.strip() == "none"
        else tuple(m for m in methods.replace(" ", "").split(",") if m)
    )
    unknown = [m for m in chosen if m not in ("lambda_max", "trace", "epsilon")]
    if unknown:
        raise click.BadParameter(
            f"unknown method {unknown[0]!r}: use lambda_max, epsilon, trace (comma-separated) "
            "or none.",
            param_hint="'--sharpness'",
        )
    if epochs is None and updates is None and not stop_at_loss:
        raise click.UsageError(
            "give --epochs, --updates or --stop-at-loss (or several): when to stop and "
            "measure (give epochs=, updates= or stop_at_loss=)."
        )
    prob = load(problem, None, None, shard=False)
    with progress_bars(not as_json) as task:
        result = batch_size_sweep(
            prob,
            sizes,
            epochs=epochs,
            updates=updates,
            stop_at_loss=stop_at_loss,
            max_epochs=max_epochs,
            lr=lr,
            lr_rule=lr_rule,
            base_batch=base_batch,
            optimizer=optimizer,
            seeds=seeds,
            store=store,
            sharpness=chosen,
            progress=task("sweep (runs x 1000)"),
        )
    payload = result.to_dict()
    if as_json:
        for run in payload["runs"]:
            run.pop("curve")  # per-evaluation curves stay in the store's files
    _emit(payload, str(result), as_json)
    if result.interrupted:
        where = (
            f"finished runs are saved in {store}; rerun the same command to resume"
            if store
            else "nothing was saved (use --store DIR to keep finished runs)"
        )
        console.print(f"[yellow]interrupted[/yellow]: {where}.", markup=True)


@batch.command("sharpness")
@problem_options
@click.option(
    "--method",
    "methods",
    type=click.Choice(["lambda_max", "trace", "epsilon"]),
    multiple=True,
    help="Repeatable (default: all three).",
)
@click.option(
    "--epsilon",
    "epsilons",
    type=POSITIVE,
    multiple=True,
    help="Box sizes (default: 1e-3 and 5e-4).",
)
@click.option(
    "--subspace-dim",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Random subspace dimension (0: skip).",
)
@click.option(
    "--max-iter",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="L-BFGS-B iterations (Keskar: 10).",
)
@mode_option("eval")
@seed_option
@device_option
@json_option
def sharpness_command(
    problem: str,
    checkpoint: str | None,
    methods: tuple[str, ...],
    epsilons: tuple[float, ...],
    subspace_dim: int,
    max_iter: int,
    mode: str,
    seed: int,
    as_json: bool,
    device: str = "auto",
) -> None:
    """lambda_max, Hessian trace and Keskar's epsilon-sharpness of the (checkpointed) model."""
    from ..analysis.sharpness import sharpness

    prob = load(problem, checkpoint, device, shard=False)
    with progress_bars(not as_json) as task:
        result = sharpness(
            prob.model,
            prob.loss_fn,
            prob.train_data,
            method=list(methods) or ["lambda_max", "trace", "epsilon"],
            epsilons=epsilons or (1e-3, 5e-4),
            subspace_dim=subspace_dim or None,
            max_iter=max_iter,
            mode=mode,
            seed=seed,
            progress=task("sharpness"),
        )
    _emit(
        {"problem": prob.name, "checkpoint": checkpoint, **result.to_dict()}, str(result), as_json
    )


@batch.command("landscape")
@problem_options
@click.option(
    "--compare",
    type=click.Path(dir_okay=False),
    default=None,
    help="A second checkpoint: plot the interpolation between --checkpoint and it instead.",
)
@click.option("--dims", type=click.Choice(["1", "2"]), default="1", show_default=True)
@click.option(
    "--steps", type=click.IntRange(min=2), default=41, show_default=True, help="Points per axis."
)
@click.option(
    "--span", type=POSITIVE, default=1.0, show_default=True, help="Coordinates from -span to span."
)
@click.option(
    "--normalization",
    type=click.Choice(["filter", "layer", "none"]),
    default="filter",
    show_default=True,
)
@seed_option
@plot_option("the plot", default="landscape.png")
@device_option
@json_option
def landscape_command(
    problem: str,
    checkpoint: str | None,
    compare: str | None,
    dims: str,
    steps: int,
    span: float,
    normalization: str,
    seed: int,
    plot: Path | None,
    as_json: bool,
    device: str = "auto",
) -> None:
    """Filter-normalized 1-D/2-D loss landscape (train and test), or the interpolation to --compare."""
    from ..analysis.landscape import interpolate, landscape
    from ..report.flat_sharp import curve_figure, landscape_figure

    prob = load(problem, checkpoint, device, shard=False)
    other = load(problem, compare, device, shard=False) if compare is not None else None
    with progress_bars(not as_json) as task:
        if other is not None:
            result = interpolate(
                prob.model,
                other.model,
                prob.loss_fn,
                prob.train_data,
                test_data=prob.test_data,
                progress=task("interpolation"),
            )
        else:
            result = landscape(
                prob.model,
                prob.loss_fn,
                prob.train_data,
                dims=int(dims),
                steps=steps,
                span=span,
                normalization=normalization,
                test_data=prob.test_data,
                seed=seed,
                progress=task(f"{dims}-D landscape"),
            )
    payload = {
        "problem": prob.name,
        "checkpoint": checkpoint,
        "compare": compare,
        **result.to_dict(),
    }
    if plot is not None and is_rank_zero():
        path = curve_figure(result, plot) if other is not None else landscape_figure(result, plot)
        payload["plot"] = written(path, plot)
    _emit(
        payload,
        f"{result}" + (f"\nplot: {payload['plot']}" if payload.get("plot") else ""),
        as_json,
    )


@batch.command("noise")
@problem_options
@click.option("--small-batch", type=click.IntRange(min=1), default=32, show_default=True)
@click.option(
    "--big-batch",
    type=click.IntRange(min=2),
    default=None,
    help="Default: the data size (at most 4096).",
)
@click.option(
    "--pairs",
    type=click.IntRange(min=2),
    default=100,
    show_default=True,
    help="(small, big) batch pairs to average.",
)
@click.option(
    "--level",
    type=click.FloatRange(min=0.0, max=1.0, min_open=True, max_open=True),
    default=0.68,
    show_default=True,
    help="Confidence level of B_simple's interval (0.68: about +-1 sigma).",
)
@reduction_option(
    "How the problem's loss combines a batch's samples: mean or sum (the estimate is of the "
    "mean per-sample loss either way). auto: the loss module's .reduction, else mean; a loss "
    "function that sums is detected and refused without --reduction sum."
)
@mode_option("eval")
@seed_option
@device_option
@json_option
def noise_command(
    problem: str,
    checkpoint: str | None,
    small_batch: int,
    big_batch: int | None,
    pairs: int,
    level: float,
    reduction: str,
    mode: str,
    seed: int,
    as_json: bool,
    device: str = "auto",
) -> None:
    """McCandlish's gradient noise scale B_simple, its interval and the batch size it suggests.

    The interval (Fieller's, for a ratio of means) has no upper end when |G|^2 is not significantly
    above 0, as near a minimum: B_simple may then be arbitrarily large ("interval": [lo, null] in
    JSON).
    """
    from ..analysis.noise_scale import gradient_noise_scale

    if big_batch is not None and not small_batch < big_batch:
        raise click.BadParameter(
            f"need --small-batch < --big-batch (small_batch < big_batch), got {small_batch} "
            f"and {big_batch}.",
            param_hint="'--big-batch'",
        )
    prob = load(problem, checkpoint, device, shard=False)
    with progress_bars(not as_json) as task:
        result = gradient_noise_scale(
            prob.model,
            prob.loss_fn,
            prob.train_data,
            small_batch=small_batch,
            big_batch=big_batch,
            pairs=pairs,
            level=level,
            mode=mode,
            seed=seed,
            progress=task("gradient noise scale"),
            reduction=None if reduction == "auto" else reduction,
        )
    _emit(
        {"problem": prob.name, "checkpoint": checkpoint, **result.to_dict()}, str(result), as_json
    )
