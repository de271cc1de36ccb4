"""The batch-size sweep.

The same model, from the same initializations, trained at each batch size, with train/test curves,
wall time, and the sharpness of the end points.

Each run is trained until every *milestone* it was asked for is reached, and the model is
measured at each one, so one run serves three comparisons:

- ``epochs=E``: after E passes over the data (equal samples seen);
- ``updates=U``: after U optimizer steps (equal number of updates);
- ``stop_at_loss=[...]``: when the full training loss first falls to each threshold (matched
  training loss: lambda_max of cross-entropy shrinks with the loss itself, so a run that merely
  trained longer looks flatter).

With ``store=DIR`` each finished run is written to ``DIR/runs/`` at once (atomically: a
temporary file, then a rename), and a rerun of the same sweep loads finished runs instead of
training them again: an interrupted sweep loses at most the run in progress. Under
``torch.distributed`` the runs are dealt out over the ranks (run i to rank i % world), each rank
writes only its own runs to the shared store, and every rank assembles the result from it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import (
    check_bool,
    check_choice,
    check_float,
    check_floats,
    check_int,
    check_ints,
    check_progress,
    describe,
    is_integer,
)
from .._distributed import rank_and_world
from .._files import atomic_write_text, check_output_dir, read_text_inside
from .._results import ResultMixin, fmt, to_jsonable
from ..curvature.operator import loss_reduction, observed_reduction
from ..data import batch_loss, input_tensors, loss_name, take
from ..evaluation import as_tensors, evaluate_largest, rebatch
from ..model_state import preserved_rng, seeded_rng
from ..problem import Problem
from ..progress import Progress, with_progress
from .optimizers import make_optimizer

LR_RULES = ("constant", "linear")
OPTIMIZERS = ("sgd", "adam")
UNITS = 1000  # progress units per run, so a callback sees progress inside a run


@dataclass(frozen=True)
class Milestone(ResultMixin):
    """Where a run was measured: after ``epochs=E``, ``updates=U``, or at ``loss<=T``.

    Attributes:
        label: ``"epochs=E"``, ``"updates=U"`` or ``"loss<=T"``.
        kind: ``"epochs"``, ``"updates"`` or ``"loss"``.
        target: E, U or T.
        reached: whether the run got there (a loss threshold may not be reached).
        step: the update at which it was measured.
        epoch: the epoch (fractional) at which it was measured.
        train_seconds: training time up to there.
        train_loss: the full training loss there.
        train_accuracy: the training accuracy (``None`` where not a classifier).
        test_loss: the test loss (``None`` without test data).
        test_accuracy: the test accuracy.
        lambda_max: the top Hessian eigenvalue, if measured.
        epsilon_sharpness: Keskar's epsilon-sharpness (the first epsilon, full space), if measured.
        sharpness: the whole :class:`lossdoctor.Sharpness` as a dict, if measured.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> problem = tiny_classification()
        >>> sweep = ld.batch_size_sweep(problem, [8, 64], epochs=2, seeds=[0], sharpness=[], lr=0.05)
        >>> m = sweep.run(8, 0).at("epochs=2")
        >>> m.kind, m.step, m.reached
        ('epochs', 16, True)
    """

    label: str
    kind: str  # "epochs", "updates" or "loss"
    target: float
    reached: bool
    step: int
    epoch: float
    train_seconds: float
    train_loss: float
    train_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    lambda_max: float | None = None
    epsilon_sharpness: float | None = None  # Keskar, the first epsilon, full space
    sharpness: dict[str, Any] | None = None  # the whole lossdoctor.Sharpness as a dict


@dataclass(frozen=True)
class SweepRun(ResultMixin):
    """One (batch size, seed) run of a :func:`batch_size_sweep`.

    Attributes:
        batch_size: the batch size.
        seed: the seed of the initialization and the batch order.
        lr: the learning rate used.
        steps: updates trained.
        updates_per_epoch: updates per pass over the data.
        train_seconds: training time.
        curve: lists keyed step, epoch, seconds, train_loss, train_accuracy, test_loss,
            test_accuracy, one entry per evaluation.
        milestones: the run measured at each milestone.
        fingerprint: the settings' hash, which the store checks.
        states: each milestone's ``state_dict`` (with ``keep_states=True``), else ``None``.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> problem = tiny_classification()
        >>> sweep = ld.batch_size_sweep(problem, [8, 64], epochs=2, seeds=[0], sharpness=[], lr=0.05)
        >>> run = sweep.run(8, 0)
        >>> run.key, run.updates_per_epoch, run.steps
        ('b8-s0', 8, 16)
    """

    batch_size: int
    seed: int
    lr: float
    steps: int
    updates_per_epoch: int
    train_seconds: float
    curve: dict[str, list]
    milestones: list[Milestone]
    fingerprint: str
    states: dict[str, dict[str, torch.Tensor]] | None = field(default=None, compare=False)

    _skip_in_dict = ("states",)

    @property
    def key(self) -> str:
        """The run's name, ``"b<batch size>-s<seed>"``."""
        return f"b{self.batch_size}-s{self.seed}"

    def at(self, label: str) -> Milestone | None:
        """The run at the milestone ``label`` (``"epochs=2"``...).

        Args:
            label: a milestone's label.

        Returns:
            The milestone, or ``None`` when the run has none of that label.
        """
        return next((m for m in self.milestones if m.label == label), None)

    def time_to_loss(self, target: float) -> tuple[float, int] | None:
        """When the full training loss first reached ``target``.

        Args:
            target: the loss.

        Returns:
            ``(training seconds, updates)`` at the first evaluation at or below ``target``, or
            ``None`` when it never got there.
        """
        for s, t, loss in zip(self.curve["step"], self.curve["seconds"], self.curve["train_loss"]):
            if loss is not None and loss <= target:
                return t, s
        return None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepRun:
        """Rebuild a run from its :meth:`to_dict` (how the store reads runs back).

        Args:
            d: a run's ``to_dict()``.

        Returns:
            The run (without ``states``).
        """
        return cls(
            **{
                **{k: v for k, v in d.items() if k != "milestones"},
                "milestones": [Milestone(**m) for m in d["milestones"]],
            }
        )


