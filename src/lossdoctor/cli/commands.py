"""The ``lossdoctor`` command group and its curvature, training and tour commands.

The batch lab's and the doctor's commands live in :mod:`lossdoctor.cli.batch` and
:mod:`lossdoctor.cli.doctor`. Parsing, progress and output only: every number comes from the
library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

import click
from rich.markup import escape

from .. import _interrupt
from ..types import Mode, Reduction
from ._common import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    NON_NEGATIVE,
    POSITIVE,
    UNIT_INTERVAL,
    CheckedGroup,
    Number,
    cache_setting,
    console,
    device_option,
    fail,
    init_distributed,
    is_rank_zero,
    json_option,
    load,
    mode_option,
    note,
    out,
    output_dir,
    plot_option,
    problem_options,
    progress_bars,
    reduction_option,
    save_file,
    seed_option,
    written,
)


@click.group(
    cls=CheckedGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES
)
@click.version_option(package_name="lossdoctor")
def main() -> None:
    """lossdoctor: why did my training loss stop going down, and what should I change?"""
    init_distributed()


def interrupted(*results: Any) -> bool:
    """Whether any of ``results`` is a partial result of a Ctrl-C (then the command's exit status is 130 once it has printed and saved them)."""
    cut = any(r is not None and _interrupt.was_interrupted(r) for r in results)
    if cut:
        _interrupt.note()
    return cut


params_option = click.option(
    "--params",
    "param_patterns",
    multiple=True,
    metavar="PATTERN",
    help="Only these parameters (repeatable): a name as named_parameters() gives it (fc.weight), a module's "
    'name (layer2), or a glob pattern ("layer2.*", "*.bias"). The Hessian is then the block of those '
    "parameters, the others held fixed; requires_grad is not changed. Default: every trainable parameter.",
)


def _selection(model: Any, patterns: tuple[str, ...]) -> list[str] | None:
    """``--params``: the patterns as ``params=`` takes them (None: all), checked against the model before any computing so that a typo exits 2 naming the option."""
    if not patterns:
        return None
    from ..model_state import selected_parameters

    try:
        selected_parameters(model, list(patterns))
    except (ValueError, TypeError) as err:
        fail(f"--params {' '.join(patterns)}: {err}")
    return list(patterns)


@main.command()
@problem_options
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Eigenpairs per end of the spectrum.",
)
@click.option(
    "--which",
    type=click.Choice(["largest", "smallest", "both", "largest_magnitude"]),
    default="both",
    show_default=True,
)
@click.option(
    "--tol",
    type=POSITIVE,
    default=1e-6,
    show_default=True,
    help="Relative accuracy of the eigenvalues.",
)
@click.option(
    "--miss-probability",
    type=Number(above=0.0, below=1.0),
    default=1e-3,
    show_default=True,
    help="Failure probability allowed to the search for missed eigenvalues (hidden copies of "
    "repeated ones): smaller costs more products. The bound reached is printed with the pairs.",
)
@click.option(
    "--trace-matvecs",
    type=click.IntRange(min=0),
    default=99,
    show_default=True,
    help="Products for the Hutch++ trace (0: skip; otherwise at least 3).",
)
@click.option(
    "--density/--no-density", default=True, show_default=True, help="Spectral density (SLQ)."
)
@mode_option(None)
@click.option(
    "--micro-batch-size",
    type=click.IntRange(min=1),
    default=None,
    help="Cut larger batches into micro-batches of this many samples: the memory of one "
    "Hessian-vector product no longer grows with the batch size (checked to give the same Hessian).",
)
@click.option(
    "--cache",
    default="auto",
    show_default=True,
    callback=lambda ctx, param, value: cache_setting(value),
    help="Keep the gradient graphs between products: faster, but holds them in memory. "
    "auto: within a quarter of the free memory; on; off; or a size such as 200MB "
    "(the graphs of the first batches that fit are kept, the rest recomputed).",
)
@reduction_option(
    "How the problem's loss combines a batch's samples: mean or sum (the Hessian is of the mean "
    "per-sample loss either way). auto: the loss module's .reduction, else mean; a loss function "
    "that sums is detected and refused without --reduction sum."
)
@seed_option
@click.option(
    "--per-layer",
    is_flag=True,
    help="Also the per-layer table: each module's Hessian block (λ_max, trace), gradient norm, and the "
    "block heterogeneity (mean Jensen-Shannon distance of the blockwise spectra).",
)
@plot_option("the density plot", default="spectrum-density.png")
@params_option
@device_option
@json_option
def spectrum(
    problem: str,
    checkpoint: str | None,
    k: int,
    which: str,
    tol: float,
    miss_probability: float,
    trace_matvecs: int,
    density: bool,
    mode: Mode | None,
    micro_batch_size: int | None,
    cache: bool | str | int,
    reduction: Reduction | Literal["auto"],
    seed: int,
    per_layer: bool,
    plot: Path | None,
    param_patterns: tuple[str, ...],
    device: str,
    as_json: bool,
) -> None:
    """Hessian eigenvalues (both ends), trace and spectral density of a problem."""
    from .. import eigenpairs, hessian, spectral_density, trace

    if trace_matvecs in (1, 2):
        fail(
            f"--trace-matvecs {trace_matvecs}: Hutch++ needs at least 3 products (or 0 to skip the trace)."
        )
    prob = load(problem, checkpoint, device)
    results: dict[str, Any] = {
        "problem": prob.name,
        "device": str(next(prob.model.parameters()).device),
    }
    params = _selection(prob.model, param_patterns)
    op = hessian(
        prob.model,
        prob.loss_fn,
        prob.train_data,
        mode=mode,
        micro_batch_size=micro_batch_size,
        cache=cache,
        reduction=None if reduction == "auto" else reduction,
        params=params,
    )
    results.update(
        num_params=op.num_params,
        num_samples=op.num_samples,
        mode=op.mode,
        loss=op.loss,
        micro_batch_size=micro_batch_size,
        cache=cache,
        parameters=None if params is None else list(op.names),
    )
    eig = tr = dens = layers = None
    with progress_bars(not as_json) as task:
        try:  # each part returns its partial result on Ctrl-C (flagged); the later parts are skipped
            eig = eigenpairs(
                op,
                k=k,
                which=which,
                tol=tol,
                seed=seed,
                miss_probability=miss_probability,
                progress=task("eigenpairs"),
            )
            results["eigenpairs"] = eig.to_dict()
            if trace_matvecs > 0 and not interrupted(eig):
                tr = trace(op, matvecs=trace_matvecs, seed=seed, progress=task("trace (Hutch++)"))
                results["trace"] = tr.to_dict()
            if density and not interrupted(eig, tr):
                dens = spectral_density(op, seed=seed, progress=task("spectral density (SLQ)"))
                results["density"] = {
                    key: value
                    for key, value in dens.to_dict().items()
                    if key not in ("grid", "density", "nodes", "weights")
                }
            if per_layer and not interrupted(eig, tr, dens):
                from .. import layer_curvature

                layers = layer_curvature(
                    prob.model,
                    prob.loss_fn,
                    prob.train_data,
                    mode=mode,
                    seed=seed,
                    op=op,
                    progress=task("per-layer curvature"),
                )
                results["per_layer"] = layers.to_dict()
        except KeyboardInterrupt:
            _interrupt.note()
            results["interrupted"] = True
    results["cached_batches"] = op.cached_batches
    interrupted(eig, tr, dens)
    if dens is not None and plot is not None and is_rank_zero() and not interrupted(dens):
        from ..report.spectrum import density_figure

        results["density_plot"] = written(density_figure(dens, plot), plot, "density plot")
    if as_json:
        out.print_json(json.dumps(results))
        return
    unit = ("micro-batch" if micro_batch_size else "batch") + (
        "" if op.cached_batches == 1 else "es"
    )
    out.print(
        f"{op!r}\nmean loss {op.loss:.6g}; gradient graphs of {op.cached_batches} {unit} kept between products"
    )
    for part in (eig, tr, dens):
        if part is not None:
            out.print(str(part))
    if results.get("density_plot"):
        out.print(f"density plot: {results['density_plot']}")
    if layers is not None:
        out.print(str(layers), markup=False)


