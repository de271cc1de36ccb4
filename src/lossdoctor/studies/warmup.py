"""Study: learning-rate warm-up.

Adam at a large learning rate and a large batch on MNIST-1D, with and without a linear warm-up, over
several seeds: the per-step training loss, the number of loss spikes, the final losses, and the lr
schedule itself."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .._results import ResultMixin, fmt
from ..progress import Progress
from ..training.loop import TrainHistory, train
from ..training.schedules import schedule_lrs, warmup
from ..zoo import build
from ._threads import one_thread

SPIKE_FACTOR = 1.5


def count_spikes(losses: list[float], factor: float = SPIKE_FACTOR) -> int:
    """Excursions of the step loss above ``factor`` times its lowest value so far (each counted once, at the step it starts); a non-finite loss counts as a spike."""
    best, inside, spikes = math.inf, False, 0
    for value in losses:
        high = not math.isfinite(value) or value > factor * best
        if high and not inside:
            spikes += 1
        inside = high
        if math.isfinite(value):
            best = min(best, value)
    return spikes


@dataclass(frozen=True)
class WarmupRun(ResultMixin):
    """One training run with (or without) warm-up."""

    warmup_steps: int
    seed: int
    history: TrainHistory
    spikes: int
    max_early_loss: float  # highest step loss after the first step, first quarter of training
    final_train_loss: float
    final_test_accuracy: float | None
    diverged: bool


@dataclass(frozen=True)
class WarmupStudy(ResultMixin):
    """The warm-up study's result: every run and the schedules."""

    lr: float
    batch_size: int
    model: str
    epochs: int
    steps: int
    warmup_steps: int
    seeds: list[int]
    schedule_without: list[float]
    schedule_with: list[float]
    runs: list[WarmupRun]
    spike_factor: float

    _skip_in_dict = ("schedule_without", "schedule_with")

    def of(self, warmup_steps: int) -> list[WarmupRun]:
        """The runs with ``warmup_steps`` of warm-up (0: none)."""
        return [r for r in self.runs if r.warmup_steps == warmup_steps]

    def __str__(self) -> str:
        lines = [
            f"Warm-up: Adam lr {fmt(self.lr)}, batch {self.batch_size}, {self.model}, {self.steps} steps, "
            f"seeds {self.seeds}"
        ]
        for w in (0, self.warmup_steps):
            runs = self.of(w)
            lines.append(
                f"  warm-up {w:4d} steps: spikes {[r.spikes for r in runs]}, final train loss "
                f"{[round(r.final_train_loss, 4) for r in runs]}, diverged {sum(r.diverged for r in runs)}"
            )
        return "\n".join(lines)


def run(*, quick: bool = True, progress: Progress | None = None) -> WarmupStudy:
    """Run the warm-up study (``quick``: fewer seeds and steps)."""
    lr, batch, depth, hidden = 0.03, 1000, 4, 256
    epochs = 25 if quick else 60
    seeds = [0, 1, 2] if quick else [0, 1, 2, 3, 4, 5]
    warm = 40
    runs: list[WarmupRun] = []
    steps = 0
    total = 2 * len(seeds)
    with one_thread():
        for seed in seeds:
            for w in (0, warm):
                problem = build(
                    "mnist1d-mlp", batch_size=batch, seed=seed, hidden=hidden, depth=depth
                )
                opt = torch.optim.Adam(problem.model.parameters(), lr=lr)
                scheduler = warmup(opt, warmup_steps=w) if w else None
                history = train(
                    problem.model,
                    problem.loss_fn,
                    problem.train_data,
                    opt,
                    epochs=epochs,
                    test_data=problem.test_data,
                    scheduler=scheduler,
                )
                steps = history.steps
                sl = history.step_loss
                final = history.epoch_train_loss[-1]
                runs.append(
                    WarmupRun(
                        warmup_steps=w,
                        seed=seed,
                        history=history,
                        spikes=count_spikes(sl),
                        max_early_loss=float(np.max(sl[1 : max(2, len(sl) // 4)])),
                        final_train_loss=final,
                        final_test_accuracy=history.epoch_test_accuracy[-1]
                        if history.epoch_test_accuracy
                        else None,
                        diverged=not math.isfinite(final) or final > sl[0],
                    )
                )
                if progress is not None:
                    progress(len(runs), total)
    return WarmupStudy(
        lr=lr,
        batch_size=batch,
        model=f"MLP {depth}x{hidden}",
        epochs=epochs,
        steps=steps,
        warmup_steps=warm,
        seeds=seeds,
        schedule_without=schedule_lrs(lr, steps, warmup_steps=0),
        schedule_with=schedule_lrs(lr, steps, warmup_steps=warm),
        runs=runs,
        spike_factor=SPIKE_FACTOR,
    )