@dataclass(frozen=True)
class SweepResult(ResultMixin):
    """Every run of a batch-size sweep (:func:`batch_size_sweep`), and tables over seeds.

    Attributes:
        problem: the problem's name.
        batch_sizes: the batch sizes.
        seeds: the seeds.
        num_train: training samples.
        settings: the sweep's settings (what the store's fingerprint covers).
        runs: every (batch size, seed) run.
        trained: run keys trained by this call (on this rank).
        loaded: run keys read back from the store.
        store: the store's directory, or ``None``.
        interrupted: Ctrl-C: ``runs`` holds the runs finished; the one in progress is lost.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> problem = tiny_classification()
        >>> sweep = ld.batch_size_sweep(problem, [8, 64], epochs=2, seeds=[0], sharpness=[], lr=0.05)
        >>> sweep.labels, [run.key for run in sweep.runs]
        (['epochs=2'], ['b8-s0', 'b64-s0'])
    """

    problem: str
    batch_sizes: list[int]
    seeds: list[int]
    num_train: int
    settings: dict[str, Any]
    runs: list[SweepRun]
    trained: list[str]  # run keys trained by this call (on this rank)
    loaded: list[str]  # run keys read back from the store
    store: str | None = None
    interrupted: bool = (
        False  # Ctrl-C: ``runs`` holds the runs finished; the one in progress is lost
    )

    @property
    def labels(self) -> list[str]:
        """The milestones' labels, in the order they were asked for."""
        return [m.label for m in self.runs[0].milestones] if self.runs else []

    def run(self, batch_size: int, seed: int) -> SweepRun:
        """The run at ``batch_size`` and ``seed``.

        Args:
            batch_size: one of ``batch_sizes``.
            seed: one of ``seeds``.

        Returns:
            That run.
        """
        return next(r for r in self.runs if r.batch_size == batch_size and r.seed == seed)

    def table(self, label: str) -> list[dict[str, Any]]:
        """Per batch size at one milestone: mean and std over seeds of every measured number.

        Args:
            label: a milestone's label (see :attr:`labels`).

        Returns:
            One dict per batch size: ``batch_size``, ``runs``, ``reached``, and for each of step,
            epoch, train/test loss and accuracy, lambda_max, epsilon_sharpness and train_seconds
            its mean over the runs that reached the milestone and ``<name>_std``.

        Examples:
            >>> import lossdoctor as ld
            >>> from lossdoctor.zoo import tiny_classification
            >>> problem = tiny_classification()
            >>> sweep = ld.batch_size_sweep(problem, [8, 64], epochs=2, seeds=[0], sharpness=[], lr=0.05)
            >>> [(row["batch_size"], row["step"]) for row in sweep.table("epochs=2")]
            [(8, 16.0), (64, 2.0)]
        """
        rows = []
        for b in self.batch_sizes:
            ms = [m for r in self.runs if r.batch_size == b for m in [r.at(label)] if m is not None]
            row: dict[str, Any] = {
                "batch_size": b,
                "runs": len(ms),
                "reached": sum(m.reached for m in ms),
            }
            for name in (
                "step",
                "epoch",
                "train_loss",
                "train_accuracy",
                "test_loss",
                "test_accuracy",
                "lambda_max",
                "epsilon_sharpness",
                "train_seconds",
            ):
                vals = [getattr(m, name) for m in ms if m.reached and getattr(m, name) is not None]
                row[name] = float(np.mean(vals)) if vals else None
                row[name + "_std"] = (
                    float(np.std(vals)) if len(vals) > 1 else (0.0 if vals else None)
                )
            rows.append(row)
        return rows

    def __str__(self) -> str:
        lines = [
            f"Batch-size sweep on {self.problem}: batch sizes {self.batch_sizes}, seeds {self.seeds}, "
            f"{len(self.runs)} runs ({len(self.trained)} trained now, {len(self.loaded)} from the store)"
        ]
        if self.interrupted:
            lines.append(
                f"  INTERRUPTED: {len(self.runs)} of {len(self.batch_sizes) * len(self.seeds)} runs "
                "finished"
                + (f"; rerun with store={self.store!r} to train the rest" if self.store else "")
            )
        for label in self.labels:
            lines.append(f"  at {label}:")
            lines.append(
                f"    {'batch':>6} {'updates':>8} {'train loss':>11} {'train acc':>10} {'test acc':>9} "
                f"{'lambda_max':>11} {'eps-sharp':>10}"
            )
            for row in self.table(label):

                def cell(name: str, pct: bool = False, row: dict = row) -> str:
                    v = row[name]
                    return "-" if v is None else (f"{100 * v:.1f}%" if pct else fmt(v, 3))

                lines.append(
                    f"    {row['batch_size']:>6} {cell('step'):>8} {cell('train_loss'):>11} "
                    f"{cell('train_accuracy', True):>10} {cell('test_accuracy', True):>9} "
                    f"{cell('lambda_max'):>11} {cell('epsilon_sharpness'):>10}"
                    + (
                        ""
                        if row["reached"] == row["runs"]
                        else f"  ({row['reached']}/{row['runs']} reached)"
                    )
                )
        return "\n".join(lines)


