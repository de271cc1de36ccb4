"""Study: does the stall doctor name the right cause, and does its first prescription fix the stall?

Every family of ``studies/stall_cases.py`` (a cause on one architecture: linear models, MLPs, a
CNN with BatchNorm, a small transformer with AdamW) is built for each seed and handed to
:func:`lossdoctor.diagnose` exactly as a user would: the model where it stalled, its loss, its
training batches, the last 240 losses, the optimizer (and, for a run whose parameters went NaN,
the checkpoint a training loop would have kept). Trials run (``verify="auto"``).

Then the fix is judged as an outsider would: from the stalled state, training continues over the
same batches for the family's horizon three times: unchanged; with the known remedy; with the
doctor's first prescription applied through its own ``apply``. A stall counts as *fixed* when the
prescription closes at least half the gap between unchanged and the remedy (full training loss);
*harmful* when it ends worse than unchanged (or NaN). Healthy runs count as false alarms when
called stalled, and pass when the first prescription is "no change".

Seeds ``TUNE_SEEDS`` shaped the decision rules and candidates; ``HELD_OUT_SEEDS`` only measure
them (and were run once, after the rules were fixed).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._results import ResultMixin
from ..doctor.diagnosis import CAUSES, diagnose
from ..doctor.prescriptions import NeedsCodeChange, detach_hooks
from ..progress import Progress
from ._threads import one_thread
from .stall_cases import FAMILIES, Stall, StallFamily, full_loss, train_steps

# Seeds 3-5 were the first held-out run (94/102 causes, 77/84 fixed, 1 harmful); its harmful case
# exposed a ranking bug (a candidate cut in the first round of the trials ranked as if it could not
# be tried), which was fixed, so those seeds count as tuning now. 6-8 are held out.
TUNE_SEEDS = (0, 1, 2, 3, 4, 5)
HELD_OUT_SEEDS = (6, 7, 8)
# Held out for the Monitor's treatment after seed 6's healthy BatchNorm CNN (treated at a loss
# bump) informed the treat=True rules; seed 9 then informed the final rule, so 10-11 remain.
FRESH_SEEDS = (9, 10, 11)
HISTORY = 240
HARM_TOLERANCE = 1e-3  # relative: a prescription ending this much above unchanged is harmful


@dataclass(frozen=True)
class ValidationRun(ResultMixin):
    """One family on one seed: the verdict, the first prescription, and what it did."""

    family: str
    architecture: str
    seed: int
    truth: str
    predicted: str
    correct: bool
    seconds: float
    hvps: int
    trial_steps: int
    top_text: str
    top_action: dict[str, Any]
    top_applicable: bool
    verified: bool
    trial_gain: float | None
    horizon: int
    unchanged: float | None
    remedy: float | None
    prescribed: float | None
    fixed: bool | None
    harmful: bool | None
    summary: str


@dataclass(frozen=True)
class ValidationStudy(ResultMixin):
    """Every run, the confusion matrix (rows: true cause, columns: predicted, order of ``causes``), and the rates the issue's floors are stated in."""

    seeds: tuple[int, ...]
    tune_seeds: tuple[int, ...]
    held_out: bool
    causes: tuple[str, ...]
    runs: list[ValidationRun]
    confusion: list[list[int]]
    accuracy: float
    healthy_runs: int
    healthy_false_alarms: int
    healthy_no_change: int
    stalled_runs: int
    fixed: int
    harmful: int
    seconds: float

    @property
    def fix_rate(self) -> float:
        """The fraction of stalled runs whose first prescription fixed the stall."""
        return self.fixed / self.stalled_runs if self.stalled_runs else math.nan

    def __str__(self) -> str:
        which = "held-out" if self.held_out else "tuning"
        lines = [
            f"Doctor validation on {which} seeds {list(self.seeds)} ({len(self.runs)} runs, "
            f"{len({r.family for r in self.runs})} families; rules tuned on seeds {list(self.tune_seeds)}):",
            f"  right cause: {sum(r.correct for r in self.runs)}/{len(self.runs)} = {self.accuracy:.1%}",
            f"  healthy runs called stalled: {self.healthy_false_alarms}/{self.healthy_runs}; first prescription "
            f"'no change': {self.healthy_no_change}/{self.healthy_runs}",
            f"  stalls fixed by the first prescription: {self.fixed}/{self.stalled_runs} = {self.fix_rate:.1%}; "
            f"harmful: {self.harmful}",
            "  true \\ predicted: " + " ".join(c[:6] for c in self.causes),
        ]
        for cause, row in zip(self.causes, self.confusion):
            if any(row):
                lines.append(f"  {cause:20s} " + " ".join(f"{n:6d}" for n in row))
        for r in self.runs:
            if not r.correct:
                lines.append(f"  miss: {r.family} seed {r.seed}: {r.predicted} ({r.summary})")
            if r.fixed is False:
                lines.append(
                    f"  not fixed: {r.family} seed {r.seed}: {r.top_text} (unchanged {r.unchanged:.4g}, remedy "
                    f"{r.remedy:.4g}, prescribed {r.prescribed:.4g})"
                )
        return "\n".join(lines)