def _escaped_path(out_file: str | None, checkpoint: str | None, problem: str) -> Path:
    """Where ``critical --escape`` writes, checked before any computing.

    ``--out``, or ``<checkpoint>-escaped.pt`` beside the input checkpoint, or
    ``<problem>-escaped.pt`` (for a default name, the next free one if taken). Never an existing
    file, never the input."""
    from .._files import check_new_file

    if out_file is not None:
        if checkpoint is not None and Path(out_file).resolve() == Path(checkpoint).resolve():
            fail(
                f"--out {out_file} is the input checkpoint; the escaped parameters go to a new file."
            )
        return check_new_file(out_file, "--out")
    if checkpoint is not None:
        path = Path(checkpoint).with_name(Path(checkpoint).stem + "-escaped.pt")
    else:
        path = Path(Path(problem.replace(":", "-")).name + "-escaped.pt")
    return check_new_file(path, "the escaped checkpoint", default=True)


@main.command()
@problem_options
@click.option(
    "--escape",
    "do_escape",
    is_flag=True,
    help="Step along the negative-curvature eigenvector (line search) and write the escaped "
    "parameters to a new checkpoint.",
)
@click.option(
    "--out",
    "out_file",
    default=None,
    help="New checkpoint file for --escape (default: <checkpoint>-escaped.pt); never overwritten.",
)
@click.option(
    "--k",
    type=click.IntRange(min=1),
    default=5,
    show_default=True,
    help="Extreme eigenpairs per end of the spectrum.",
)
@click.option(
    "--dense/--no-dense",
    default=None,
    help="Dense Hessian (exact minimum ratio). Default: for models up to 1000 parameters.",
)
@click.option(
    "--grad-tol",
    type=NON_NEGATIVE,
    default=None,
    help="Gradient-norm threshold (default: scale-relative).",
)
@click.option(
    "--eig-tol",
    type=NON_NEGATIVE,
    default=None,
    help="Zero threshold for eigenvalues (default: scale-relative).",
)
@mode_option(None)
@reduction_option(
    "How the problem's loss combines a batch's samples (see `lossdoctor spectrum --help`)."
)
@seed_option
@params_option
@device_option
@json_option
def critical(
    problem: str,
    checkpoint: str | None,
    do_escape: bool,
    out_file: str | None,
    k: int,
    dense: bool | None,
    grad_tol: float | None,
    eig_tol: float | None,
    mode: Mode | None,
    reduction: Reduction | Literal["auto"],
    seed: int,
    param_patterns: tuple[str, ...],
    device: str,
    as_json: bool,
) -> None:
    """Local minimum, saddle point, or neither? The verdict, the numbers and the evidence."""
    from .. import classify_critical_point, escape_saddle

    if out_file is not None and not do_escape:
        fail("--out names the checkpoint written by --escape; add --escape (or drop --out).")
    target = _escaped_path(out_file, checkpoint, problem) if do_escape else None
    prob = load(problem, checkpoint, device)
    results: dict[str, Any] = {"problem": prob.name, "checkpoint": checkpoint}
    params = _selection(prob.model, param_patterns)
    with progress_bars(not as_json) as task:
        point = classify_critical_point(
            prob.model,
            prob.loss_fn,
            prob.train_data,
            grad_tol=grad_tol,
            eig_tol=eig_tol,
            k=k,
            dense=dense,
            mode=mode,
            seed=seed,
            reduction=None if reduction == "auto" else reduction,
            params=params,
            progress=task("Hessian (both ends, minimum ratio)"),
        )
        results["critical"] = point.to_dict()
        escape = None
        if do_escape and not interrupted(point):
            escape = escape_saddle(
                prob.model,
                prob.loss_fn,
                prob.train_data,
                critical=point,
                apply=True,
                mode=point.mode,
                reduction=None if reduction == "auto" else reduction,
                params=params,
                progress=task("escape line search"),
            )
            results["escape"] = {
                key: value for key, value in escape.to_dict().items() if key != "critical"
            }
    interrupted(point, escape)
    saved = None
    if escape is not None and escape.applied and target is not None:
        import torch

        state = {key: value.cpu() for key, value in prob.model.state_dict().items()}
        saved = save_file(target, lambda handle: torch.save(state, handle), "escaped checkpoint")
    results["escaped_checkpoint"] = saved
    if as_json:
        out.print_json(json.dumps(results))
        return
    subset = "" if params is None else f" (of {', '.join(point.parameter_names)})"
    out.print(
        f"{prob.name}: {point.num_params} parameters{subset}, {point.num_samples} samples, {point.mode} mode"
    )
    out.print(str(point))
    if escape is not None:
        out.print(str(escape))
        out.print(
            f"escaped parameters written to {saved}"
            if saved
            else "nothing written: no escape step."
        )