# -- the store ---------------------------------------------------------------------------------
def _open_store(store: Path, settings: dict[str, Any], fingerprint: str) -> None:
    (store / "runs").mkdir(parents=True, exist_ok=True)
    meta = store / "sweep.json"
    if meta.is_file():
        try:
            saved = json.loads(read_text_inside(store, "sweep.json") or "")
        except json.JSONDecodeError:
            saved = None
        if not isinstance(saved, dict):
            raise ValueError(
                f"store {store}: sweep.json is damaged or not lossdoctor's; remove it (the runs in "
                f"{store / 'runs'} are kept and reused when the settings match) or use another --store."
            )
        if saved.get("fingerprint") != fingerprint:
            diff = sorted(
                k
                for k in set(saved.get("settings", {})) | set(settings)
                if saved.get("settings", {}).get(k) != settings.get(k)
            )
            raise ValueError(
                f"store {store} holds a sweep with other settings (differs in {diff}); its runs "
                "cannot be reused. Use another --store directory, or remove this one."
            )
    else:
        # First writer wins (several ranks), and nobody ever sees a half-written file: the complete
        # file is linked into place, which fails if another rank's is already there.
        handle, name = tempfile.mkstemp(prefix=".sweep.json.", suffix=".tmp", dir=store)
        os.close(handle)
        tmp = Path(name)
        tmp.write_text(
            json.dumps({"fingerprint": fingerprint, "settings": settings}, indent=1),
            encoding="utf-8",
        )
        try:
            os.link(tmp, meta)
        except FileExistsError:
            _open_store(store, settings, fingerprint)
        finally:
            tmp.unlink()


