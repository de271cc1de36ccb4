"""Command line: parses arguments, shows progress, calls the library, prints results.

Exit status (``lossdoctor --help`` says the same): 0 done; 1 a failure that is not bad input (the
disk, the machine, a bug in lossdoctor); 2 bad input (an option, the problem file, a checkpoint,
the data); 130 interrupted (Ctrl-C: what finished is printed and saved first). A user's mistake
never prints a traceback: options are checked before any computing (output paths included), and
an error in the user's own problem code shows the user's file and line. ``LOSSDOCTOR_DEBUG=1``
re-raises instead, for the full traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import _interrupt
from ._checks import check_float

console = Console(stderr=True, soft_wrap=True)  # messages are not cut into lines: they stay greppable
out = Console()

EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
EXIT_CODES = ("Exit status: 0 done; 1 failed (disk, machine, or a lossdoctor bug); 2 bad input (an option, "
              "the problem file, a checkpoint, the data); 130 interrupted (what finished is printed and "
              "saved first).")


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Any]:
    """Yields ``task(description) -> callback(done, total)``; rich bars on stderr."""
    if not enabled:
        yield lambda description: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=console, transient=False) as bars:
        started: list[int] = []

        def task(description: str):
            task_id = bars.add_task(description, total=None)
            started.append(task_id)

            def update(done: int, total: int) -> None:
                bars.update(task_id, completed=done, total=total)

            return update

        yield task
        # A call that converged before its product budget did all it needed: its bar ends at
        # 100% (139/139, not 139/300). Only on a normal exit: an interrupted bar stays where it was.
        for task_id in started:
            done = bars.tasks[bars.task_ids.index(task_id)].completed
            if done:
                bars.update(task_id, total=done, completed=done)


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(EXIT_BAD_INPUT)


def note(message: str) -> None:
    """A line for the user on stderr (never markup-interpreted)."""
    console.print(escape(message))


class CheckedGroup(click.Group):
    """Runs a command so that no user mistake ends in a traceback: bad input exits 2 with the
    message, Ctrl-C exits 130 after the command printed and saved what finished (a partial
    result, flagged), other failures exit 1 with the message."""

    def invoke(self, ctx: click.Context) -> Any:
        mark = _interrupt.count()
        try:
            with _interrupt.recording():
                result = super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            if os.environ.get("LOSSDOCTOR_DEBUG"):
                raise
            console.print("[yellow]interrupted[/yellow] before anything finished: nothing to show.")
            sys.exit(EXIT_INTERRUPTED)
        except (ValueError, TypeError) as err:  # bad input: options, the problem, the data (wrapped)
            if os.environ.get("LOSSDOCTOR_DEBUG"):
                raise
            _fail(str(err))
        except OSError as err:
            if os.environ.get("LOSSDOCTOR_DEBUG"):
                raise
            console.print(f"[red]error:[/red] {escape(str(err))}")
            sys.exit(EXIT_FAILURE)
        except Exception:  # a bug in lossdoctor: say so, with the traceback to report
            if os.environ.get("LOSSDOCTOR_DEBUG"):
                raise
            console.print(escape(traceback.format_exc()))
            console.print("[red]internal error[/red]: this is a bug in lossdoctor; please report it with the "
                          "traceback above.")
            sys.exit(EXIT_FAILURE)
        if _interrupt.count() != mark:
            console.print("[yellow]interrupted[/yellow]: the results above are what finished.")
            sys.exit(EXIT_INTERRUPTED)
        return result


# -- option types: every value checked while parsing, the message naming the option --------------
class Number(click.ParamType):
    """A finite float within bounds (click's FloatRange lets NaN and Inf through)."""

    name = "number"

    def __init__(self, *, minimum: float | None = None, maximum: float | None = None, above: float | None = None,
                 below: float | None = None) -> None:
        self.bounds = {"minimum": minimum, "maximum": maximum, "above": above, "below": below}

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number.", param, ctx)
        try:
            return check_float(number, "the value", **self.bounds)  # type: ignore[return-value]
        except (TypeError, ValueError) as err:
            self.fail(str(err).replace("the value must be", "must be"), param, ctx)


class IntList(click.ParamType):
    """Comma-separated integers (``16,64,256``)."""

    name = "integers"

    def __init__(self, minimum: int = 1, distinct: bool = True) -> None:
        self.minimum, self.distinct = minimum, distinct

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> list[int]:
        if isinstance(value, list):
            return value
        parts = [v for v in str(value).replace(" ", "").split(",") if v]
        try:
            values = [int(v) for v in parts]
        except ValueError:
            self.fail(f"must be comma-separated integers, e.g. 16,64,256; got {value!r}.", param, ctx)
        if not values:
            self.fail("is empty: give comma-separated integers, e.g. 16,64,256.", param, ctx)
        low = [v for v in values if v < self.minimum]
        if low:
            self.fail(f"every value must be >= {self.minimum}, got {low[0]}.", param, ctx)
        if self.distinct and len(set(values)) != len(values):
            self.fail(f"values must not repeat, got {value!r}.", param, ctx)
        return values


POSITIVE = Number(above=0.0)
NON_NEGATIVE = Number(minimum=0.0)
UNIT_INTERVAL = Number(minimum=0.0, below=1.0)  # momentum, smoothing
SEED = click.IntRange(0, 2**63 - 1)


def _option_name(param: click.Parameter) -> str:
    return param.opts[0] if getattr(param, "opts", None) else f"--{param.name}"


def new_file(formats: str | None = None) -> Callable[[click.Context, click.Parameter, Any], Path | None]:
    """A click callback for an output file: checked while parsing, before any computing (its
    folder exists and is writable, the format is known with ``formats="image"``, the file does
    not exist). A default name that is taken moves on to the next free one (name-2.png)."""
    from ._files import check_new_file, image_formats

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Path | None:
        if value is None or value == "":
            return None
        default = ctx.get_parameter_source(param.name) in (click.core.ParameterSource.DEFAULT,
                                                            click.core.ParameterSource.DEFAULT_MAP)
        try:
            return check_new_file(value, _option_name(param), default=default,
                                  formats=image_formats() if formats == "image" else None)
        except (TypeError, ValueError) as err:
            raise click.BadParameter(str(err).replace(f"{_option_name(param)} ", "", 1)) from None

    return callback


def output_dir(ctx: click.Context, param: click.Parameter, value: Any) -> Path | None:
    """A click callback for an output folder: it exists (or can be made) and is writable."""
    from ._files import check_output_dir

    if value is None:
        return None
    try:
        return check_output_dir(value, _option_name(param))
    except (TypeError, ValueError) as err:
        raise click.BadParameter(str(err).replace(f"{_option_name(param)} ", "", 1)) from None


def save_file(path: Path, write: Callable[[Any], None], what: str) -> str:
    """Write a new file at ``path`` (checked before computing); if that fails now, the result goes
    beside it (or to the working or temporary folder) and the user is told where. Returns the
    path written."""
    from ._files import save_new

    written, why = save_new(path, write)
    if why:
        console.print(f"[yellow]note[/yellow]: {escape(what)}: {escape(why)}")
    return str(written)


def written(path: Path, requested: Path | None, what: str = "plot") -> str:
    """The path a figure went to; says so when it is not the one asked for (the write failed)."""
    if requested is not None and Path(path) != Path(requested):
        console.print(f"[yellow]note[/yellow]: could not write the {escape(what)} to {escape(str(requested))}; "
                      f"saved it to {escape(str(path))} instead.")
    return str(path)


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
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        _fail(f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
              f"cuda:{torch.cuda.device_count() - 1}.")
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
    except (ValueError, TypeError, FileNotFoundError) as err:  # UserCodeError shows the user's own line
        _fail(str(err).replace("problem ", "--problem ", 1) if str(err).startswith("problem ") else str(err))
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


@click.group(cls=CheckedGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=EXIT_CODES)
@click.version_option(package_name="lossdoctor")
def main() -> None:
    """lossdoctor: why did my training loss stop going down, and what should I change?"""
    _init_distributed()


def interrupted(*results: Any) -> bool:
    """Whether any of ``results`` is a partial result of a Ctrl-C (then the command's exit status
    is 130 once it has printed and saved them)."""
    cut = any(r is not None and _interrupt.was_interrupted(r) for r in results)
    if cut:
        _interrupt.note()
    return cut


@main.command()
@problem_option
@checkpoint_option
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True, help="Eigenpairs per end of the spectrum.")
@click.option("--which", type=click.Choice(["largest", "smallest", "both", "largest_magnitude"]), default="both",
              show_default=True)