def continue_training(stall: Stall, change: Any = None) -> float:
    """The full training loss after the family's horizon from the stalled state, with ``change`` (a function of ``(model, optimizer)`` returning the optimizer) applied first; the model and optimizer are put back afterwards.

    NaN/Inf gives inf."""
    model, opt = stall.model, stall.optimizer
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    used = opt
    try:
        with torch.random.fork_rng():
            torch.manual_seed(stall.steps)
            if change is not None:
                used = change(model, opt) or opt
            losses = train_steps(model, stall.loss_fn, used, stall.data, stall.steps, stall.horizon)
            value = full_loss(model, stall.loss_fn, stall.full_data)
        finite = math.isfinite(value) and (not losses or math.isfinite(losses[-1]))
        return value if finite else math.inf
    finally:
        detach_hooks(opt)
        if used is not opt:
            detach_hooks(used)
        model.load_state_dict(saved_model)
        opt.load_state_dict(saved_opt)


def run_case(family: StallFamily, seed: int, *, judge_fix: bool = True) -> ValidationRun:
    """Build one stall case of ``family`` from ``seed``, diagnose it, and (``judge_fix``) judge its first prescription."""
    stall = family.build(seed)
    started = time.perf_counter()
    d = diagnose(
        stall.model,
        stall.loss_fn,
        stall.data,
        history=stall.losses[-HISTORY:],
        optimizer=stall.optimizer,
        checkpoint=stall.checkpoint,
    )
    seconds = time.perf_counter() - started
    top = d.prescriptions[0]
    unchanged = remedy = prescribed = None
    fixed = harmful = None
    if judge_fix and family.cause not in ("progressing", "converged"):
        unchanged = continue_training(stall)
        remedy = continue_training(stall, stall.remedy)
        try:
            prescribed = continue_training(stall, top.apply) if top.applicable else unchanged
        except NeedsCodeChange:
            prescribed = unchanged
        gap = unchanged - remedy
        fixed = (
            bool(gap > 0 and unchanged - prescribed >= 0.5 * gap)
            if math.isfinite(prescribed)
            else False
        )
        harmful = bool(
            not math.isfinite(prescribed)
            or prescribed > unchanged + HARM_TOLERANCE * abs(unchanged)
        )
    return ValidationRun(
        family=family.key,
        architecture=family.architecture,
        seed=seed,
        truth=family.cause,
        predicted=d.cause,
        correct=d.cause == family.cause,
        seconds=seconds,
        hvps=int(d.cost.get("hvps", 0)),
        trial_steps=int(d.cost.get("trial_steps", 0)),
        top_text=top.text,
        top_action=dict(top.action),
        top_applicable=top.applicable,
        verified=d.verified,
        trial_gain=None if top.trial is None else top.trial.relative_gain,
        horizon=stall.horizon,
        unchanged=unchanged,
        remedy=remedy,
        prescribed=prescribed,
        fixed=fixed,
        harmful=harmful,
        summary=d.summary,
    )


def confusion_matrix(runs: list[ValidationRun]) -> list[list[int]]:
    """The confusion matrix of true causes (rows) against diagnosed causes (columns)."""
    index = {c: i for i, c in enumerate(CAUSES)}
    matrix = [[0] * len(CAUSES) for _ in CAUSES]
    for r in runs:
        matrix[index[r.truth]][index[r.predicted]] += 1
    return matrix


def summarize(runs: list[ValidationRun], seeds: tuple[int, ...], seconds: float) -> ValidationStudy:
    """The validation study's result from its runs."""
    healthy = [r for r in runs if r.truth == "progressing"]
    stalled = [r for r in runs if r.fixed is not None]
    return ValidationStudy(
        seeds=seeds,
        tune_seeds=TUNE_SEEDS,
        held_out=not set(seeds) & set(TUNE_SEEDS),
        causes=CAUSES,
        runs=runs,
        confusion=confusion_matrix(runs),
        accuracy=sum(r.correct for r in runs) / len(runs) if runs else math.nan,
        healthy_runs=len(healthy),
        healthy_false_alarms=sum(r.predicted != "progressing" for r in healthy),
        healthy_no_change=sum(not r.top_action for r in healthy),
        stalled_runs=len(stalled),
        fixed=sum(bool(r.fixed) for r in stalled),
        harmful=sum(bool(r.harmful) for r in stalled),
        seconds=seconds,
    )


def run(
    *,
    quick: bool = True,
    progress: Progress | None = None,
    seeds: tuple[int, ...] = HELD_OUT_SEEDS,
    families: list[StallFamily] | None = None,
) -> ValidationStudy:
    """Every family on ``seeds`` (default: the held-out ones)."""
    chosen = families if families is not None else FAMILIES
    total = len(chosen) * len(seeds)
    runs = []
    started = time.perf_counter()
    with (
        one_thread(),
        torch.random.fork_rng(),
    ):  # the cases seed torch; the caller's RNG is left alone
        state = np.random.get_state()
        try:
            for seed in seeds:
                for family in chosen:
                    runs.append(run_case(family, seed))
                    if progress is not None:
                        progress(len(runs), total)
        finally:
            np.random.set_state(state)
    return summarize(runs, tuple(seeds), time.perf_counter() - started)