def _load_run(path: Path, fingerprint: str) -> SweepRun | None:
    """A finished run from the store.

    ``None`` when it is missing, damaged (it is trained again) or from other settings."""
    text = read_text_inside(path.parent, path.name)
    if text is None:
        return None
    try:
        run = SweepRun.from_dict(json.loads(text))
    except (ValueError, TypeError, KeyError):
        return None
    return run if run.fingerprint == fingerprint else None


# -- one run -----------------------------------------------------------------------------------
def initialize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """A copy of ``model`` re-initialized from ``seed`` (every submodule's ``reset_parameters``).

    The same seed gives the same initial weights at every batch size. The draws are made on the
    CPU (CUDA's generator gives other numbers for the same seed), then the copy moves back to
    the model's device: the same initialization on any hardware. The global RNG is left as it was.

    Args:
        model: any ``nn.Module`` (not changed).
        seed: the seed of the initialization.

    Returns:
        The re-initialized copy.

    Examples:
        >>> import torch
        >>> from lossdoctor.training.sweep import initialize
        >>> model = torch.nn.Linear(4, 2)
        >>> torch.equal(initialize(model, 0).weight, initialize(model, 0).weight)
        True
    """
    device = next(iter(model.parameters()), torch.empty(0)).device
    with preserved_rng():
        work = copy.deepcopy(model).to("cpu")
        torch.manual_seed(seed)
        for m in work.modules():
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return work.to(device)


def _milestone_plan(
    cfg: dict[str, Any], upe: int
) -> tuple[list[tuple[str, str, float]], set[int], int]:
    """The milestones ``(label, kind, target)``, the steps of the epoch and update targets, the last step.

    ``upe``: updates per epoch."""
    pending: list[tuple[str, str, float]] = []
    if cfg["epochs"]:
        pending.append((f"epochs={cfg['epochs']}", "epochs", cfg["epochs"]))
    if cfg["updates"]:
        pending.append((f"updates={cfg['updates']}", "updates", cfg["updates"]))
    for t in cfg["stop_at_loss"]:
        pending.append((f"loss<={t:g}", "loss", t))
    step_targets = {int(t * upe) if k == "epochs" else int(t) for _, k, t in pending if k != "loss"}
    max_steps = max(list(step_targets) + ([cfg["max_epochs"] * upe] if cfg["stop_at_loss"] else []))
    return pending, step_targets, max_steps