@click.option("--tol", type=POSITIVE, default=1e-6, show_default=True, help="Relative accuracy of the eigenvalues.")
@click.option("--trace-matvecs", type=click.IntRange(min=0), default=99, show_default=True,
              help="Products for the Hutch++ trace (0: skip; otherwise at least 3).")
@click.option("--density/--no-density", default=True, show_default=True, help="Spectral density (SLQ).")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--micro-batch-size", type=click.IntRange(min=1), default=None,
              help="Cut larger batches into micro-batches of this many samples: the memory of one "
                   "Hessian-vector product no longer grows with the batch size (checked to give the same Hessian).")
@click.option("--cache", default="auto", show_default=True, callback=lambda ctx, param, value: _cache_setting(value),
              help="Keep the gradient graphs between products: faster, but holds them in memory. "
                   "auto: within a quarter of the free memory; on; off; or a size such as 200MB "
                   "(the graphs of the first batches that fit are kept, the rest recomputed).")
@click.option("--reduction", type=click.Choice(["auto", "mean", "sum"]), default="auto", show_default=True,
              help="How the problem's loss combines a batch's samples: mean or sum (the Hessian is of the mean "
                   "per-sample loss either way). auto: the loss module's .reduction, else mean; a loss function "
                   "that sums is detected and refused without --reduction sum.")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--per-layer", is_flag=True,
              help="Also the per-layer table: each module's Hessian block (λ_max, trace), gradient norm, and the "
                   "block heterogeneity (mean Jensen-Shannon distance of the blockwise spectra).")
