"""What every command shares.

The consoles, progress bars, option types and their checks, output files, the problem loader, the
device and the torchrun set-up (exit statuses: :mod:`lossdoctor.cli`). Parsing and output only, like
every module of the command line."""

from __future__ import annotations

import contextlib
import os
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from .. import _interrupt
from .._checks import check_float
from .._distributed import process_group_active, rank_and_world

console = Console(
    stderr=True, soft_wrap=True
)  # messages are not cut into lines: they stay greppable
out = Console()

EXIT_FAILURE, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 1, 2, 130
EXIT_CODES = (
    "Exit status: 0 done; 1 failed (disk, machine, or a lossdoctor bug); 2 bad input (an option, "
    "the problem file, a checkpoint, the data); 130 interrupted (what finished is printed and "
    "saved first)."
)


@contextlib.contextmanager
def progress_bars(enabled: bool = True) -> Iterator[Any]:
    """Yields ``task(description) -> callback(done, total)``; rich bars on stderr."""
    if not enabled:
        yield lambda description: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as bars:
        started: list[TaskID] = []

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


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    sys.exit(EXIT_BAD_INPUT)


def note(message: str) -> None:
    """A line for the user on stderr (never markup-interpreted)."""
    console.print(escape(message))


class CheckedGroup(click.Group):
    """Runs a command so that no user mistake ends in a traceback.

    Bad input exits 2 with the message, Ctrl-C exits 130 after the command printed and saved what
    finished (a partial result, flagged), other failures exit 1 with the message."""

    def invoke(self, ctx: click.Context) -> Any:
        mark = _interrupt.count()
        try:
            with _interrupt.recording():
                result = super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except (KeyboardInterrupt, Exception) as err:
            if os.environ.get("LOSSDOCTOR_DEBUG"):
                raise
            _exit_for(err)
        if _interrupt.count() != mark:
            console.print("[yellow]interrupted[/yellow]: the results above are what finished.")
            sys.exit(EXIT_INTERRUPTED)
        return result


def _exit_for(err: BaseException) -> NoReturn:
    """Say what went wrong and exit with its status (called inside the ``except`` block)."""
    if isinstance(err, KeyboardInterrupt):
        console.print("[yellow]interrupted[/yellow] before anything finished: nothing to show.")
        sys.exit(EXIT_INTERRUPTED)
    if isinstance(err, (ValueError, TypeError)):  # bad input: options, the problem, the data
        fail(str(err))
    if isinstance(err, OSError):
        console.print(f"[red]error:[/red] {escape(str(err))}")
        sys.exit(EXIT_FAILURE)
    # A bug in lossdoctor: say so, with the traceback to report.
    console.print(escape(traceback.format_exc()))
    console.print(
        "[red]internal error[/red]: this is a bug in lossdoctor; please report it with the "
        "traceback above."
    )
    sys.exit(EXIT_FAILURE)


# -- option types: every value checked while parsing, the message naming the option --------------
class Number(click.ParamType):
    """A finite float within bounds (click's FloatRange lets NaN and Inf through)."""

    name = "number"

    def __init__(
        self,
        *,
        minimum: float | None = None,
        maximum: float | None = None,
        above: float | None = None,
        below: float | None = None,
    ) -> None:
        self.bounds: dict[str, Any] = {
            "minimum": minimum,
            "maximum": maximum,
            "above": above,
            "below": below,
        }

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number.", param, ctx)
        try:
            return check_float(number, "the value", **self.bounds)
        except (TypeError, ValueError) as err:
            self.fail(str(err).replace("the value must be", "must be"), param, ctx)


class IntList(click.ParamType):
    """Comma-separated integers (``16,64,256``)."""

    name = "integers"

    def __init__(self, minimum: int = 1, distinct: bool = True) -> None:
        self.minimum, self.distinct = minimum, distinct

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> list[int]:
        if isinstance(value, list):
            return value
        parts = [v for v in str(value).replace(" ", "").split(",") if v]
        try:
            values = [int(v) for v in parts]
        except ValueError:
            self.fail(
                f"must be comma-separated integers, e.g. 16,64,256; got {value!r}.", param, ctx
            )
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