def _timed_step(
    model: nn.Module,
    loss_fn: Callable,
    opt: torch.optim.Optimizer,
    xb: Any,
    yb: torch.Tensor,
    step: int,
    device: torch.device,
) -> float:
    """One update on one batch; returns its seconds (synchronized on CUDA)."""
    t0 = time.perf_counter()
    opt.zero_grad(set_to_none=True)
    loss = batch_loss(model, loss_fn, xb, yb, step)
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def _train_run(
    problem: Problem,
    train: tuple,
    test: tuple | None,
    b: int,
    seed: int,
    cfg: dict[str, Any],
    fingerprint: str,
    keep_states: bool,
    progress,
) -> SweepRun:
    """One run of batch size ``b`` from the initial weights of ``seed`` (the caller seeds the RNG)."""
    from ..analysis.sharpness import sharpness

    x, y = train
    n = len(y)
    upe = math.ceil(n / b)
    lr = cfg["lr"] * (b / cfg["base_batch"] if cfg["lr_rule"] == "linear" else 1.0)
    pending, step_targets, max_steps = _milestone_plan(cfg, upe)
    all_milestones = list(pending)
    check = max(1, min(upe, cfg["check_every"]))
    model = initialize(problem.model, seed)
    device = next(model.parameters()).device
    opt = make_optimizer(
        cfg["optimizer"], [p for p in model.parameters() if p.requires_grad], lr, cfg["momentum"]
    )
    gen = torch.Generator().manual_seed(10_000 + seed)  # data order: the same for every batch size
    curve: dict[str, list] = {
        k: []
        for k in (
            "step",
            "epoch",
            "seconds",
            "train_loss",
            "train_accuracy",
            "test_loss",
            "test_accuracy",
        )
    }
    milestones: list[Milestone] = []
    states: dict[str, dict[str, torch.Tensor]] = {}
    seconds, step = 0.0, 0
    sharp_data = rebatch(x, y, cfg["sharpness_batch"])

    def measure(label: str, kind: str, target: float, reached: bool, point: dict[str, Any]) -> None:
        lam = eps = sd = None
        if reached and cfg["sharpness"]:
            s = sharpness(
                model,
                problem.loss_fn,
                sharp_data,
                method=cfg["sharpness"],
                epsilons=cfg["epsilons"],
                subspace_dim=None,
                max_iter=cfg["epsilon_iters"],
                tol=cfg["tol"],
                seed=seed,
                distributed=False,
            )
            lam, sd = s.lambda_max, s.to_dict()
            eps = s.epsilon[0].value if s.epsilon else None
        milestones.append(
            Milestone(
                label=label,
                kind=kind,
                target=target,
                reached=reached,
                lambda_max=lam,
                epsilon_sharpness=eps,
                sharpness=sd,
                **point,
            )
        )
        if reached and keep_states:
            states[label] = {k: v.detach().clone() for k, v in model.state_dict().items()}

    def evaluate_now() -> dict[str, Any]:
        tl, ta = evaluate_largest(model, problem.loss_fn, train)
        vl, va = (
            evaluate_largest(model, problem.loss_fn, test) if test is not None else (None, None)
        )
        point = {
            "step": step,
            "epoch": step / upe,
            "train_seconds": seconds,
            "train_loss": tl,
            "train_accuracy": ta,
            "test_loss": vl,
            "test_accuracy": va,
        }
        for k, v in (
            ("step", step),
            ("epoch", step / upe),
            ("seconds", seconds),
            ("train_loss", tl),
            ("train_accuracy", ta),
            ("test_loss", vl),
            ("test_accuracy", va),
        ):
            curve[k].append(v)
        return point

    def resolve(point: dict[str, Any], final: bool) -> None:
        for item in list(pending):
            label, kind, target = item
            due = (
                (kind == "epochs" and step >= int(target * upe))
                or (kind == "updates" and step >= target)
                or (
                    kind == "loss"
                    and math.isfinite(point["train_loss"])
                    and point["train_loss"] <= target
                )
            )
            if due or final:
                measure(label, kind, target, due, point)
                pending.remove(item)

    resolve(evaluate_now(), final=False)
    diverged = False
    while pending and step < max_steps and not diverged:
        model.train()
        order = torch.randperm(n, generator=gen)
        for start in range(0, n, b):
            idx = order[start : start + b]
            xb, yb = take(x, y, idx, device)
            seconds += _timed_step(model, problem.loss_fn, opt, xb, yb, step, device)
            step += 1
            if step % check == 0 or step in step_targets or step >= max_steps or start + b >= n:
                point = evaluate_now()
                model.train()
                diverged = not math.isfinite(point["train_loss"])
                resolve(point, final=diverged or step >= max_steps)
                if progress:
                    progress(min(UNITS - 1, int(UNITS * step / max_steps)))
            if not pending or step >= max_steps or diverged:
                break
    if pending:  # e.g. an empty budget
        resolve(evaluate_now(), final=True)
    labels = [label for label, _, _ in all_milestones]
    milestones.sort(key=lambda m: labels.index(m.label))
    return SweepRun(
        batch_size=b,
        seed=seed,
        lr=lr,
        steps=step,
        updates_per_epoch=upe,
        train_seconds=seconds,
        curve=to_jsonable(curve),
        milestones=milestones,
        fingerprint=fingerprint,
        states=states if keep_states else None,
    )


