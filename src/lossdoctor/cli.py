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


def _load(problem: str, checkpoint: str | None):
    from .problem import load_problem

    try:
        return load_problem(problem, checkpoint=checkpoint)
    except (ValueError, TypeError, FileNotFoundError) as err:
        _fail(str(err))


problem_option = click.option("--problem", "problem", default="mnist1d-mlp", show_default=True,
                              help="Built-in name (mnist1d-mlp, mnist1d-cnn, lecture-saddle) or "
                                   "'package.module:function' returning a Problem.")
checkpoint_option = click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                                 help="state_dict file to load into the model (weights_only).")
json_option = click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON only.")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lossdoctor")
def main() -> None:
    """lossdoctor: why did my training loss stop going down, and what should I change?"""


@main.command()
@problem_option
@checkpoint_option
@click.option("--k", default=5, show_default=True, help="Eigenpairs per end of the spectrum.")
@click.option("--which", type=click.Choice(["largest", "smallest", "both"]), default="both", show_default=True)
@click.option("--tol", default=1e-6, show_default=True, help="Relative accuracy of the eigenvalues.")
@click.option("--trace-matvecs", default=99, show_default=True, help="Products for the Hutch++ trace (0: skip).")
@click.option("--density/--no-density", default=True, show_default=True, help="Spectral density (SLQ).")
@click.option("--mode", type=click.Choice(["eval", "train"]), default="eval", show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--plot", type=click.Path(dir_okay=False), default="spectrum-density.png", show_default=True,
              help="Where to write the density plot.")
@json_option
def spectrum(problem: str, checkpoint: str | None, k: int, which: str, tol: float, trace_matvecs: int,
             density: bool, mode: str, seed: int, plot: str, as_json: bool) -> None:
    """Hessian eigenvalues (both ends), trace and spectral density of a problem."""
    from . import eigenpairs, hessian, spectral_density, trace

    prob = _load(problem, checkpoint)
    results: dict[str, Any] = {"problem": prob.name}
    try:
        op = hessian(prob.model, prob.loss_fn, prob.train_data, mode=mode)
    except (ValueError, TypeError) as err:
        _fail(str(err))
    results.update(num_params=op.num_params, num_samples=op.num_samples, mode=op.mode, loss=op.loss)
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
    if dens is not None and plot:
        from .report.spectrum import density_figure

        results["density_plot"] = str(density_figure(dens, Path(plot)))
    if as_json:
        out.print_json(json.dumps(results))
        return
    out.print(f"{op!r}\nmean loss {op.loss:.6g}")
    out.print(str(eig))
    if tr is not None:
        out.print(str(tr))
    if dens is not None:
        out.print(str(dens))
        out.print(f"density plot: {results['density_plot']}")


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


if __name__ == "__main__":  # python -m lossdoctor.cli
    main()
