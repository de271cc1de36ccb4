"""Study: the gradient noise scale B_simple (McCandlish et al. 2018) on MNIST-1D, along the sweep's small-batch run, and the batch size it recommends checked against the sweep: where does time (and the number of updates) to reach the target training loss stop improving?"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from .._results import ResultMixin
from ..analysis.noise_scale import NoiseScale, gradient_noise_scale
from ..progress import Progress
from ..training.sweep import initialize
from ..zoo import build
from . import batch_sweep
from ._threads import one_thread

IMPROVING = 0.9  # a batch size "still improves" if it cuts time-to-target by more than 10%


@dataclass(frozen=True)
class NoiseScaleStudy(ResultMixin):
    """The noise-scale study's result: B_simple along training and the sweep's cost to the target loss."""

    target_loss: float
    points: list[tuple[str, float, NoiseScale]]  # (where, training loss, estimate)
    recommended_batch: int
    batch_sizes: list[int]
    seconds_to_target: list[float | None]  # mean over the seeds that reached the target
    seconds_to_target_std: list[float | None]
    updates_to_target: list[float | None]
    samples_to_target: list[float | None]
    reached: list[int]
    seeds: int
    time_stops_improving_at: int | None
    samples_double_at: int | None  # empirical critical batch: samples-to-target 2x the least

    def __str__(self) -> str:
        lines = [f"Gradient noise scale (target training loss {self.target_loss:g}):"]
        lines += [f"  {where}: train loss {loss:.3g}, {ns}" for where, loss, ns in self.points]
        lines.append(
            f"  recommended batch {self.recommended_batch}; time-to-target stops improving at batch "
            f"{self.time_stops_improving_at}, samples-to-target double at {self.samples_double_at}"
        )
        return "\n".join(lines)


def _stops_improving(sizes: list[int], values: list[float | None], factor: float) -> int | None:
    """The first batch size after which growing the batch no longer cuts ``values`` below ``factor`` times their current value."""
    known = [(b, v) for b, v in zip(sizes, values) if v is not None]
    for (b, v), (_, nxt) in zip(known, known[1:]):
        if nxt > factor * v:
            return b
    return None  # still improving at the largest batch tried


def _doubled(sizes: list[int], samples: list[float | None]) -> int | None:
    """McCandlish et al.: at the critical batch, reaching a loss takes twice the fewest samples."""
    known = [s for s in samples if s is not None]
    if not known:
        return None
    return next((b for b, s in zip(sizes, samples) if s is not None and s >= 2 * min(known)), None)


def run(*, quick: bool = True, progress: Progress | None = None) -> NoiseScaleStudy:
    """Run the noise-scale study."""
    sweep = batch_sweep.run(quick=quick).sweep
    cfg = batch_sweep.settings(quick)
    target = cfg["stop_at_loss"][0]
    problem = build("mnist1d-mlp", num_train=cfg["num_train"], num_test=1000, hidden=64, depth=2)
    small_b, seed = sweep.batch_sizes[0], sweep.seeds[0]
    run0 = sweep.run(small_b, seed)
    states = run0.states or {}  # the batch-sweep study keeps each milestone's weights
    pairs = 60 if quick else 200
    wanted = [("initialization", None)] + [
        (f"batch {small_b}, {m.label}", m.label)
        for m in sorted(run0.milestones, key=lambda m: m.step)
        if m.reached
    ]
    points = []
    with one_thread():
        for i, (where, label) in enumerate(wanted):
            model = (
                initialize(problem.model, seed) if label is None else copy.deepcopy(problem.model)
            )
            if label is not None:
                model.load_state_dict(states[label])
            ns = gradient_noise_scale(
                model,
                problem.loss_fn,
                problem.train_data,
                small_batch=16,
                big_batch=cfg["num_train"],
                pairs=pairs,
                seed=seed,
            )
            points.append((where, ns.loss, ns))
            if progress:
                progress(i + 1, len(wanted))
    at_target = next(
        (ns for where, _, ns in points if where.endswith(f"loss<={target:g}")), points[-1][2]
    )
    secs, secs_std, ups, samples, reached = [], [], [], [], []
    for b in sweep.batch_sizes:
        times = (r.time_to_loss(target) for r in sweep.runs if r.batch_size == b)
        hits = [h for h in times if h is not None]
        reached.append(len(hits))
        secs.append(float(np.mean([h[0] for h in hits])) if hits else None)
        secs_std.append(float(np.std([h[0] for h in hits])) if hits else None)
        ups.append(float(np.mean([h[1] for h in hits])) if hits else None)
        samples.append(float(np.mean([h[1] for h in hits])) * b if hits else None)
    return NoiseScaleStudy(
        target_loss=target,
        points=points,
        recommended_batch=at_target.suggested_batch_size,
        batch_sizes=list(sweep.batch_sizes),
        seconds_to_target=secs,
        seconds_to_target_std=secs_std,
        updates_to_target=ups,
        samples_to_target=samples,
        reached=reached,
        seeds=len(sweep.seeds),
        time_stops_improving_at=_stops_improving(sweep.batch_sizes, secs, IMPROVING),
        samples_double_at=_doubled(sweep.batch_sizes, samples),
    )