def option_name(param: click.Parameter) -> str:
    return param.opts[0] if getattr(param, "opts", None) else f"--{param.name}"


def new_file(
    formats: str | None = None,
) -> Callable[[click.Context, click.Parameter, Any], Path | None]:
    """A click callback for an output file.

    Checked while parsing, before any computing (its folder exists and is writable, the format is
    known with ``formats="image"``, the file does not exist). A default name that is taken moves on
    to the next free one (name-2.png)."""
    from .._files import check_new_file, image_formats

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Path | None:
        if value is None or value == "":
            return None
        default = ctx.get_parameter_source(param.name) in (
            click.core.ParameterSource.DEFAULT,
            click.core.ParameterSource.DEFAULT_MAP,
        )
        try:
            return check_new_file(
                value,
                option_name(param),
                default=default,
                formats=image_formats() if formats == "image" else None,
            )
        except (TypeError, ValueError) as err:
            raise click.BadParameter(str(err).replace(f"{option_name(param)} ", "", 1)) from None

    return callback


def output_dir(ctx: click.Context, param: click.Parameter, value: Any) -> Path | None:
    """A click callback for an output folder: it exists (or can be made) and is writable."""
    from .._files import check_output_dir

    if value is None:
        return None
    try:
        return check_output_dir(value, option_name(param))
    except (TypeError, ValueError) as err:
        raise click.BadParameter(str(err).replace(f"{option_name(param)} ", "", 1)) from None


def save_file(path: Path, write: Callable[[Any], None], what: str) -> str:
    """Write a new file at ``path`` (checked before computing).

    If that fails now, the result goes beside it (or to the working or temporary folder) and the
    user is told where. Returns the path written."""
    from .._files import save_new

    written, why = save_new(path, write)
    if why:
        console.print(f"[yellow]note[/yellow]: {escape(what)}: {escape(why)}")
    return str(written)


def written(path: Path, requested: Path | None, what: str = "plot") -> str:
    """The path a figure went to; says so when it is not the one asked for (the write failed)."""
    if requested is not None and Path(path) != Path(requested):
        console.print(
            f"[yellow]note[/yellow]: could not write the {escape(what)} to {escape(str(requested))}; "
            f"saved it to {escape(str(path))} instead."
        )
    return str(path)


_SIZE_UNITS = {"": 1, "B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def cache_setting(value: str) -> bool | str | int:
    """``--cache``: auto, on, off, or a size (bytes, or with KB/MB/GB) for ``hessian(cache=...)``."""
    word = value.strip().upper()
    if word in ("AUTO", "ON", "OFF"):
        settings: dict[str, bool | str] = {"AUTO": "auto", "ON": True, "OFF": False}
        return settings[word]
    number = word.rstrip("KMGB")
    try:
        size = float(number) * _SIZE_UNITS[word[len(number) :]]
    except (ValueError, KeyError):
        raise click.BadParameter(
            f"{value!r} is not auto, on, off or a size such as 200MB."
        ) from None
    if size < 0:
        raise click.BadParameter(f"{value!r}: the size must not be negative.")
    return int(size)


def init_distributed() -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1) join the process group; only rank 0 prints or writes."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(
                int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
            )
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.get_rank() != 0:
        out.quiet = True
        console.quiet = True


def is_rank_zero() -> bool:
    return rank_and_world()[0] == 0


