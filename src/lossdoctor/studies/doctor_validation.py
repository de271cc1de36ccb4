"""Study: does the stall doctor get it right on runs it was not tuned on?

Real training runs whose cause is known by construction, over several seeds and architectures:

* ``oscillation``: gradient descent with lr just below 2/λ_max on least squares (lr·λ_max in
  [1.996, 1.999], started along the sharpest direction: it bounces across the valley), and
  logistic regression on MNIST-1D run at lr 1.2·2/λ_max from its optimum (where the softmax saturates away from the optimum, the sharpness
  drops and the iterates bounce on a stable period-2 orbit instead of diverging);
* ``critical_point``: started at a saddle (the lecture's w1·w2 toy a hair from the origin; tanh
  MLPs and deep linear nets with every weight zero, whose gradient stays exactly zero), or
  converged (least squares and small MLPs driven to a zero gradient by L-BFGS, then a few more
  gradient steps);
* ``flat_plateau``: sigmoid / softmax outputs trained with MSE from a saturated start;
* ``progressing``: the first steps of ordinary training (MLPs, a small CNN, least squares);
* ``diverging``: gradient descent with lr well above 2/λ_max (least squares, MLPs with MSE).

Thresholds were tuned on seeds ``TUNE_SEEDS`` only; the confusion matrix reported is on seeds
``VALIDATION_SEEDS``, which the tuning never saw. Each run's history is the last 60 training
steps (the doctor's default window); the doctor gets the model, the training data, the history
and the optimizer, nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._results import ResultMixin
from ..analysis.stall import CAUSES, Diagnosis, diagnose, sharpness
from ..curvature import hessian
from ..progress import Progress
from ..training.stationary import minimize_full_batch
from ..zoo.lecture import ProductNet
from ..zoo.mnist1d import mnist1d_arrays
from ._threads import one_thread
from .flat_surface import blobs, softmax_mse

# Seeds 0-1 tuned the thresholds. Seeds 2-4 were a first validation (43/45); its two misses led to
# one more rule (OSC_MAX_DROP) and to oscillation runs whose bounce really dominates. Seeds 5-7
# were a second validation (41/45: softmax-MSE plateaus at larger init scales called saddles, and
# one logistic run still recovering from its catapult); they led to the saddle-gain rule
# (SADDLE_GAIN), 400 instead of 200 steps for the logistic runs, and softmax-MSE init scales
# 5 + seed % 3 (they grew with the seed number, a construction bug). All of those count as tuning
# seeds now. Seeds 8-10 were a third validation (43/45): both misses were logistic runs on 256
# samples, which are linearly separable, so the "optimum" is at infinity and at 1.2·2/λ_max the
# weights could run off (||θ|| = 2.5e8): a broken ground truth. The logistic runs now use 1,024
# samples (a finite optimum) and the data are drawn from the 4,000-sample set; the reported
# validation is on seeds 11-13, unseen by any change.
TUNE_SEEDS = tuple(range(11))
VALIDATION_SEEDS = (11, 12, 13)
HISTORY = 60
EARLIER_ROUNDS = ("seeds 2-4: 43/45 (then the OSC_MAX_DROP rule, bounce-dominated least-squares runs); "
                  "seeds 5-7: 41/45 (then the saddle-gain rule, longer logistic runs, bounded softmax-MSE "
                  "init scales); seeds 8-10: 43/45 (then non-separable logistic-regression data); each round's "
                  "seeds joined the tuning set")
SUBSET = 256


@dataclass(frozen=True)
class Setup:
    """What one run hands the doctor."""

    model: nn.Module
    loss_fn: Callable
    data: Any
    losses: list[float]
    optimizer: torch.optim.Optimizer


@dataclass(frozen=True)
class ValidationRun(ResultMixin):
    scenario: str
    architecture: str
    seed: int
    truth: str
    predicted: str
    correct: bool
    seconds: float
    lr: float | None
    lr_sharpness: float | None
    relative_drop: float
    efficiency: float | None
    grad_cosine: float | None
    grad_norm: float | None
    summary: str


@dataclass(frozen=True)
class ValidationStudy(ResultMixin):
    seeds: tuple[int, ...]
    tune_seeds: tuple[int, ...]
    causes: tuple[str, ...]
    runs: list[ValidationRun]
    confusion: list[list[int]]  # rows: true cause, columns: predicted cause (order of ``causes``)
    accuracy: float
    stalled_called_progressing: int
    tune_runs: list[ValidationRun]
    tune_accuracy: float | None

    def __str__(self) -> str:
        lines = [f"Doctor validation: {len(self.runs)} runs on seeds {list(self.seeds)} (tuned on "
                 f"{list(self.tune_seeds)}): {self.accuracy:.1%} correct, stalled runs called progressing: "
                 f"{self.stalled_called_progressing}", "true \\ predicted: " + " ".join(c[:8] for c in self.causes)]
        for cause, row in zip(self.causes, self.confusion):
            lines.append(f"  {cause:15s} " + " ".join(f"{n:8d}" for n in row))
        for r in self.runs:
            if not r.correct:
                lines.append(f"  miss: {r.scenario} / {r.architecture} / seed {r.seed}: {r.predicted} ({r.summary})")
        return "\n".join(lines)


# -- the pieces of each run --------------------------------------------------------------------
def _mnist(seed: int, n: int = SUBSET) -> tuple[torch.Tensor, torch.Tensor]:
    x, y, _, _ = mnist1d_arrays(4000, 1000, 42)
    idx = np.random.default_rng(1000 + seed).choice(len(x), n, replace=False)
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def _gd(model: nn.Module, loss_fn: Callable, data: tuple, lr: float, steps: int,
        optimizer: torch.optim.Optimizer | None = None) -> tuple[list[float], torch.optim.Optimizer]:
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr)
    x, y = data
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
    return losses, opt


def _lam(model: nn.Module, loss_fn: Callable, data: tuple) -> float:
    return sharpness(hessian(model, loss_fn, data), tol=1e-4)


def _mlp(hidden: int, act: type[nn.Module], seed: int, out: int = 10, inp: int = 40) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inp, hidden), act(), nn.Linear(hidden, out))


class TinyCNN(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 4, 5, stride=2), nn.ReLU(),
                         nn.Conv1d(4, 4, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 7, 10))


def _least_squares(seed: int, dim: int, noise: float = 0.0) -> tuple[nn.Module, tuple]:
    gen = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-0.5, 0.5, dim, dtype=torch.float64)
    x = torch.randn(64, dim, generator=gen, dtype=torch.float64) * scales
    w = torch.randn(dim, 1, generator=gen, dtype=torch.float64)
    y = x @ w + noise * torch.randn(64, 1, generator=gen, dtype=torch.float64)
    model = nn.Linear(dim, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, dim, generator=gen, dtype=torch.float64) * 2)
    return model, (x, y)


def _ls_lam(x: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(2 * x.T @ x / len(x))[-1])


# -- scenarios: each returns the Setup for one (architecture, seed) ---------------------------
def osc_least_squares(seed: int, dim: int) -> Setup:
    """lr·λ_max in [1.996, 1.999], started mostly along the top eigenvector: the bounce dominates
    the loss and decays by at most 0.4% per update, so the loss barely moves."""
    model, (x, y) = _least_squares(seed, dim)
    lam, vecs = torch.linalg.eigh(2 * x.T @ x / len(x))
    w_star = torch.linalg.lstsq(x, y).solution.reshape(-1)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.weight.copy_(w_star + vecs[:, -1] + 0.1 * torch.randn(dim, generator=gen, dtype=torch.float64))
    c = 1.996 + 0.003 * np.random.default_rng(seed).random()
    losses, opt = _gd(model, F.mse_loss, (x, y), c / float(lam[-1]), 100)
    return Setup(model, F.mse_loss, (x, y), losses, opt)


def osc_logistic(seed: int) -> Setup:
    data = _mnist(seed, 1024)  # more samples than parameters: not separable, a finite optimum
    torch.manual_seed(seed)
    model = nn.Linear(40, 10)
    minimize_full_batch(model, F.cross_entropy, data, max_iters=200)
    lam = _lam(model, F.cross_entropy, data)
    losses, opt = _gd(model, F.cross_entropy, data, 1.2 * 2 / lam, 400)
    return Setup(model, F.cross_entropy, data, losses, opt)


def saddle_lecture(seed: int) -> Setup:
    gen = np.random.default_rng(seed)
    model = ProductNet(*(1e-8 * gen.standard_normal(2)))
    data = (torch.ones(1, 1), torch.ones(1, 1))
    losses, opt = _gd(model, F.mse_loss, data, 0.05, 100)
    return Setup(model, F.mse_loss, data, losses, opt)


def saddle_zero_mlp(seed: int, hidden: int) -> Setup:
    data = _mnist(seed)
    model = _mlp(hidden, nn.Tanh, seed)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    losses, opt = _gd(model, F.cross_entropy, data, 0.5, 100)
    return Setup(model, F.cross_entropy, data, losses, opt)


def saddle_deep_linear(seed: int) -> Setup:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen)
    y = x @ torch.randn(6, 3, generator=gen)
    model = nn.Sequential(nn.Linear(6, 4, bias=False), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    losses, opt = _gd(model, F.mse_loss, (x, y), 0.05, 100)
    return Setup(model, F.mse_loss, (x, y), losses, opt)


def converged_least_squares(seed: int, dim: int) -> Setup:
    model, (x, y) = _least_squares(seed, dim, noise=0.5)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    losses, opt = _gd(model, F.mse_loss, (x, y), 1 / _ls_lam(x), 100)
    return Setup(model, F.mse_loss, (x, y), losses, opt)


def converged_mlp(seed: int, hidden: int) -> Setup:
    data = _mnist(seed, 128)
    model = _mlp(hidden, nn.Tanh, seed)
    minimize_full_batch(model, F.cross_entropy, data, max_iters=400, target=1e-6)
    lam = _lam(model, F.cross_entropy, data)
    losses, opt = _gd(model, F.cross_entropy, data, 0.5 / lam, 100)
    return Setup(model, F.cross_entropy, data, losses, opt)


def plateau_sigmoid_mlp(seed: int, hidden: int) -> Setup:
    x, y = _mnist(seed)
    model = _mlp(hidden, nn.Sigmoid, seed)
    with torch.no_grad():
        model[2].bias.fill_(8.0)  # every output sigmoid saturated at ~1: confidently wrong
    head = nn.Sequential(model, nn.Sigmoid())

    def loss_fn(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, F.one_hot(t, 10).to(out.dtype))

    losses, opt = _gd(head, loss_fn, (x, y), 0.5, 200)
    return Setup(head, loss_fn, (x, y), losses, opt)


def plateau_softmax_blobs(seed: int) -> Setup:
    x, y, means = blobs(seed)
    model = nn.Linear(2, 3).double()
    with torch.no_grad():
        model.weight.copy_(-(5.0 + seed % 3) * means / means.norm(dim=1, keepdim=True))
        model.bias.zero_()
    losses, opt = _gd(model, softmax_mse, (x, y), 0.5, 200)
    return Setup(model, softmax_mse, (x, y), losses, opt)


def progressing_mlp(seed: int, hidden: int, act: type[nn.Module]) -> Setup:
    data = _mnist(seed)
    model = _mlp(hidden, act, seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses, opt = _gd(model, F.cross_entropy, data, 3e-3, HISTORY, optimizer=opt)
    return Setup(model, F.cross_entropy, data, losses, opt)


def progressing_cnn(seed: int) -> Setup:
    data = _mnist(seed)
    torch.manual_seed(seed)
    model = TinyCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses, opt = _gd(model, F.cross_entropy, data, 0.1, HISTORY, optimizer=opt)
    return Setup(model, F.cross_entropy, data, losses, opt)


def progressing_least_squares(seed: int, dim: int) -> Setup:
    model, data = _least_squares(seed, dim)
    losses, opt = _gd(model, F.mse_loss, data, 0.05 / _ls_lam(data[0]), HISTORY)
    return Setup(model, F.mse_loss, data, losses, opt)


def diverging_least_squares(seed: int, dim: int) -> Setup:
    model, data = _least_squares(seed, dim)
    c = 2.2 + np.random.default_rng(seed).random()
    losses, opt = _gd(model, F.mse_loss, data, c / _ls_lam(data[0]), 80)
    return Setup(model, F.mse_loss, data, losses, opt)


def diverging_mlp(seed: int, hidden: int) -> Setup:
    x, y = _mnist(seed)
    model = _mlp(hidden, nn.ReLU, seed)

    def loss_fn(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(out, F.one_hot(t, 10).to(out.dtype))

    lam = _lam(model, loss_fn, (x, y))
    losses, opt = _gd(model, loss_fn, (x, y), 12 / lam, 80)
    return Setup(model, loss_fn, (x, y), losses, opt)


# (scenario, architecture, true cause, factory(seed))
SCENARIOS: list[tuple[str, str, str, Callable[[int], Setup]]] = [
    ("lr at or above 2/λ_max", "least squares d=2", "oscillation", lambda s: osc_least_squares(s, 2)),
    ("lr at or above 2/λ_max", "least squares d=8", "oscillation", lambda s: osc_least_squares(s, 8)),
    ("lr at or above 2/λ_max", "logistic regression (MNIST-1D)", "oscillation", osc_logistic),
    ("started at a saddle", "lecture w1·w2 toy", "critical_point", saddle_lecture),
    ("started at a saddle", "tanh MLP 40-8-10, zero init", "critical_point", lambda s: saddle_zero_mlp(s, 8)),
    ("started at a saddle", "deep linear 6-4-3, zero init", "critical_point", saddle_deep_linear),
    ("converged", "least squares d=5", "critical_point", lambda s: converged_least_squares(s, 5)),
    ("converged", "tanh MLP 40-8-10 (L-BFGS)", "critical_point", lambda s: converged_mlp(s, 8)),
    ("sigmoid+MSE plateau", "sigmoid MLP 40-16-10, MSE", "flat_plateau", lambda s: plateau_sigmoid_mlp(s, 16)),
    ("sigmoid+MSE plateau", "linear softmax, MSE (blobs)", "flat_plateau", plateau_softmax_blobs),
    ("still progressing", "ReLU MLP 40-32-10, Adam", "progressing", lambda s: progressing_mlp(s, 32, nn.ReLU)),
    ("still progressing", "tiny CNN, SGD momentum", "progressing", progressing_cnn),
    ("still progressing", "least squares d=4", "progressing", lambda s: progressing_least_squares(s, 4)),
    ("diverging", "least squares d=3", "diverging", lambda s: diverging_least_squares(s, 3)),
    ("diverging", "ReLU MLP 40-16-10, MSE", "diverging", lambda s: diverging_mlp(s, 16)),
]


def run_one(scenario: str, arch: str, truth: str, factory: Callable[[int], Setup], seed: int) -> ValidationRun:
    start = time.perf_counter()
    setup = factory(seed)
    d: Diagnosis = diagnose(setup.model, setup.loss_fn, setup.data, history=setup.losses[-HISTORY:],
                            optimizer=setup.optimizer)
    return ValidationRun(scenario=scenario, architecture=arch, seed=seed, truth=truth, predicted=d.cause,
                         correct=d.cause == truth, seconds=time.perf_counter() - start, lr=d.lr,
                         lr_sharpness=d.lr_sharpness, relative_drop=d.relative_drop, efficiency=d.efficiency,
                         grad_cosine=d.grad_cosine, grad_norm=d.grad_norm, summary=d.summary)


def confusion_matrix(runs: list[ValidationRun]) -> list[list[int]]:
    index = {c: i for i, c in enumerate(CAUSES)}
    matrix = [[0] * len(CAUSES) for _ in CAUSES]
    for r in runs:
        matrix[index[r.truth]][index[r.predicted]] += 1
    return matrix


def run_seeds(seeds: tuple[int, ...], progress: Progress | None = None, offset: int = 0,
              total: int | None = None) -> list[ValidationRun]:
    runs = []
    total = total or len(seeds) * len(SCENARIOS)
    with one_thread(), torch.random.fork_rng():  # the runs seed torch; the caller's RNG is left alone
        for seed in seeds:
            for scenario, arch, truth, factory in SCENARIOS:
                runs.append(run_one(scenario, arch, truth, factory, seed))
                if progress is not None:
                    progress(offset + len(runs), total)
    return runs


def run(*, quick: bool = True, progress: Progress | None = None) -> ValidationStudy:
    tune = () if quick else TUNE_SEEDS
    total = (len(VALIDATION_SEEDS) + len(tune)) * len(SCENARIOS)
    runs = run_seeds(VALIDATION_SEEDS, progress, 0, total)
    tune_runs = run_seeds(tune, progress, len(runs), total) if tune else []
    stalled_progressing = sum(r.truth not in ("progressing",) and r.predicted == "progressing" for r in runs)
    return ValidationStudy(
        seeds=VALIDATION_SEEDS, tune_seeds=TUNE_SEEDS, causes=CAUSES, runs=runs, confusion=confusion_matrix(runs),
        accuracy=sum(r.correct for r in runs) / len(runs), stalled_called_progressing=stalled_progressing,
        tune_runs=tune_runs,
        tune_accuracy=sum(r.correct for r in tune_runs) / len(tune_runs) if tune_runs else None)
