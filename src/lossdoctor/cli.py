"""Command line: parses arguments, shows progress, calls the library, prints results."""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

console = Console(stderr=True)
out = Console()


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Any]:
    """Yields ``task(description) -> callback(done, total)``; rich bars on stderr."""
    if not enabled:
        yield lambda description: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        def task(description: str):
            task_id = bars.add_task(description, total=None)

            def update(done: int, total: int) -> None:
                bars.update(task_id, completed=done, total=total)

            return update

        yield task


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    sys.exit(2)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def _cache_setting(value: str) -> bool | str | int:
    """``--cache``: auto, on, off, or a size (bytes, or with KB/MB/GB) for ``hessian(cache=...)``."""
    word = value.strip().upper()
    if word in ("AUTO", "ON", "OFF"):
        return {"AUTO": "auto", "ON": True, "OFF": False}[word]
    number = word.rstrip("KMGB")
    try:
        size = float(number) * _SIZE_UNITS[word[len(number):]]
    except (ValueError, KeyError):
        raise click.BadParameter(f"{value!r} is not auto, on, off or a size such as 200MB.") from None
    if size < 0:
        raise click.BadParameter(f"{value!r}: the size must not be negative.")
    return int(size)


def _init_distributed() -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group; only rank 0 prints or writes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_rank() != 0:
        out.quiet = True
        console.quiet = True


def _is_rank_zero() -> bool:
    import torch.distributed as dist

    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _device(name: str):
    """``auto``: this rank's GPU under torchrun with CUDA, else the first GPU, else the CPU."""
    import os

    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    try:
        device = torch.device(name)
    except RuntimeError:
        _fail(f"--device {name!r} is not a device name: use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        _fail(f"--device {name} asks for CUDA, but this PyTorch sees no GPU: use --device cpu.")
    return device


def _load(problem: str, checkpoint: str | None, device: str | None = "cpu", *, shard: bool = True):
    """Load ``problem`` and move its model to ``device`` (None: leave it where the problem put it).
    ``shard``: under torchrun, give each rank its share of a built-in problem's batches; the batch
    lab passes False, because it needs all the data on every rank (a sweep deals out runs, not
    samples)."""
    from .problem import load_problem
    from .zoo import BUILTIN

    target = _device(device) if device is not None else None
    try:
        prob = load_problem(problem, checkpoint=checkpoint)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(str(err))
    # data stays where the problem put it: CPU batches are moved to the model's device batch by batch
    if target is not None:
        prob.model.to(target)
    import torch.distributed as dist

    if shard and problem in BUILTIN and dist.is_available() and dist.is_initialized():
        # Built-in data are lists of batches: each rank takes every world_size-th batch. A user's
        # problem function returns its own rank's shard.
        rank, world = dist.get_rank(), dist.get_world_size()
        if isinstance(prob.train_data, list):
            prob.train_data = prob.train_data[rank::world]
    return prob


problem_option = click.option("--problem", "problem", default="mnist1d-mlp", show_default=True,
                              help="Built-in name (mnist1d-mlp, mnist1d-cnn, lecture-saddle) or "
                                   "'package.module:function' returning a Problem.")
checkpoint_option = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                                 help="state_dict file to load into the model (weights_only).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")
device_option = click.option("--device", default="auto", show_default=True,
                             help="Where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:N.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lossdoctor")
def main() -> None:
    """lossdoctor: why did my training loss stop going down, and what should I change?"""
    _init_distributed()


@main.command()
@problem_option
@checkpoint_option
@click.option("--k", default=5, show_default=True, help="Eigenpairs per end of the spectrum.")
@click.option("--which", type=click.Choice(["largest", "smallest", "both"]), default="both", show_default=True)
@click.option("--tol", default=1e-6, show_default=True, help="Relative accuracy of the eigenvalues.")
@click.option("--trace-matvecs", default=99, show_default=True, help="Products for the Hutch++ trace (0: skip).")
@click.option("--density/--no-density", default=True, show_default=True, help="Spectral density (SLQ).")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=None,
              help="Cut larger batches into micro-batches of this many samples: the memory of one "
                   "Hessian-vector product no longer grows with the batch size (checked to give the same Hessian).")
@click.option("--cache", default="auto", show_default=True, callback=lambda ctx, param, value: _cache_setting(value),
              help="Keep the gradient graphs between products: faster, but holds them in memory. "
                   "auto: within a quarter of the free memory; on; off; or a size such as 200MB "
                   "(the graphs of the first batches that fit are kept, the rest recomputed).")