def resolve_device(name: str):
    """``auto``: this rank's GPU under torchrun with CUDA, else the first GPU, else the CPU."""
    import os

    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device(
            "cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        )
    try:
        device = torch.device(name)
    except RuntimeError:
        fail(f"--device {name!r} is not a device name: use auto, cpu, cuda or cuda:N.")
    if device.type == "cuda" and not torch.cuda.is_available():
        fail(f"--device {name} asks for CUDA, but this PyTorch sees no GPU: use --device cpu.")
    if (
        device.type == "cuda"
        and device.index is not None
        and device.index >= torch.cuda.device_count()
    ):
        fail(
            f"--device {name}: this machine has {torch.cuda.device_count()} GPU(s), cuda:0 to "
            f"cuda:{torch.cuda.device_count() - 1}."
        )
    return device


def load(problem: str, checkpoint: str | None, device: str | None = "cpu", *, shard: bool = True):
    """Load ``problem`` and move its model to ``device`` (None: leave it where the problem put it).

    ``shard``: under torchrun, give each rank its share of a built-in problem's batches; the batch
    lab passes False, because it needs all the data on every rank (a sweep deals out runs, not
    samples)."""
    from ..problem import load_problem
    from ..zoo import BUILTIN

    target = resolve_device(device) if device is not None else None
    try:
        prob = load_problem(problem, checkpoint=checkpoint)
    except (
        ValueError,
        TypeError,
        FileNotFoundError,
    ) as err:  # UserCodeError shows the user's own line
        fail(
            str(err).replace("problem ", "--problem ", 1)
            if str(err).startswith("problem ")
            else str(err)
        )
    # data stays where the problem put it: CPU batches are moved to the model's device batch by batch
    if target is not None:
        prob.model.to(target)
    if shard and problem in BUILTIN and process_group_active():
        # Built-in data are lists of batches: each rank takes every world_size-th batch. A user's
        # problem function returns its own rank's shard.
        rank, world = rank_and_world()
        if isinstance(prob.train_data, list):
            prob.train_data = prob.train_data[rank::world]
    return prob


problem_option = click.option(
    "--problem",
    "problem",
    default="mnist1d-mlp",
    show_default=True,
    help="Built-in name (mnist1d-mlp, mnist1d-cnn, lecture-saddle) or "
    "'package.module:function' returning a Problem.",
)
checkpoint_option = click.option(
    "--checkpoint",
    type=click.Path(dir_okay=False),
    default=None,
    help="state_dict file to load into the model (weights_only).",
)
json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print machine-readable JSON only."
)
device_option = click.option(
    "--device",
    default="auto",
    show_default=True,
    help="Where the model runs: auto (a GPU when there is one), cpu, cuda, cuda:N.",
)
seed_option = click.option("--seed", type=SEED, default=0, show_default=True)


def plot_option(what: str, default: str | None = None) -> Callable[[Any], Any]:
    """``--plot``: where to write ``what`` (a new image file), nowhere unless given or ``default``.

    A ``default`` name that is taken becomes name-2.png."""
    if default is None:
        return click.option(
            "--plot",
            default=None,
            callback=new_file("image"),
            help=f"Write {what} here (a new file).",
        )
    return click.option(
        "--plot",
        default=default,
        show_default=True,
        callback=new_file("image"),
        help=f"Where to write {what} (a new file; a default name that is taken becomes name-2.png).",
    )


def problem_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """``--problem`` and ``--checkpoint``: the model analysed and the weights loaded into it."""
    return problem_option(checkpoint_option(command))


def mode_option(default: str | None = "eval") -> Callable[[Any], Any]:
    """``--mode eval|train``; ``default=None``: eval, with a notice on BatchNorm or dropout."""
    if default is not None:
        return click.option(
            "--mode", type=click.Choice(["eval", "train"]), default=default, show_default=True
        )
    return click.option(
        "--mode",
        type=click.Choice(["eval", "train"]),
        default=None,
        help="eval (dropout off, BatchNorm running statistics) or train (batch statistics). "
        "Default: eval, with a notice on models with BatchNorm or dropout.",
    )


def window_option(help: str) -> Callable[[Any], Any]:
    """``--window``: the recent steps a trend or a stall is read from."""
    return click.option(
        "--window", type=click.IntRange(min=4), default=60, show_default=True, help=help
    )


def reduction_option(help: str) -> Callable[[Any], Any]:
    """``--reduction auto|mean|sum``: how the problem's loss combines a batch's samples."""
    return click.option(
        "--reduction",
        type=click.Choice(["auto", "mean", "sum"]),
        default="auto",
        show_default=True,
        help=help,
    )