@click.option("--plot", default="spectrum-density.png", show_default=True, callback=new_file("image"),
              help="Where to write the density plot (a new file; a default name that is taken becomes name-2.png).")
@device_option
@json_option
def spectrum(problem: str, checkpoint: str | None, k: int, which: str, tol: float, trace_matvecs: int,
             density: bool, mode: str, micro_batch_size: int | None, cache: bool | str | int, reduction: str, seed: int,
             per_layer: bool, plot: Path | None, device: str, as_json: bool) -> None:
    """Hessian eigenvalues (both ends), trace and spectral density of a problem."""
    from . import eigenpairs, hessian, spectral_density, trace

    if trace_matvecs in (1, 2):
        _fail(f"--trace-matvecs {trace_matvecs}: Hutch++ needs at least 3 products (or 0 to skip the trace).")
    prob = _load(problem, checkpoint, device)
    results: dict[str, Any] = {"problem": prob.name, "device": str(next(prob.model.parameters()).device)}
    op = hessian(prob.model, prob.loss_fn, prob.train_data, mode=mode, micro_batch_size=micro_batch_size,
                 cache=cache, reduction=None if reduction == "auto" else reduction)
    results.update(num_params=op.num_params, num_samples=op.num_samples, mode=op.mode, loss=op.loss,
                   micro_batch_size=micro_batch_size, cache=cache)
    eig = tr = dens = layers = None
    with progress_bars(not as_json) as task:
        try:  # each part returns its partial result on Ctrl-C (flagged); the later parts are skipped
            eig = eigenpairs(op, k=k, which=which, tol=tol, seed=seed, progress=task("eigenpairs"))
            results["eigenpairs"] = eig.to_dict()
            if trace_matvecs > 0 and not interrupted(eig):
                tr = trace(op, matvecs=trace_matvecs, seed=seed, progress=task("trace (Hutch++)"))
                results["trace"] = tr.to_dict()
            if density and not interrupted(eig, tr):
                dens = spectral_density(op, seed=seed, progress=task("spectral density (SLQ)"))
                results["density"] = {key: value for key, value in dens.to_dict().items()
                                      if key not in ("grid", "density", "nodes", "weights")}
            if per_layer and not interrupted(eig, tr, dens):
                from . import layer_curvature

                layers = layer_curvature(prob.model, prob.loss_fn, prob.train_data, mode=mode, seed=seed, op=op,
                                         progress=task("per-layer curvature"))
                results["per_layer"] = layers.to_dict()
        except KeyboardInterrupt:
            _interrupt.note()
            results["interrupted"] = True
    results["cached_batches"] = op.cached_batches
    interrupted(eig, tr, dens)
    if dens is not None and plot is not None and _is_rank_zero() and not interrupted(dens):
        from .report.spectrum import density_figure

        results["density_plot"] = written(density_figure(dens, plot), plot, "density plot")
    if as_json:
        out.print_json(json.dumps(results))
        return
    unit = ("micro-batch" if micro_batch_size else "batch") + ("" if op.cached_batches == 1 else "es")
    out.print(f"{op!r}\nmean loss {op.loss:.6g}; gradient graphs of {op.cached_batches} {unit} kept between products")
    for part in (eig, tr, dens):
        if part is not None:
            out.print(str(part))
    if results.get("density_plot"):
        out.print(f"density plot: {results['density_plot']}")
    if layers is not None:
        out.print(str(layers), markup=False)


