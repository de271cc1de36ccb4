"""Trials: each applicable prescription tried on the user's own model, against continuing unchanged.

From an exact snapshot (parameters, buffers, gradients, modes, the optimizer's state and groups,
every RNG), each branch applies one action and trains ``steps`` steps on the same batches in the
same order (the next batches of the training data, drawn once); a control branch continues
unchanged. Each branch's loss on the evaluation data (the mean over its last checkpoints) is
compared with the control's; then everything is put back bit for bit.

Cost: with ``k`` candidates and ``budget`` times the trial length in training steps, all branches
run the whole trial when ``(k + 1) * steps <= budget * steps``; otherwise every candidate first
runs a third of it and only the best go on (successive halving). The steps actually trained are
reported.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin
from ..data import forward, iter_batches, place
from ..model_state import preserved_model, preserved_rng, trainable_parameters
from ..training.lr_finder import preserved_optimizer
from .candidates import Candidate
from .measure import batches_loss
from .prescriptions import Trial, apply_action, detach_hooks

TrainStep = Callable[[nn.Module, torch.optim.Optimizer, Any], Any]
CHECKPOINTS = 5  # evaluations over the trial's second half
CONSISTENT = 0.8  # a better candidate is lower than the control at this share of the checkpoints
MARGIN = 0.005  # a candidate must beat the control by this fraction of its loss, and by the
# fluctuation of its paired differences from the control


@dataclass(frozen=True)
class TrialReport(ResultMixin):
    """What the trials cost and what the control did.

    ``steps`` per full trial, ``trained`` the training steps run over all branches,
    ``control_curve`` the control's per-step losses."""

    steps: int
    candidates: int
    trained: int
    seconds: float
    control_loss: float
    loss_before: float
    control_curve: tuple[float, ...]
    margin: float
    interrupted: bool = False


