"""Study: Smith's learning-rate range test on MNIST-1D, then training from the same initial weights at the suggested lr and at 10x below and above it."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from .._results import ResultMixin, fmt
from ..progress import Progress, scaled
from ..training.loop import TrainHistory, train
from ..training.lr_finder import LRRangeResult, lr_range_test
from ..zoo import build
from ._threads import one_thread

MULTIPLIERS = (0.1, 1.0, 10.0)


@dataclass(frozen=True)
class LRTrial(ResultMixin):
    """One training run at a multiple of the suggested lr."""

    multiplier: float
    lr: float
    seed: int
    history: TrainHistory
    final_train_loss: float
    final_test_loss: float | None
    final_test_accuracy: float | None


@dataclass(frozen=True)
class LRRangeStudy(ResultMixin):
    """The LR-range study's result: the range test and the runs at each multiple of its suggestion."""

    problem: str
    optimizer: str
    batch_size: int
    epochs: int
    seeds: list[int]
    range_test: LRRangeResult  # on seed seeds[0]
    model_unchanged: bool  # the range test left the weights and the optimizer as they were
    trials: list[LRTrial]

    def of(self, multiplier: float) -> list[LRTrial]:
        """The runs at ``multiplier`` times the suggested lr."""
        return [t for t in self.trials if t.multiplier == multiplier]

    def __str__(self) -> str:
        lines = [
            f"LR range test on {self.problem} ({self.optimizer}, batch {self.batch_size}): suggested lr "
            f"{fmt(self.range_test.suggested_lr)}"
        ]
        for m in MULTIPLIERS:
            ts = self.of(m)
            lines.append(
                f"  {m:>4g}x (lr {fmt(ts[0].lr)}): final train loss "
                f"{[round(t.final_train_loss, 4) for t in ts]}, test accuracy "
                f"{[t.final_test_accuracy for t in ts]}"
            )
        return "\n".join(lines)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run(*, quick: bool = True, progress: Progress | None = None) -> LRRangeStudy:
    """Run the LR-range study."""
    batch = 100
    epochs = 6 if quick else 25
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    total = 100 + len(seeds) * len(MULTIPLIERS) * epochs * 40
    with one_thread():
        problem = build("mnist1d-mlp", batch_size=batch, seed=seeds[0])
        opt = torch.optim.Adam(problem.model.parameters(), lr=1e-3)
        before = copy.deepcopy(problem.model.state_dict())
        result = lr_range_test(
            problem.model,
            problem.loss_fn,
            problem.train_data,
            opt,
            start_lr=1e-5,
            end_lr=10.0,
            steps=100,
            progress=scaled(progress, 0, total),
        )
        unchanged = _same(before, problem.model.state_dict()) and len(opt.state) == 0
        trials: list[LRTrial] = []
        done = 100
        for seed in seeds:
            for m in MULTIPLIERS:
                p = build("mnist1d-mlp", batch_size=batch, seed=seed)
                lr = result.suggested_lr * m
                h = train(
                    p.model,
                    p.loss_fn,
                    p.train_data,
                    torch.optim.Adam(p.model.parameters(), lr=lr),
                    epochs=epochs,
                    test_data=p.test_data,
                    progress=scaled(progress, done, total),
                )
                done += h.steps
                trials.append(
                    LRTrial(
                        multiplier=m,
                        lr=lr,
                        seed=seed,
                        history=h,
                        final_train_loss=h.epoch_train_loss[-1],
                        final_test_loss=h.epoch_test_loss[-1] if h.epoch_test_loss else None,
                        final_test_accuracy=h.epoch_test_accuracy[-1]
                        if h.epoch_test_accuracy
                        else None,
                    )
                )
    if progress is not None:
        progress(total, total)
    return LRRangeStudy(
        problem="mnist1d-mlp",
        optimizer="Adam",
        batch_size=batch,
        epochs=epochs,
        seeds=seeds,
        range_test=result,
        model_unchanged=unchanged,
        trials=trials,
    )