def _check_milestones(
    epochs: float | None, updates: int | None, stop_at_loss: float | Sequence[float]
) -> tuple[float | None, int | None, list[float]]:
    """The checked milestones of :func:`batch_size_sweep`; at least one is required."""
    # an integer number of epochs stays an int: its label ("epochs=3") and the store's fingerprint
    if epochs is not None and is_integer(epochs) and epochs > 0:
        epochs = int(epochs)
    else:
        epochs = check_float(epochs, "epochs", above=0.0, optional=True)
    updates = check_int(updates, "updates", minimum=1, optional=True)
    thresholds = (
        [check_float(stop_at_loss, "stop_at_loss", above=0.0)]
        if not isinstance(stop_at_loss, (list, tuple, np.ndarray, torch.Tensor, range))
        else check_floats(stop_at_loss, "stop_at_loss", above=0.0, nonempty=False)
    )
    if epochs is None and updates is None and not thresholds:
        raise ValueError(
            "give epochs=, updates= or stop_at_loss= (or several): when to stop and measure."
        )
    return epochs, updates, thresholds


def _check_methods(sharpness: str | Sequence[str]) -> list[str]:
    """The checked sharpness methods of :func:`batch_size_sweep`, as a list."""
    methods = [sharpness] if isinstance(sharpness, str) else sharpness
    if isinstance(methods, (bytes, dict)) or not isinstance(methods, (list, tuple)):
        raise TypeError(
            f"sharpness must be a list of methods ('lambda_max', 'trace', 'epsilon') or one of them, "
            f"got {describe(sharpness)}."
        )
    return [
        check_choice(m, f"sharpness[{i}]", ("lambda_max", "trace", "epsilon"))
        for i, m in enumerate(methods)
    ]


def _gather_runs(
    runs: dict[tuple[int, int], SweepRun],
    grid: list[tuple[int, int]],
    root: Path,
    fingerprint: str,
) -> list[str]:
    """Read the other ranks' runs from the store into ``runs`` (torch.distributed); their keys."""
    import torch.distributed as dist

    dist.barrier()
    keys = []
    for b, s in grid:
        if (b, s) not in runs:
            found = _load_run(root / "runs" / f"b{b}-s{s}.json", fingerprint)
            if found is None:
                raise RuntimeError(
                    f"run b{b}-s{s} is missing from store {root} after every rank finished."
                )
            runs[(b, s)] = found
            keys.append(found.key)
    return keys


# -- the sweep ---------------------------------------------------------------------------------
def _check_batch_mean(problem: Problem, train: tuple[Any, torch.Tensor]) -> None:
    """Refuse, before any training, a loss that sums its batch.

    The lr rules compare batch sizes at an lr stated for a batch mean (a sum would grow every step
    with the batch size), and the sharpness of the end points is that of the mean."""
    device = next((p.device for p in problem.model.parameters()), torch.device("cpu"))
    first = take(train[0], train[1], torch.arange(min(len(train[1]), 64)), device)
    if loss_reduction(problem.loss_fn) == "sum" or (
        observed_reduction(problem.model, problem.loss_fn, first) == "sum"
    ):
        name = loss_name(problem.loss_fn)
        raise ValueError(
            f"problem.loss_fn ({name}) returns the sum of its samples' losses: batch_size_sweep "
            "compares batch sizes at an lr stated for the batch mean (with a sum every step would "
            "grow with the batch size), and measures the sharpness of that mean. Make loss_fn "
            "return the batch mean (reduction='mean')."
        )