@contextlib.contextmanager
def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> Iterator[None]:
    """Everything a trial can touch, put back exactly on exit.

    The model (parameters, buffers, gradients, ``requires_grad``, modes), the optimizer (state,
    groups, attached hooks) and the torch, numpy and Python RNGs."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with contextlib.ExitStack() as stack:
        stack.enter_context(preserved_model(model))
        if optimizer is not None:
            stack.enter_context(preserved_optimizer(optimizer))
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def next_batches(data: Any, count: int) -> list[tuple[Any, torch.Tensor]]:
    """The first ``count`` training batches of ``data``, cycling when it has fewer.

    Drawn inside a saved-and-restored RNG so a shuffling DataLoader leaves the global RNG as it was."""
    out: list[tuple[Any, torch.Tensor]] = []
    with preserved_rng():
        while len(out) < count:
            before = len(out)
            for batch in iter_batches(data):
                out.append(batch)
                if len(out) >= count:
                    break
            if len(out) == before:
                raise ValueError("data yielded no batches to train the trials on.")
    return out


def trial_optimizer(
    model: nn.Module, optimizer: torch.optim.Optimizer | None, lr: float | None
) -> torch.optim.Optimizer | None:
    """What the trials train with.

    The user's optimizer, else plain SGD at ``lr`` over the trainable parameters, else None (nothing
    to try with)."""
    if optimizer is not None:
        return optimizer
    return (
        None if lr is None else torch.optim.SGD([p for _, p in trainable_parameters(model)], lr=lr)
    )


def default_train_step(loss_fn: Callable) -> TrainStep:
    """``loss_fn(model(x), y).backward(); optimizer.step()``: the standard step."""
    taken = [0]

    def step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: Any) -> torch.Tensor:
        x, y = batch
        device = next(model.parameters()).device
        x, y = place(x, y, device)
        optimizer.zero_grad(set_to_none=True)
        # data.forward turns a failing model or loss into an error that names the batch and the fix.
        loss = forward(model, loss_fn, x, y, index=taken[0])[1]
        taken[0] += 1
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


class _Branch:
    """One branch of the trial: an action applied from the snapshot, trained step by step."""

    def __init__(
        self, candidate: Candidate | None, model: nn.Module, optimizer: torch.optim.Optimizer
    ):
        self.candidate = candidate
        self.optimizer = optimizer
        if candidate is not None:
            changed = apply_action(candidate.action, model, optimizer, payload=candidate.payload)
            # Given an optimizer, apply_action returns it or the one it switched to, never None.
            if changed is None:
                raise RuntimeError(
                    f"action {candidate.action} left the trial without an optimizer."
                )
            self.optimizer = changed
        self.curve: list[float] = []
        self.evals: list[float] = []
        self.finite = True


def _run_branch(
    branch: _Branch,
    model: nn.Module,
    step_fn: TrainStep,
    batches: list,
    start: int,
    stop: int,
    evaluate_at: set[int],
    eval_fn: Callable[[], float],
) -> None:
    for k in range(start, stop):
        if not branch.finite:
            return
        loss = step_fn(model, branch.optimizer, batches[k])
        value = (
            math.nan
            if loss is None
            else float(loss.detach() if isinstance(loss, torch.Tensor) else loss)
        )
        branch.curve.append(value)
        if not math.isfinite(value) or not all(
            bool(torch.isfinite(p).all()) for p in model.parameters()
        ):
            branch.finite = False
            return
        if k + 1 in evaluate_at:
            branch.evals.append(eval_fn())


def run_trials(
    model: nn.Module,
    loss_fn: Callable,
    data: Any,
    optimizer: torch.optim.Optimizer,
    candidates: list[Candidate],
    *,
    steps: int,
    eval_batches: list,
    mode: str,
    train_step: TrainStep | None = None,
    budget: float = 5.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[Trial | None], TrialReport]:
    """Try every applicable candidate for ``steps`` steps against continuing unchanged.

    Returns one :class:`Trial` per candidate (None for those not applicable or cut in the first
    round of successive halving) and the :class:`TrialReport`. The model, the optimizer and every
    RNG are exactly as they were afterwards, also after an error or Ctrl-C.
    """
    started = time.perf_counter()
    step_fn = train_step or default_train_step(loss_fn)
    tryable = [i for i, c in enumerate(candidates) if c.applicable]
    batches = next_batches(data, steps)
    spacing = max(1, steps // (2 * CHECKPOINTS))
    checkpoints = {steps - j * spacing for j in range(CHECKPOINTS) if steps - j * spacing > 0}
    first_round = max(1, steps // 3)
    full = (len(tryable) + 1) * steps <= budget * steps
    total = steps * (len(tryable) + 1) if full else int(budget * steps)
    done = [0]
    trials: list[Trial | None] = [None] * len(candidates)
    interrupted = False

    def eval_fn() -> float:
        return batches_loss(model, loss_fn, eval_batches, mode)

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(min(done[0], total), total)

    loss_before = batches_loss(model, loss_fn, eval_batches, mode)
    control = _Branch(None, model, optimizer)
    branches: dict[int, _Branch] = {}

    def trial_of(i: int, stop: int) -> _Branch:
        with snapshot(model, optimizer):
            model.train(mode == "train")
            branch = _Branch(candidates[i], model, optimizer)
            try:
                _run_branch(
                    branch,
                    model,
                    step_fn,
                    batches,
                    0,
                    stop,
                    checkpoints if stop == steps else set(),
                    eval_fn,
                )
            finally:
                detach_hooks(branch.optimizer)
        tick(stop)
        return branch

    try:
        with snapshot(model, optimizer):
            model.train(mode == "train")
            _run_branch(control, model, step_fn, batches, 0, steps, checkpoints, eval_fn)
        tick(steps)
        if full:
            for i in tryable:
                branches[i] = trial_of(i, steps)
        else:
            # Successive halving: every candidate runs a third of the trial; the best (lowest
            # training loss over that third's last steps) run the whole trial from the snapshot.
            first = {i: trial_of(i, first_round) for i in tryable}
            room = int(max(0.0, budget * steps - steps - len(tryable) * first_round) // steps)

            def early(i: int) -> float:
                b = first[i]
                return (
                    float(np.mean(b.curve[-max(1, first_round // 3) :]))
                    if b.finite and b.curve
                    else math.inf
                )

            for i in sorted(tryable, key=early)[: max(room, 1)]:
                branches[i] = trial_of(i, steps)
    except KeyboardInterrupt:
        interrupted = True
    # A control that went NaN/Inf (or never reached a checkpoint) ends at an infinite loss.
    control_loss = float(np.mean(control.evals)) if control.evals and control.finite else math.inf
    spread = float(np.std(control.evals)) if len(control.evals) > 1 else 0.0
    floor = MARGIN * abs(control_loss) if math.isfinite(control_loss) else 0.0

    def margin_of(evals: list[float]) -> float:
        # The fluctuation of the paired differences (same batches, same checkpoints) sets the
        # margin: what both branches share (a spike of the control's bouncing iterate that the
        # candidate also sees) cancels there. Without pairs, twice the control's own spread. A
        # trend (a diverging control) must not set it: half the control's loss is always a gain.
        if not math.isfinite(control_loss):
            return 0.0
        pairs = [c - b for b, c in zip(evals, control.evals)]
        noise = (
            float(np.std(pairs))
            if len(pairs) > 1 and all(map(math.isfinite, pairs))
            else 2 * spread
        )
        return min(max(floor, noise), 0.5 * abs(control_loss))

    for i, branch in branches.items():
        if len(branch.curve) < steps and branch.finite:
            continue  # cut in the first round, or interrupted: not a full trial
        loss = float(np.mean(branch.evals)) if branch.finite and branch.evals else math.inf
        finite = branch.finite and math.isfinite(loss)
        reference = control_loss if math.isfinite(control_loss) else math.inf
        gain = reference - loss if finite else -math.inf
        rel = (
            gain / abs(reference)
            if finite and math.isfinite(reference) and reference != 0
            else (math.inf if finite else -math.inf)
        )
        # Paired over the checkpoints (the same batches): lower at most of them, not one lucky point
        # against a spiking control.
        paired = [b < c for b, c in zip(branch.evals, control.evals)] if control.finite else []
        consistent = not paired or sum(paired) >= CONSISTENT * len(paired)
        margin = margin_of(branch.evals)
        better = finite and (not math.isfinite(reference) or (gain > margin and consistent))
        trials[i] = Trial(
            steps=steps,
            loss_before=loss_before,
            loss=loss,
            control_loss=control_loss,
            gain=gain,
            relative_gain=rel,
            better=better,
            finite=finite,
            curve=tuple(branch.curve),
            control_curve=tuple(control.curve),
        )
    report = TrialReport(
        steps=steps,
        candidates=len(tryable),
        trained=done[0],
        seconds=time.perf_counter() - started,
        control_loss=control_loss,
        loss_before=loss_before,
        control_curve=tuple(control.curve),
        margin=floor,
        interrupted=interrupted,
    )
    return trials, report