@click.option("--seed", default=0, show_default=True)
@click.option("--per-layer", is_flag=True,
              help="Also the per-layer table: each module's Hessian block (λ_max, trace), gradient norm, and the "
                   "block heterogeneity (mean Jensen-Shannon distance of the blockwise spectra).")
@click.option("--plot", type=click.Path(dir_okay=False), default="spectrum-density.png", show_default=True,
              help="Where to write the density plot.")
@device_option
@json_option
def spectrum(problem: str, checkpoint: str | None, k: int, which: str, tol: float, trace_matvecs: int,
             density: bool, mode: str, micro_batch_size: int | None, cache: bool | str | int, seed: int,
             per_layer: bool, plot: str, device: str, as_json: bool) -> None:
    """Hessian eigenvalues (both ends), trace and spectral density of a problem."""
    from . import eigenpairs, hessian, spectral_density, trace

    prob = _load(problem, checkpoint, device)
    results: dict[str, Any] = {"problem": prob.name, "device": str(next(prob.model.parameters()).device)}
    try:
        op = hessian(prob.model, prob.loss_fn, prob.train_data, mode=mode, micro_batch_size=micro_batch_size,
                     cache=cache)
    except (ValueError, TypeError) as err:
        _fail(str(err))
    results.update(num_params=op.num_params, num_samples=op.num_samples, mode=op.mode, loss=op.loss,
                   micro_batch_size=micro_batch_size, cache=cache)
    with progress_bars(not as_json) as task:
        eig = eigenpairs(op, k=k, which=which, tol=tol, seed=seed, progress=task("eigenpairs"))
        results["eigenpairs"] = eig.to_dict()
        tr = dens = None
        if trace_matvecs > 0:
            tr = trace(op, matvecs=trace_matvecs, seed=seed, progress=task("trace (Hutch++)"))
            results["trace"] = tr.to_dict()
        if density:
            dens = spectral_density(op, seed=seed, progress=task("spectral density (SLQ)"))
            results["density"] = {key: value for key, value in dens.to_dict().items()
                                  if key not in ("grid", "density", "nodes", "weights")}
        layers = None
        if per_layer:
            from . import layer_curvature

            layers = layer_curvature(prob.model, prob.loss_fn, prob.train_data, mode=mode, seed=seed, op=op,
                                     progress=task("per-layer curvature"))
            results["per_layer"] = layers.to_dict()
    results["cached_batches"] = op.cached_batches
    if dens is not None and plot and _is_rank_zero():
        from .report.spectrum import density_figure

        results["density_plot"] = str(density_figure(dens, Path(plot)))
    if as_json:
        out.print_json(json.dumps(results))
        return
    unit = ("micro-batch" if micro_batch_size else "batch") + ("" if op.cached_batches == 1 else "es")
    out.print(f"{op!r}\nmean loss {op.loss:.6g}; gradient graphs of {op.cached_batches} {unit} kept between products")
    out.print(str(eig))
    if tr is not None:
        out.print(str(tr))
    if dens is not None:
        out.print(str(dens))
        out.print(f"density plot: {results['density_plot']}")
    if layers is not None:
        out.print(str(layers), markup=False)


def _escaped_path(out_file: str | None, checkpoint: str | None, problem_name: str) -> Path:
    """Where ``critical --escape`` writes: ``--out``, or ``<checkpoint>-escaped.pt`` beside the
    input checkpoint, or ``<problem>-escaped.pt``. Never an existing file, never the input."""
    if out_file is not None:
        path = Path(out_file)
    elif checkpoint is not None:
        path = Path(checkpoint).with_name(Path(checkpoint).stem + "-escaped.pt")
    else:
        path = Path(problem_name.replace(":", "-").replace("/", "-") + "-escaped.pt")
    if checkpoint is not None and path.resolve() == Path(checkpoint).resolve():
        _fail(f"--out {path} is the input checkpoint; the escaped parameters go to a new file.")
    if path.exists():
        _fail(f"{path} already exists; lossdoctor never overwrites a file: choose another --out.")
    return path


@main.command()
@problem_option
@checkpoint_option
@click.option("--escape", "do_escape", is_flag=True,
              help="Step along the negative-curvature eigenvector (line search) and write the escaped "
                   "parameters to a new checkpoint.")
@click.option("--out", "out_file", type=click.Path(dir_okay=False), default=None,
              help="New checkpoint file for --escape (default: <checkpoint>-escaped.pt); never overwritten.")