def _escaped_path(out_file: str | None, checkpoint: str | None, problem: str) -> Path:
    """Where ``critical --escape`` writes, checked before any computing: ``--out``, or
    ``<checkpoint>-escaped.pt`` beside the input checkpoint, or ``<problem>-escaped.pt`` (for a
    default name, the next free one if taken). Never an existing file, never the input."""
    from ._files import check_new_file

    if out_file is not None:
        if checkpoint is not None and Path(out_file).resolve() == Path(checkpoint).resolve():
            _fail(f"--out {out_file} is the input checkpoint; the escaped parameters go to a new file.")
        return check_new_file(out_file, "--out")
    if checkpoint is not None:
        path = Path(checkpoint).with_name(Path(checkpoint).stem + "-escaped.pt")
    else:
        path = Path(Path(problem.replace(":", "-")).name + "-escaped.pt")
    return check_new_file(path, "the escaped checkpoint", default=True)


@main.command()
@problem_option
@checkpoint_option
@click.option("--escape", "do_escape", is_flag=True,
              help="Step along the negative-curvature eigenvector (line search) and write the escaped "
                   "parameters to a new checkpoint.")
@click.option("--out", "out_file", default=None,
              help="New checkpoint file for --escape (default: <checkpoint>-escaped.pt); never overwritten.")
@click.option("--k", type=click.IntRange(min=1), default=5, show_default=True,
              help="Extreme eigenpairs per end of the spectrum.")
@click.option("--dense/--no-dense", default=None,
              help="Dense Hessian (exact minimum ratio). Default: for models up to 1000 parameters.")
@click.option("--grad-tol", type=NON_NEGATIVE, default=None, help="Gradient-norm threshold (default: scale-relative).")
@click.option("--eig-tol", type=NON_NEGATIVE, default=None, help="Zero threshold for eigenvalues (default: scale-relative).")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--reduction", type=click.Choice(["auto", "mean", "sum"]), default="auto", show_default=True,
              help="How the problem's loss combines a batch's samples (see `lossdoctor spectrum --help`).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@device_option
