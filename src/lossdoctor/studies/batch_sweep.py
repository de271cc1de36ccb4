"""Study: the batch-size sweep on MNIST-1D (small batches up to >= 10% of the training set, three or more seeds), and Keskar et al.'s claim checked three ways: sharpness and accuracy at equal epochs, at equal updates, and at matched training loss.

The sweep is kept in memory (with each milestone's weights) for the flat-vs-sharp and
noise-scale sections, which use the same runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .._results import ResultMixin
from ..progress import Progress
from ..training.sweep import SweepResult, batch_size_sweep
from ..zoo import build
from ._threads import one_thread

METRICS = (
    ("lambda_max", "lower", "lambda_max"),
    ("epsilon_sharpness", "lower", "eps-sharpness (1e-3)"),
    ("test_accuracy", "higher", "test accuracy"),
)


@dataclass(frozen=True)
class Comparison(ResultMixin):
    """Smallest vs. largest batch at one milestone: which of Keskar's three predictions hold."""

    label: str
    small_batch: int
    large_batch: int
    small: dict[str, Any]
    large: dict[str, Any]
    holds: dict[str, bool | None]  # per metric: the small batch is flatter / tests better
    clear: dict[str, bool | None]  # ... by more than the spread over seeds
    verdict: str  # "supports", "partly supports", "does not support", "not measurable"
    text: str


@dataclass(frozen=True)
class BatchSweepStudy(ResultMixin):
    """The batch-size sweep study's result: the sweep and its comparisons at each milestone."""

    model: str
    num_train: int
    sweep: SweepResult
    comparisons: list[Comparison]

    def __str__(self) -> str:
        return (
            str(self.sweep)
            + "\n"
            + "\n".join(f"  {c.label}: {c.verdict}. {c.text}" for c in self.comparisons)
        )


def settings(quick: bool) -> dict[str, Any]:
    """The sweep's settings: the quick tour's, or the full study's (``quick=False``)."""
    if quick:
        return {
            "num_train": 2000,
            "batch_sizes": [16, 64, 256, 1024],
            "seeds": [0, 1, 2],
            "epochs": 20,
            "updates": 1000,
            "stop_at_loss": [0.1],
            "max_epochs": 400,
        }
    return {
        "num_train": 4000,
        "batch_sizes": [16, 32, 64, 128, 256, 512, 1024],
        "seeds": [0, 1, 2, 3, 4],
        "epochs": 40,
        "updates": 3000,
        "stop_at_loss": [0.1, 0.01],
        "max_epochs": 500,
    }


def compare(sweep: SweepResult, label: str) -> Comparison:
    """Compare the batch sizes at milestone ``label``: which of Keskar et al.'s claims the sweep supports there."""
    rows = sweep.table(label)
    small, large = rows[0], rows[-1]
    holds: dict[str, bool | None] = {}
    clear: dict[str, bool | None] = {}
    parts = []
    for name, better, title in METRICS:
        a, b = small[name], large[name]
        if a is None or b is None:
            holds[name] = clear[name] = None
            parts.append(f"{title}: not measured (a milestone was not reached)")
            continue
        holds[name] = bool(a < b) if better == "lower" else bool(a > b)
        clear[name] = bool(abs(a - b) > (small[name + "_std"] or 0) + (large[name + "_std"] or 0))
        pct = name == "test_accuracy"
        fa, fb = (f"{100 * a:.1f}%", f"{100 * b:.1f}%") if pct else (f"{a:.3g}", f"{b:.3g}")
        parts.append(
            f"{title} {fa} (batch {small['batch_size']}) vs {fb} (batch {large['batch_size']}): "
            + ("as claimed" if holds[name] else "opposite to the claim")
            + ("" if clear[name] else ", within the spread over seeds")
        )
    known = [v for v in holds.values() if v is not None]
    if not known:
        verdict = "not measurable"
    elif all(known) and len(known) == len(METRICS) and all(clear.values()):
        verdict = "supports"
    elif any(h and c for h, c in zip(holds.values(), clear.values())):
        verdict = "partly supports"
    else:
        verdict = "does not support"
    ta, tb = small["train_accuracy"], large["train_accuracy"]
    train = (
        ""
        if ta is None or tb is None
        else f" Training accuracy {100 * ta:.1f}% vs {100 * tb:.1f}%, training loss "
        f"{small['train_loss']:.3g} vs {large['train_loss']:.3g}."
    )
    return Comparison(
        label=label,
        small_batch=small["batch_size"],
        large_batch=large["batch_size"],
        small=small,
        large=large,
        holds=holds,
        clear=clear,
        verdict=verdict,
        text="; ".join(parts) + "." + train,
    )


_CACHE: dict[bool, BatchSweepStudy] = {}


def run(*, quick: bool = True, progress: Progress | None = None) -> BatchSweepStudy:
    """Run (or reuse, within this process) the tour's sweep."""
    if quick in _CACHE:
        if progress:
            progress(1, 1)
        return _CACHE[quick]
    cfg = settings(quick)
    problem = build("mnist1d-mlp", num_train=cfg["num_train"], num_test=1000, hidden=64, depth=2)
    with one_thread():
        sweep = batch_size_sweep(
            problem,
            cfg["batch_sizes"],
            epochs=cfg["epochs"],
            updates=cfg["updates"],
            stop_at_loss=cfg["stop_at_loss"],
            max_epochs=cfg["max_epochs"],
            lr=3e-3,
            optimizer="adam",
            seeds=cfg["seeds"],
            check_every=25,
            keep_states=True,
            progress=progress,
        )
    study = BatchSweepStudy(
        model="MNIST-1D MLP 40-64-64-10, Adam lr 3e-3",
        num_train=cfg["num_train"],
        sweep=sweep,
        comparisons=[compare(sweep, label) for label in sweep.labels],
    )
    _CACHE[quick] = study
    return study