@click.option("--k", default=5, show_default=True, help="Extreme eigenpairs per end of the spectrum.")
@click.option("--dense/--no-dense", default=None,
              help="Dense Hessian (exact minimum ratio). Default: for models up to 1000 parameters.")
@click.option("--grad-tol", type=float, default=None, help="Gradient-norm threshold (default: scale-relative).")
@click.option("--eig-tol", type=float, default=None, help="Zero threshold for eigenvalues (default: scale-relative).")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--seed", default=0, show_default=True)
@device_option
@json_option
def critical(problem: str, checkpoint: str | None, do_escape: bool, out_file: str | None, k: int,
             dense: bool | None, grad_tol: float | None, eig_tol: float | None, mode: str, seed: int,
             device: str, as_json: bool) -> None:
    """Local minimum, saddle point, or neither? The verdict, the numbers and the evidence."""
    from . import classify_critical_point, escape_saddle

    if out_file is not None and not do_escape:
        _fail("--out names the checkpoint written by --escape; add --escape (or drop --out).")
    prob = _load(problem, checkpoint, device)
    target = _escaped_path(out_file, checkpoint, prob.name) if do_escape else None
    results: dict[str, Any] = {"problem": prob.name, "checkpoint": checkpoint}
    with progress_bars(not as_json) as task:
        try:
            point = classify_critical_point(prob.model, prob.loss_fn, prob.train_data, grad_tol=grad_tol,
                                            eig_tol=eig_tol, k=k, dense=dense, mode=mode, seed=seed,
                                            progress=task("Hessian (both ends, minimum ratio)"))
        except (ValueError, TypeError) as err:
            _fail(str(err))
        results["critical"] = point.to_dict()
        escape = None
        if do_escape:
            escape = escape_saddle(prob.model, prob.loss_fn, prob.train_data, critical=point, apply=True,
                                   mode=mode, progress=task("escape line search"))
            results["escape"] = {key: value for key, value in escape.to_dict().items() if key != "critical"}
    written = None
    if escape is not None and escape.applied:
        import torch

        with open(target, "xb") as handle:  # exclusive create: never overwrite
            torch.save({key: value.cpu() for key, value in prob.model.state_dict().items()}, handle)
        written = str(target)
    results["escaped_checkpoint"] = written
    if as_json:
        out.print_json(json.dumps(results))
        return
    out.print(f"{prob.name}: {point.num_params} parameters, {point.num_samples} samples, {mode} mode")
    out.print(str(point))
    if escape is not None:
        out.print(str(escape))
        out.print(f"escaped parameters written to {written}" if written else "nothing written: no escape step.")


OPTIMIZERS = ("adam", "adamw", "sgd")


def _optimizer(name: str, params: Any, lr: float, momentum: float, weight_decay: float):
    import torch

    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    cls = torch.optim.AdamW if name == "adamw" else torch.optim.Adam
    return cls(params, lr=lr, weight_decay=weight_decay)


@main.command("lr-find")
@problem_option
@checkpoint_option
@click.option("--optimizer", "opt_name", type=click.Choice(OPTIMIZERS), default="adam", show_default=True)
@click.option("--momentum", default=0.9, show_default=True, help="SGD momentum.")
@click.option("--weight-decay", default=0.0, show_default=True,
              help="Weight decay on the weights only (biases and norm layers excluded).")