OPTIMIZERS = ("adam", "adamw", "sgd")


@main.command("lr-find")
@problem_options
@click.option(
    "--optimizer", "opt_name", type=click.Choice(OPTIMIZERS), default="adam", show_default=True
)
@click.option(
    "--momentum",
    type=UNIT_INTERVAL,
    default=0.9,
    show_default=True,
    help="SGD momentum, in [0, 1).",
)
@click.option(
    "--weight-decay",
    type=NON_NEGATIVE,
    default=0.0,
    show_default=True,
    help="Weight decay on the weights only (biases and norm layers excluded).",
)
@click.option("--start-lr", type=POSITIVE, default=1e-7, show_default=True)
@click.option("--end-lr", type=POSITIVE, default=10.0, show_default=True)
@click.option(
    "--steps",
    type=click.IntRange(min=5),
    default=100,
    show_default=True,
    help="Range-test updates (stops early on divergence).",
)
@click.option(
    "--suggestion",
    type=click.Choice(["steepest", "minimum"]),
    default="steepest",
    show_default=True,
)
@plot_option("the loss-vs-lr plot")
@device_option
@json_option
def lr_find(
    problem: str,
    checkpoint: str | None,
    opt_name: str,
    momentum: float,
    weight_decay: float,
    start_lr: float,
    end_lr: float,
    steps: int,
    suggestion: str,
    plot: Path | None,
    device: str,
    as_json: bool,
) -> None:
    """Smith's learning-rate range test: prints the suggested lr (the model is left unchanged)."""
    from .. import lr_range_test, weight_decay_groups
    from ..training.optimizers import make_optimizer

    if not end_lr > start_lr:
        fail(f"--end-lr ({end_lr:g}) must be larger than --start-lr ({start_lr:g}).")
    prob = load(problem, checkpoint, device)
    optimizer = make_optimizer(
        opt_name, weight_decay_groups(prob.model, weight_decay), start_lr, momentum, weight_decay
    )
    with progress_bars(not as_json) as task:
        result = lr_range_test(
            prob.model,
            prob.loss_fn,
            prob.train_data,
            optimizer,
            start_lr=start_lr,
            end_lr=end_lr,
            steps=steps,
            suggestion=suggestion,
            progress=task("LR range test"),
        )
    payload: dict[str, Any] = {"problem": prob.name, "optimizer": opt_name, **result.to_dict()}
    if plot is not None:
        from ..report.lr_range import range_test_figure

        payload["plot"] = written(range_test_figure(result, plot), plot)
    if as_json:
        out.print_json(json.dumps(payload))
        return
    out.print(str(result))
    if plot is not None:
        out.print(f"plot: {payload['plot']}")
    if result.suggested_lr is not None:
        out.print(f"suggested lr: {result.suggested_lr:.4g}")