@with_progress("batch-size sweep")
def batch_size_sweep(
    problem: Problem,
    batch_sizes: Sequence[int],
    *,
    epochs: float | None = None,
    updates: int | None = None,
    stop_at_loss: float | Sequence[float] = (),
    max_epochs: int = 200,
    lr: float = 1e-3,
    lr_rule: str = "constant",
    base_batch: int = 32,
    optimizer: str = "adam",
    momentum: float = 0.9,
    seeds: Sequence[int] = (0, 1, 2),
    store: str | Path | None = None,
    sharpness: Sequence[str] = ("lambda_max", "epsilon"),
    epsilons: Sequence[float] = (1e-3,),
    epsilon_iters: int = 10,
    tol: float = 1e-3,
    check_every: int = 50,
    sharpness_batch: int = 4096,
    keep_states: bool = False,
    progress: Progress | bool | str | None = "auto",
) -> SweepResult:
    """Train ``problem.model`` from the same initialization per seed at every batch size.

    The lecture's batch-size comparison: the same model trained at several batch sizes, measured
    at equal epochs, equal updates or equal training loss, with its sharpness at each.

    Args:
        problem: a :class:`lossdoctor.Problem` (its train data's samples are re-batched; its
            test data, if any, is evaluated too). The problem's model is not changed: every run
            trains a copy, re-initialized from its seed.
        batch_sizes: the batch sizes; every (batch size, seed) pair is one run.
        seeds: the seeds.
        epochs: a milestone after this many passes over the data.
        updates: a milestone after this many optimizer steps.
        stop_at_loss: milestones when the full training loss first reaches each threshold
            (checked every ``check_every`` updates and at each epoch's end; at most
            ``max_epochs``). At least one milestone is needed; each run trains until all are
            reached and is measured at each.
        max_epochs: the most epochs a run trains waiting for a loss threshold.
        lr: the learning rate.
        lr_rule: ``"constant"`` uses ``lr`` at every batch size; ``"linear"`` uses
            ``lr * batch / base_batch`` (Goyal et al.).
        base_batch: the batch size ``lr`` is meant for, with ``lr_rule="linear"``.
        optimizer: ``"adam"`` (Keskar et al.) or ``"sgd"`` (with ``momentum``).
        momentum: SGD's momentum.
        store: directory for resumable results (see the module docstring).
        sharpness: what to measure at each milestone (``"lambda_max"``, ``"epsilon"``,
            ``"trace"``; empty for none), with ``epsilons`` (first one is the headline) in the
            full space, ``epsilon_iters`` L-BFGS-B iterations and ``tol`` for lambda_max.
        epsilons: the epsilon-sharpness box sizes.
        epsilon_iters: L-BFGS-B iterations of epsilon-sharpness.
        tol: the relative accuracy of lambda_max.
        check_every: updates between checks of the loss thresholds.
        sharpness_batch: samples per batch of the sharpness measurements.
        keep_states: keep each milestone's ``state_dict`` in memory (``run.states``); not stored.
        progress: ``progress(done, total)`` with ``total = 1000 * number of runs``.

    Returns:
        Every run with its curves and milestones. Ctrl-C returns the runs finished (with a
        store, rerun to train the rest).

    Raises:
        TypeError: ``problem`` is not a :class:`lossdoctor.Problem`.
        ValueError: no milestone, a bad option, a store written by other settings, or a loss that
            sums its batch instead of averaging it.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tiny_classification
        >>> problem = tiny_classification()
        >>> sweep = ld.batch_size_sweep(problem, [8, 64], epochs=2, seeds=[0], sharpness=[], lr=0.05)
        >>> [(row["batch_size"], row["step"], round(row["train_loss"], 3)) for row in sweep.table("epochs=2")]
        [(8, 16.0, 0.384), (64, 2.0, 0.734)]
    """
    if not isinstance(problem, Problem):
        raise TypeError(
            f"problem must be a lossdoctor.Problem, got {describe(problem)}. Build one with "
            "lossdoctor.Problem(model, loss_fn, train_data, test_data) or "
            "lossdoctor.load_problem('mnist1d-mlp')."
        )
    sizes = check_ints(batch_sizes, "batch_sizes", minimum=1, distinct=True)
    seeds = check_ints(seeds, "seeds", minimum=0, maximum=2**63 - 20_001, distinct=True)
    epochs, updates, thresholds = _check_milestones(epochs, updates, stop_at_loss)
    max_epochs = check_int(max_epochs, "max_epochs", minimum=1)
    lr = check_float(lr, "lr", above=0.0)
    check_choice(lr_rule, "lr_rule", LR_RULES)
    base_batch = check_int(base_batch, "base_batch", minimum=1)
    check_choice(optimizer, "optimizer", OPTIMIZERS)
    momentum = check_float(momentum, "momentum", minimum=0.0, below=1.0)
    methods = _check_methods(sharpness)
    epsilons = check_floats(epsilons, "epsilons", above=0.0)
    epsilon_iters = check_int(epsilon_iters, "epsilon_iters", minimum=1)
    tol = check_float(tol, "tol", above=0.0)
    check_every = check_int(check_every, "check_every", minimum=1)
    sharpness_batch = check_int(sharpness_batch, "sharpness_batch", minimum=1)
    check_bool(keep_states, "keep_states")
    check_progress(progress)
    root = check_output_dir(store, "store") if store is not None else None
    train = as_tensors(problem.train_data, "problem.train_data")
    test = (
        as_tensors(problem.test_data, "problem.test_data")
        if problem.test_data is not None
        else None
    )
    num_train = len(train[1])
    _check_batch_mean(problem, train)
    cfg = {
        "problem": problem.name,
        "num_train": num_train,
        "num_test": len(test[1]) if test else 0,
        "num_params": sum(p.numel() for p in problem.model.parameters() if p.requires_grad),
        "data_sum": float(sum(t.double().sum() for t in input_tensors(train[0]))),
        "epochs": epochs,
        "updates": updates,
        "stop_at_loss": thresholds,
        "max_epochs": int(max_epochs),
        "lr": float(lr),
        "lr_rule": lr_rule,
        "base_batch": int(base_batch),
        "optimizer": optimizer,
        "momentum": float(momentum),
        "sharpness": methods,
        "epsilons": epsilons,
        "epsilon_iters": epsilon_iters,
        "tol": tol,
        "check_every": check_every,
        "sharpness_batch": sharpness_batch,
    }
    fingerprint = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()[:16]
    rank, world = rank_and_world()
    if world > 1 and store is None:
        raise ValueError(
            "a sweep under torch.distributed needs store= a directory every rank can read and "
            "write: the ranks share their runs through it."
        )
    if root is not None:
        _open_store(root, cfg, fingerprint)
    grid = [(b, s) for b in sizes for s in seeds]
    device = next(iter(problem.model.parameters()), torch.empty(0)).device
    runs: dict[tuple[int, int], SweepRun] = {}
    trained, loaded = [], []
    total = UNITS * len(grid)
    interrupted = False
    # The caller's RNG kept once more around the whole sweep: a Ctrl-C landing between a
    # run's seeded block and its own restore (one bytecode wide) cannot leave the run's seed behind.
    with preserved_rng():
        try:
            with _interrupt.propagating():
                for i, (b, s) in enumerate(grid):
                    path = root / "runs" / f"b{b}-s{s}.json" if root is not None else None
                    found = _load_run(path, fingerprint) if path is not None else None
                    if found is not None:
                        runs[(b, s)] = found
                        loaded.append(found.key)
                    elif i % world == rank:

                        def sub(units: int, i: int = i) -> None:
                            if callable(progress):
                                progress(i * UNITS + units, total)

                        # The global RNG (dropout, random layers) seeded from the run's seed and put
                        # back afterwards: the run depends on its seed alone, the caller's RNG stays.
                        with seeded_rng(20_000 + s, device):
                            run = _train_run(
                                problem, train, test, b, s, cfg, fingerprint, keep_states, sub
                            )
                        if path is not None:
                            atomic_write_text(path.parent, path.name, json.dumps(run.to_dict()))
                        runs[(b, s)] = run
                        trained.append(run.key)
                    if callable(progress):
                        progress((i + 1) * UNITS, total)
        except KeyboardInterrupt:
            interrupted = _interrupt.keep_partial(finished=world == 1 and bool(runs))
    if world > 1:
        assert root is not None  # a sweep under torch.distributed has a store (checked above)
        loaded += _gather_runs(runs, grid, root, fingerprint)
    return SweepResult(
        problem=problem.name,
        batch_sizes=sizes,
        seeds=seeds,
        num_train=num_train,
        settings=cfg,
        runs=[runs[k] for k in grid if k in runs],
        trained=trained,
        loaded=loaded,
        store=str(root) if root is not None else None,
        interrupted=interrupted,
    )