@click.option("--start-lr", default=1e-7, show_default=True)
@click.option("--end-lr", default=10.0, show_default=True)
@click.option("--steps", default=100, show_default=True, help="Range-test updates (stops early on divergence).")
@click.option("--suggestion", type=click.Choice(["steepest", "minimum"]), default="steepest", show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the loss-vs-lr plot here.")
@device_option
@json_option
def lr_find(problem: str, checkpoint: str | None, opt_name: str, momentum: float, weight_decay: float,
            start_lr: float, end_lr: float, steps: int, suggestion: str, plot: str | None, device: str,
            as_json: bool) -> None:
    """Smith's learning-rate range test: prints the suggested lr (the model is left unchanged)."""
    from . import lr_range_test, weight_decay_groups

    prob = _load(problem, checkpoint, device)
    try:
        optimizer = _optimizer(opt_name, weight_decay_groups(prob.model, weight_decay), start_lr, momentum,
                               weight_decay)
        with progress_bars(not as_json) as task:
            result = lr_range_test(prob.model, prob.loss_fn, prob.train_data, optimizer, start_lr=start_lr,
                                   end_lr=end_lr, steps=steps, suggestion=suggestion,
                                   progress=task("LR range test"))
    except (ValueError, TypeError) as err:
        _fail(str(err))
    payload: dict[str, Any] = {"problem": prob.name, "optimizer": opt_name, **result.to_dict()}
    if plot:
        from .report.lr_range import range_test_figure

        payload["plot"] = str(range_test_figure(result, Path(plot)))
    if as_json:
        out.print_json(json.dumps(payload))
        return
    out.print(str(result))
    if plot:
        out.print(f"plot: {payload['plot']}")
    out.print(f"suggested lr: {result.suggested_lr:.4g}")


@main.command()
@click.option("--warmup", "warmup_steps", type=int, required=True, help="Warm-up steps (linear ramp).")
@click.option("--after", type=click.Choice(["constant", "cosine", "linear", "step", "inverse_sqrt"]),
              default="constant", show_default=True, help="Shape after the warm-up.")
@click.option("--steps", type=int, required=True, help="Total training steps to show.")
@click.option("--lr", default=1e-3, show_default=True, help="Peak (base) learning rate.")
@click.option("--start-factor", type=float, default=None, help="lr multiplier at step 0 (default 1/warmup).")
@click.option("--min-factor", default=0.0, show_default=True, help="Final multiplier for cosine/linear.")
@click.option("--step-size", type=int, default=None, help="For --after step: decay every N steps.")
@click.option("--gamma", default=0.1, show_default=True, help="For --after step: decay factor.")
@click.option("--d-model", type=int, default=None, help="Transformer schedule (with --after inverse_sqrt).")
@click.option("--plot", type=click.Path(dir_okay=False), default=None, help="Write the schedule plot here.")
@json_option
def schedule(warmup_steps: int, after: str, steps: int, lr: float, start_factor: float | None,
             min_factor: float, step_size: int | None, gamma: float, d_model: int | None, plot: str | None,
             as_json: bool) -> None:
    """Show a warm-up schedule: the lr at every step (lossdoctor.warmup)."""
    from .training.schedules import schedule_lrs

    settings = {"warmup_steps": warmup_steps, "after": after, "start_factor": start_factor,
                "min_factor": min_factor, "step_size": step_size, "gamma": gamma, "d_model": d_model,
                "total_steps": steps if after in ("cosine", "linear") else None}
    try:
        lrs = schedule_lrs(lr, steps, **settings)
    except (ValueError, TypeError) as err:
        _fail(str(err))
    payload: dict[str, Any] = {"lr": lr, "steps": steps, **settings, "lrs": lrs,
                               "peak_lr": max(lrs), "peak_step": lrs.index(max(lrs)), "final_lr": lrs[-1]}
    if plot:
        from .report.schedules import schedule_figure

        payload["plot"] = str(schedule_figure(lrs, Path(plot), title=f"warm-up {warmup_steps}, then {after}"))
    if as_json:
        out.print_json(json.dumps(payload))
        return
    shown = sorted({0, 1, warmup_steps // 2, max(warmup_steps - 1, 0), warmup_steps, steps // 2, steps - 1}
                   & set(range(steps)))
    out.print(f"warm-up {warmup_steps} steps, then {after}, {steps} steps, base lr {lr:g}")
    for s in shown:
        out.print(f"  step {s:>7d}: lr {lrs[s]:.6g}")
    out.print(f"peak lr {payload['peak_lr']:.6g} at step {payload['peak_step']}; final lr {lrs[-1]:.6g}")
    if plot:
        out.print(f"plot: {payload['plot']}")


@main.command()
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default="report", show_default=True)
@click.option("--full", is_flag=True, help="Larger runs (slower) instead of the quick defaults.")
@click.option("--only", multiple=True, help="Run only these sections (repeatable).")
def tour(out_dir: str, full: bool, only: tuple[str, ...]) -> None:
    """Run every study on the embedded default and write an HTML report."""
    from .tour import run_tour

    with progress_bars() as task:
        try:
            page = run_tour(out_dir, quick=not full, only=list(only) or None, progress_for=task)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/yellow]: finished sections are in {out_dir}/")
            sys.exit(130)
        except ValueError as err:
            _fail(str(err))
    out.print(f"report written to {page}")


# The batch-size lab's commands live in their own module, which uses the helpers above.
from .cli_batch import batch  # noqa: E402

main.add_command(batch)

# The stall doctor's commands (diagnose, train) likewise.
from .cli_doctor import diagnose_command, train_command  # noqa: E402

main.add_command(diagnose_command)
main.add_command(train_command)


if __name__ == "__main__":  # python -m lossdoctor.cli
    main()