@main.command()
@click.option(
    "--warmup",
    "warmup_steps",
    type=click.IntRange(min=0),
    required=True,
    help="Warm-up steps (linear ramp).",
)
@click.option(
    "--after",
    type=click.Choice(["constant", "cosine", "linear", "step", "inverse_sqrt"]),
    default="constant",
    show_default=True,
    help="Shape after the warm-up.",
)
@click.option(
    "--steps", type=click.IntRange(min=1), required=True, help="Total training steps to show."
)
@click.option(
    "--lr", type=POSITIVE, default=1e-3, show_default=True, help="Peak (base) learning rate."
)
@click.option(
    "--start-factor",
    type=NON_NEGATIVE,
    default=None,
    help="lr multiplier at step 0 (default 1/warmup).",
)
@click.option(
    "--min-factor",
    type=Number(minimum=0.0, maximum=1.0),
    default=0.0,
    show_default=True,
    help="Final multiplier for cosine/linear.",
)
@click.option(
    "--step-size",
    type=click.IntRange(min=1),
    default=None,
    help="For --after step: decay every N steps.",
)
@click.option(
    "--gamma", type=POSITIVE, default=0.1, show_default=True, help="For --after step: decay factor."
)
@click.option(
    "--d-model",
    type=click.IntRange(min=1),
    default=None,
    help="Transformer schedule (with --after inverse_sqrt).",
)
@plot_option("the schedule plot")
@json_option
def schedule(
    warmup_steps: int,
    after: str,
    steps: int,
    lr: float,
    start_factor: float | None,
    min_factor: float,
    step_size: int | None,
    gamma: float,
    d_model: int | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Show a warm-up schedule: the lr at a few steps, its peak and its end (lossdoctor.warmup).

    Computed in closed form at the steps shown, so any --steps is instant."""
    from ..training.schedules import LISTED_STEPS, schedule_at, schedule_peak

    settings = {
        "warmup_steps": warmup_steps,
        "after": after,
        "start_factor": start_factor,
        "min_factor": min_factor,
        "step_size": step_size,
        "gamma": gamma,
        "d_model": d_model,
        "total_steps": steps if after in ("cosine", "linear") else None,
    }
    shown = sorted(
        {
            s
            for s in (
                0,
                1,
                warmup_steps // 2,
                max(warmup_steps - 1, 0),
                warmup_steps,
                steps // 2,
                steps - 1,
            )
            if 0 <= s < steps
        }
    )
    at = dict(zip(shown, schedule_at(lr, shown, **settings)))
    peak_step, peak_lr = schedule_peak(lr, steps, **settings)
    final_lr = schedule_at(lr, [steps - 1], **settings)[0]
    payload: dict[str, Any] = {
        "lr": lr,
        "steps": steps,
        **settings,
        "shown": {str(k): v for k, v in at.items()},
        "peak_lr": peak_lr,
        "peak_step": peak_step,
        "final_lr": final_lr,
        "lrs": schedule_at(lr, list(range(steps)), **settings) if steps <= LISTED_STEPS else None,
    }
    if plot is not None:
        from ..report.schedules import schedule_figure

        payload["plot"] = written(
            schedule_figure(
                lambda xs: schedule_at(lr, xs, **settings),
                steps,
                plot,
                title=f"warm-up {warmup_steps}, then {after}",
                marks=(warmup_steps - 1, warmup_steps),
            ),
            plot,
        )
    if as_json:
        out.print_json(json.dumps(payload))
        return
    out.print(f"warm-up {warmup_steps} steps, then {after}, {steps} steps, base lr {lr:g}")
    for s in shown:
        out.print(f"  step {s:>7d}: lr {at[s]:.6g}")
    out.print(f"peak lr {peak_lr:.6g} at step {peak_step}; final lr {final_lr:.6g}")
    if plot is not None:
        out.print(f"plot: {payload['plot']}")


@main.command()
@click.option(
    "--out",
    "out_dir",
    default="report",
    show_default=True,
    callback=output_dir,
    help="Folder of the report; a rerun keeps and skips the sections already finished there.",
)
@click.option("--full", is_flag=True, help="Larger runs (slower) instead of the quick defaults.")
@click.option("--only", multiple=True, help="Run only these sections (repeatable).")
@click.option("--force", is_flag=True, help="Redo finished sections instead of keeping them.")
def tour(out_dir: Path, full: bool, only: tuple[str, ...], force: bool) -> None:
    """Run every study on the embedded default and write an HTML report (resumable)."""
    from ..tour import SECTIONS, run_tour

    unknown = sorted(set(only) - {s.key for s in SECTIONS})
    if unknown:
        fail(
            f"--only {', '.join(unknown)}: no such section; the sections are "
            f"{', '.join(s.key for s in SECTIONS)}."
        )
    with progress_bars() as task:
        try:
            report = run_tour(
                out_dir,
                quick=not full,
                only=list(only) or None,
                progress_for=task,
                force=force,
                log=note,
            )
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted[/yellow]: the finished sections are kept in {escape(str(out_dir))}/; "
                "rerun the same command to continue."
            )
            sys.exit(EXIT_INTERRUPTED)
    out.print(f"report written to {report}")


# The batch-size lab's commands live in their own module, which uses the helpers above.
from .batch import batch  # noqa: E402

main.add_command(batch)

# The stall doctor's commands (diagnose, train) likewise.
from .doctor import checkup_command, diagnose_command, train_command  # noqa: E402

main.add_command(diagnose_command)
main.add_command(checkup_command)
main.add_command(train_command)


if __name__ == "__main__":  # python -m lossdoctor.cli.commands
    main()
