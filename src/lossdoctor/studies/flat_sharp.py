"""Study: flat vs. sharp.

The small- and large-batch solutions of the sweep (same seed, same initialization), the loss along
the straight line between them (Keskar et al.'s Figure 3) and filter-normalized 1-D and 2-D
landscapes around each (Li et al.), with the training and test loss on the same axes: the lecture's
picture of the shifted training and test curves."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from .._results import ResultMixin
from ..analysis.landscape import Curve, Landscape, interpolate, landscape
from ..progress import Progress, scaled
from ..zoo import build
from . import batch_sweep
from ._threads import one_thread


@dataclass(frozen=True)
class FlatSharpStudy(ResultMixin):
    """The flat-vs-sharp study's result: the interpolation and the landscapes around both solutions."""

    small_batch: int
    large_batch: int
    seed: int
    milestone: str
    small_lambda_max: float | None
    large_lambda_max: float | None
    small_epsilon: float | None
    large_epsilon: float | None
    curve: Curve
    line_small: Landscape
    line_large: Landscape
    plane_small: Landscape
    plane_large: Landscape

    def __str__(self) -> str:
        return (
            f"Flat vs sharp at {self.milestone}: batch {self.small_batch} vs {self.large_batch} (seed {self.seed})"
            f"\n  {self.curve}\n  small: {self.line_small}\n  large: {self.line_large}"
        )


def wall_rise(land: Landscape) -> float:
    """Mean training-loss increase at the ends of a 1-D landscape (how steep the walls are)."""
    loss = np.asarray(land.train_loss, dtype=float)
    return float((loss[0] + loss[-1]) / 2 - land.center_loss)


def run(*, quick: bool = True, progress: Progress | None = None) -> FlatSharpStudy:
    """Run the flat-vs-sharp study (``quick``: fewer points)."""
    sweep_study = batch_sweep.run(quick=quick)
    sweep = sweep_study.sweep
    cfg = batch_sweep.settings(quick)
    small_b, large_b, seed = sweep.batch_sizes[0], sweep.batch_sizes[-1], sweep.seeds[0]
    small_run, large_run = sweep.run(small_b, seed), sweep.run(large_b, seed)
    # Matched training loss when both runs got there (Keskar compares solutions of similar
    # training accuracy); equal epochs otherwise.
    label = next(
        (
            m.label
            for m in small_run.milestones
            if m.kind == "loss"
            and m.reached
            and (matched := large_run.at(m.label)) is not None
            and matched.reached
        ),
        small_run.milestones[0].label,
    )
    problem = build("mnist1d-mlp", num_train=cfg["num_train"], num_test=1000, hidden=64, depth=2)
    models = []
    for r in (small_run, large_run):
        if r.states is None:
            raise ValueError(
                f"run {r.key} of the sweep kept no states: run it with keep_states=True."
            )
        model = copy.deepcopy(problem.model)
        model.load_state_dict(r.states[label])
        models.append(model)
    steps_1d, steps_2d = (41, 21) if quick else (81, 41)
    total = 6
    with one_thread():
        curve = interpolate(
            models[0],
            models[1],
            problem.loss_fn,
            problem.train_data,
            np.linspace(-0.5, 1.5, 41 if quick else 81),
            test_data=problem.test_data,
            progress=scaled(progress, 0, total),
        )
        lands = []
        for i, (dims, steps) in enumerate(
            ((1, steps_1d), (1, steps_1d), (2, steps_2d), (2, steps_2d))
        ):
            model = models[i % 2]
            lands.append(
                landscape(
                    model,
                    problem.loss_fn,
                    problem.train_data,
                    dims=dims,
                    steps=steps,
                    span=1.0,
                    test_data=problem.test_data,
                    seed=seed,
                )
            )
            if progress:
                progress(i + 2, total)
    ms, ml = small_run.at(label), large_run.at(label)
    if (
        ms is None or ml is None
    ):  # label is a milestone of both runs (the sweep records the same ones)
        raise ValueError(f"milestone {label!r} is missing from run {small_b} or {large_b}.")
    return FlatSharpStudy(
        small_batch=small_b,
        large_batch=large_b,
        seed=seed,
        milestone=label,
        small_lambda_max=ms.lambda_max,
        large_lambda_max=ml.lambda_max,
        small_epsilon=ms.epsilon_sharpness,
        large_epsilon=ml.epsilon_sharpness,
        curve=curve,
        line_small=lands[0],
        line_large=lands[1],
        plane_small=lands[2],
        plane_large=lands[3],
    )