@json_option
def critical(problem: str, checkpoint: str | None, do_escape: bool, out_file: str | None, k: int,
             dense: bool | None, grad_tol: float | None, eig_tol: float | None, mode: str, reduction: str,
             seed: int, device: str, as_json: bool) -> None:
    """Local minimum, saddle point, or neither? The verdict, the numbers and the evidence."""
    from . import classify_critical_point, escape_saddle

    if out_file is not None and not do_escape:
        _fail("--out names the checkpoint written by --escape; add --escape (or drop --out).")
    target = _escaped_path(out_file, checkpoint, problem) if do_escape else None
    prob = _load(problem, checkpoint, device)
    results: dict[str, Any] = {"problem": prob.name, "checkpoint": checkpoint}
    with progress_bars(not as_json) as task:
        point = classify_critical_point(prob.model, prob.loss_fn, prob.train_data, grad_tol=grad_tol,
                                        eig_tol=eig_tol, k=k, dense=dense, mode=mode, seed=seed,
                                        reduction=None if reduction == "auto" else reduction,
                                        progress=task("Hessian (both ends, minimum ratio)"))
        results["critical"] = point.to_dict()
        escape = None
        if do_escape and not interrupted(point):
            escape = escape_saddle(prob.model, prob.loss_fn, prob.train_data, critical=point, apply=True,
                                   mode=mode, progress=task("escape line search"))
            results["escape"] = {key: value for key, value in escape.to_dict().items() if key != "critical"}
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
    out.print(f"{prob.name}: {point.num_params} parameters, {point.num_samples} samples, {mode} mode")
    out.print(str(point))
    if escape is not None:
        out.print(str(escape))
        out.print(f"escaped parameters written to {saved}" if saved else "nothing written: no escape step.")


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
@click.option("--momentum", type=UNIT_INTERVAL, default=0.9, show_default=True, help="SGD momentum, in [0, 1).")
@click.option("--weight-decay", type=NON_NEGATIVE, default=0.0, show_default=True,
              help="Weight decay on the weights only (biases and norm layers excluded).")
@click.option("--start-lr", type=POSITIVE, default=1e-7, show_default=True)
@click.option("--end-lr", type=POSITIVE, default=10.0, show_default=True)
@click.option("--steps", type=click.IntRange(min=5), default=100, show_default=True,
              help="Range-test updates (stops early on divergence).")
@click.option("--suggestion", type=click.Choice(["steepest", "minimum"]), default="steepest", show_default=True)
@click.option("--plot", default=None, callback=new_file("image"), help="Write the loss-vs-lr plot here (a new file).")
@device_option
@json_option
def lr_find(problem: str, checkpoint: str | None, opt_name: str, momentum: float, weight_decay: float,
            start_lr: float, end_lr: float, steps: int, suggestion: str, plot: Path | None, device: str,
            as_json: bool) -> None:
    """Smith's learning-rate range test: prints the suggested lr (the model is left unchanged)."""
    from . import lr_range_test, weight_decay_groups

    if not end_lr > start_lr:
        _fail(f"--end-lr ({end_lr:g}) must be larger than --start-lr ({start_lr:g}).")
    prob = _load(problem, checkpoint, device)
    optimizer = _optimizer(opt_name, weight_decay_groups(prob.model, weight_decay), start_lr, momentum, weight_decay)
    with progress_bars(not as_json) as task:
        result = lr_range_test(prob.model, prob.loss_fn, prob.train_data, optimizer, start_lr=start_lr,
                               end_lr=end_lr, steps=steps, suggestion=suggestion, progress=task("LR range test"))
    payload: dict[str, Any] = {"problem": prob.name, "optimizer": opt_name, **result.to_dict()}
    if plot is not None:
        from .report.lr_range import range_test_figure

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
@click.option("--warmup", "warmup_steps", type=click.IntRange(min=0), required=True, help="Warm-up steps (linear ramp).")
@click.option("--after", type=click.Choice(["constant", "cosine", "linear", "step", "inverse_sqrt"]),
              default="constant", show_default=True, help="Shape after the warm-up.")
@click.option("--steps", type=click.IntRange(min=1), required=True, help="Total training steps to show.")
@click.option("--lr", type=POSITIVE, default=1e-3, show_default=True, help="Peak (base) learning rate.")
@click.option("--start-factor", type=NON_NEGATIVE, default=None, help="lr multiplier at step 0 (default 1/warmup).")
@click.option("--min-factor", type=Number(minimum=0.0, maximum=1.0), default=0.0, show_default=True,
              help="Final multiplier for cosine/linear.")
@click.option("--step-size", type=click.IntRange(min=1), default=None, help="For --after step: decay every N steps.")
@click.option("--gamma", type=POSITIVE, default=0.1, show_default=True, help="For --after step: decay factor.")
@click.option("--d-model", type=click.IntRange(min=1), default=None, help="Transformer schedule (with --after inverse_sqrt).")
@click.option("--plot", default=None, callback=new_file("image"), help="Write the schedule plot here (a new file).")
@json_option
def schedule(warmup_steps: int, after: str, steps: int, lr: float, start_factor: float | None,
             min_factor: float, step_size: int | None, gamma: float, d_model: int | None, plot: Path | None,
             as_json: bool) -> None:
    """Show a warm-up schedule: the lr at a few steps, its peak and its end (lossdoctor.warmup).
    Computed in closed form at the steps shown, so any --steps is instant."""
    from .training.schedules import LISTED_STEPS, schedule_at, schedule_peak

    settings = {"warmup_steps": warmup_steps, "after": after, "start_factor": start_factor,
                "min_factor": min_factor, "step_size": step_size, "gamma": gamma, "d_model": d_model,
                "total_steps": steps if after in ("cosine", "linear") else None}
    shown = sorted({s for s in (0, 1, warmup_steps // 2, max(warmup_steps - 1, 0), warmup_steps, steps // 2,
                                steps - 1) if 0 <= s < steps})
    at = dict(zip(shown, schedule_at(lr, shown, **settings)))
    peak_step, peak_lr = schedule_peak(lr, steps, **settings)
    final_lr = schedule_at(lr, [steps - 1], **settings)[0]
    payload: dict[str, Any] = {"lr": lr, "steps": steps, **settings, "shown": {str(k): v for k, v in at.items()},
                               "peak_lr": peak_lr, "peak_step": peak_step, "final_lr": final_lr,
                               "lrs": schedule_at(lr, list(range(steps)), **settings) if steps <= LISTED_STEPS
                               else None}
    if plot is not None:
        from .report.schedules import schedule_figure

        payload["plot"] = written(schedule_figure(lambda xs: schedule_at(lr, xs, **settings), steps, plot,
                                                  title=f"warm-up {warmup_steps}, then {after}",
                                                  marks=(warmup_steps - 1, warmup_steps)), plot)
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
@click.option("--out", "out_dir", default="report", show_default=True, callback=output_dir,
              help="Folder of the report; a rerun keeps and skips the sections already finished there.")
@click.option("--full", is_flag=True, help="Larger runs (slower) instead of the quick defaults.")
@click.option("--only", multiple=True, help="Run only these sections (repeatable).")
@click.option("--force", is_flag=True, help="Redo finished sections instead of keeping them.")
def tour(out_dir: Path, full: bool, only: tuple[str, ...], force: bool) -> None:
    """Run every study on the embedded default and write an HTML report (resumable)."""
    from .tour import SECTIONS, run_tour

    unknown = sorted(set(only) - {s.key for s in SECTIONS})
    if unknown:
        _fail(f"--only {', '.join(unknown)}: no such section; the sections are "
              f"{', '.join(s.key for s in SECTIONS)}.")
    with progress_bars() as task:
        try:
            report = run_tour(out_dir, quick=not full, only=list(only) or None, progress_for=task, force=force,
                              log=note)
        except KeyboardInterrupt:
            console.print(f"[yellow]interrupted[/yellow]: the finished sections are kept in {escape(str(out_dir))}/; "
                          "rerun the same command to continue.")
            sys.exit(EXIT_INTERRUPTED)
    out.print(f"report written to {report}")


# The batch-size lab's commands live in their own module, which uses the helpers above.
from .cli_batch import batch  # noqa: E402

main.add_command(batch)

# The stall doctor's commands (diagnose, train) likewise.
from .cli_doctor import checkup_command, diagnose_command, train_command  # noqa: E402

main.add_command(diagnose_command)
main.add_command(checkup_command)
main.add_command(train_command)


if __name__ == "__main__":  # python -m lossdoctor.cli
    main()
