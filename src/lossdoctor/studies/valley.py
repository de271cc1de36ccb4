"""Study: the elongated convex valley (the lecture's section 2).

Gradient descent with lr 1e-2 bounces between the valley walls while the gradient stays large; with
lr 1e-7 it creeps down the slope and then crawls along the floor for 100,000 updates. Adagrad,
RMSprop, Adam and momentum on the same surface; learning-rate decay and warm-up fixing the late
jumps of the lecture's Adagrad.

The problem: y = w1·x1 + w2·x2 with x1 ~ N(0, 0.2²) small and x2 ~ N(0, 10²) large, 100 samples,
targets y = x·w* (noiseless, so the optimum is w* and its loss is 0), and the loss is torch's
``mse_loss``, the plain mean of squared errors **without a ½**. Its Hessian is the constant
2·mean(x xᵀ), so λ_max ≈ 2·mean(x2²) ≈ 200 depends on the draw: the study takes the first data
seed whose λ_max lies in [199.8, 199.98] (lr 1e-2 then has lr·λ_max just below 2: it bounces and
slowly settles) and, as the contrast, the first with λ_max in [201, 205] (lr·λ_max > 2: it
diverges). With a ½ in front the Hessian halves and lr 1e-2 would be comfortably stable.

Gradient descent is linear here, so its 100,000 iterates come in closed form; every other update
rule is a few lines of float arithmetic on two numbers (the lecture's formulas), run for 20,000
updates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._results import ResultMixin, fmt
from ..doctor.diagnosis import Diagnosis, diagnose
from ..progress import Progress
from ._threads import one_thread

N_SAMPLES = 100
SIGMAS = (0.2, 10.0)
W_STAR = (1.0, 1.0)
W_START = (-7.0, 1.08)
BOUNCE_WINDOW = (199.8, 199.98)
DIVERGE_WINDOW = (201.0, 205.0)
CHECKPOINTS = (1_000, 10_000, 100_000)
DIAGNOSE_AT = 1_000
DENSE_STEPS = 2_000  # trajectories are kept step by step this far, then every SPARSE_EVERY-th step
SPARSE_EVERY = 50


def draw(seed: int, n: int = N_SAMPLES) -> np.ndarray:
    """The inputs x (n x 2) of data seed ``seed``."""
    return np.random.default_rng(seed).standard_normal((n, 2)) * np.asarray(SIGMAS)


def hessian_of(x: np.ndarray) -> np.ndarray:
    """The Hessian of mean((x·w - y)²): 2·mean(x xᵀ) (no ½ in the loss)."""
    return 2 * x.T @ x / len(x)


def find_seed(window: tuple[float, float], start: int = 0, limit: int = 100_000) -> int:
    """The first data seed from ``start`` whose λ_max lies in ``window``."""
    for seed in range(start, limit):
        lam = float(np.linalg.eigvalsh(hessian_of(draw(seed)))[-1])
        if window[0] <= lam <= window[1]:
            return seed
    raise RuntimeError(f"no data seed below {limit} gives λ_max in {window}")  # pragma: no cover


@dataclass(frozen=True)
class Method:
    """One optimizer of the valley study: its name, settings and update rule."""

    key: str
    label: str
    lr: float
    steps: int
    color: str


METHODS = (
    Method("gd-1e-2", "GD, lr 1e-2", 1e-2, 100_000, "C3"),
    Method("gd-1e-7", "GD, lr 1e-7", 1e-7, 100_000, "C7"),
    Method("momentum", "momentum 0.9, lr 1e-3", 1e-3, 20_000, "C1"),
    Method("adagrad", "Adagrad (lecture: σ = RMS of all past g), lr 0.01", 0.01, 20_000, "C4"),
    Method("adagrad-decay", "Adagrad + decay η/√(t+1), lr 0.1", 0.1, 20_000, "C0"),
    Method("adagrad-warmup", "Adagrad + warm-up 200 then decay, lr 0.05", 0.05, 20_000, "C9"),
    Method("rmsprop", "RMSprop α 0.9, lr 0.01", 0.01, 20_000, "C2"),
    Method("adam", "Adam, lr 0.05", 0.05, 20_000, "C5"),
)
WARMUP = 200


def gd_closed_form(lr: float, steps: int, S: np.ndarray, w_star=W_STAR, w0=W_START) -> np.ndarray:
    """The ``steps + 1`` iterates of gradient descent in closed form.

    Along each eigenvector of the Hessian 2S the error is multiplied by (1 - lr·λ) per update. NaN
    once |w| >= 1e8."""
    lam, V = np.linalg.eigh(2 * S)
    e0 = V.T @ (np.asarray(w0) - np.asarray(w_star))
    t = np.arange(steps + 1)[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        coeff = np.sign(1 - lr * lam) ** t * np.exp(t * np.log(np.abs(1 - lr * lam))) * e0
        out = coeff @ V.T + np.asarray(w_star)
    bad = ~np.all(np.abs(out) < 1e8, axis=1)
    if bad.any():
        out[np.argmax(bad) :] = np.nan
    return out


def descend(
    method: str, lr: float, steps: int, S: np.ndarray, w_star=W_STAR, w0=W_START
) -> np.ndarray:
    """The ``steps + 1`` iterates of one update rule on L(w) = (w - w*)ᵀ S (w - w*), gradient 2 S (w - w*), step by step; stops (NaN after) once the iterate leaves |w| < 1e8."""
    a, b, c = float(S[0, 0]), float(S[0, 1]), float(S[1, 1])
    s1_, s2_ = w_star
    w1, w2 = w0
    out = np.full((steps + 1, 2), np.nan)
    out[0] = w0
    s1 = s2 = m1 = m2 = v1 = v2 = 0.0
    eps, b1, b2 = 1e-8, 0.9, 0.999
    p1 = p2 = 1.0  # b1**t, b2**t
    for t in range(steps):
        e1, e2 = w1 - s1_, w2 - s2_
        g1, g2 = 2 * (a * e1 + b * e2), 2 * (b * e1 + c * e2)
        if method == "gd":
            w1 -= lr * g1
            w2 -= lr * g2
        elif method == "momentum":  # the lecture's form: m = λm - η g, θ += m
            m1 = 0.9 * m1 - lr * g1
            m2 = 0.9 * m2 - lr * g2
            w1 += m1
            w2 += m2
        elif method.startswith("adagrad"):
            s1 += g1 * g1
            s2 += g2 * g2
            if method == "adagrad":
                eta = lr
            elif method == "adagrad-decay":
                eta = lr / math.sqrt(t + 1)
            else:
                eta = lr * min((t + 1) / WARMUP, math.sqrt(WARMUP / (t + 1)))
            root = math.sqrt(t + 1)  # σ = sqrt(mean of g²) = sqrt(sum)/sqrt(t+1)
            w1 -= eta * root / (math.sqrt(s1) + eps) * g1
            w2 -= eta * root / (math.sqrt(s2) + eps) * g2
        elif method == "rmsprop":  # σ² = α σ² + (1 - α) g², σ₀ = |g₀|
            if t == 0:
                s1, s2 = g1 * g1, g2 * g2
            else:
                s1 = 0.9 * s1 + 0.1 * g1 * g1
                s2 = 0.9 * s2 + 0.1 * g2 * g2
            w1 -= lr / (math.sqrt(s1) + eps) * g1
            w2 -= lr / (math.sqrt(s2) + eps) * g2
        elif method == "adam":
            p1 *= b1
            p2 *= b2
            m1 = b1 * m1 + (1 - b1) * g1
            m2 = b1 * m2 + (1 - b1) * g2
            v1 = b2 * v1 + (1 - b2) * g1 * g1
            v2 = b2 * v2 + (1 - b2) * g2 * g2
            w1 -= lr * (m1 / (1 - p1)) / (math.sqrt(v1 / (1 - p2)) + eps)
            w2 -= lr * (m2 / (1 - p1)) / (math.sqrt(v2 / (1 - p2)) + eps)
        else:
            raise ValueError(f"unknown method {method!r}")
        if not (abs(w1) < 1e8 and abs(w2) < 1e8):
            break
        out[t + 1] = (w1, w2)
    return out


def losses_of(traj: np.ndarray, S: np.ndarray, w_star=W_STAR) -> np.ndarray:
    """The loss at every point of a trajectory, in closed form."""
    e = traj - np.asarray(w_star)
    return np.einsum("ti,ij,tj->t", e, S, e)


def gradients_of(traj: np.ndarray, S: np.ndarray, w_star=W_STAR) -> np.ndarray:
    """The gradient at every point of a trajectory, in closed form."""
    return 2 * (traj - np.asarray(w_star)) @ S


def keep_steps(steps: int) -> np.ndarray:
    """The steps kept for drawing a run of ``steps`` updates: every one up to ``DENSE_STEPS``, then every ``SPARSE_EVERY``-th, and the last."""
    return np.unique(
        np.concatenate(
            [
                np.arange(min(steps, DENSE_STEPS) + 1),
                np.arange(DENSE_STEPS, steps + 1, SPARSE_EVERY),
                [steps],
            ]
        )
    )


@dataclass(frozen=True)
class ValleyRun(ResultMixin):
    """One trajectory of the valley study."""

    key: str
    label: str
    lr: float
    steps: int
    color: str
    kept_steps: np.ndarray  # which iterates ``trajectory`` holds
    trajectory: np.ndarray
    losses: np.ndarray  # loss at kept_steps
    loss_at: dict[int, float]
    distance_at: dict[int, float]
    late_jump: float  # largest |w2 - w2*| after update 2,000: Adagrad's late jumps
    diverged: bool

    _skip_in_dict = ("kept_steps", "trajectory", "losses")


class TwoWeights(nn.Module):
    """y = w1·x1 + w2·x2, no bias: the valley as a torch model for the doctor."""

    def __init__(self, w: tuple[float, float]):
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ w``."""
        return x @ self.w


@dataclass(frozen=True)
class ValleyStudy(ResultMixin):
    """The valley study's result: every trajectory, the table and the doctor's verdict."""

    data_seed: int
    contrast_seed: int
    num_samples: int
    sigmas: tuple[float, float]
    w_star: tuple[float, float]
    w_start: tuple[float, float]
    lambda_max: float
    lambda_min: float
    contrast_lambda_max: float
    convention: str
    hessian: np.ndarray
    runs: list[ValleyRun]
    contrast_losses: np.ndarray  # GD lr 1e-2 on the contrast draw, until it leaves |w| < 1e8
    diagnosis: Diagnosis
    diagnosed_at: int
    checkpoints: tuple[int, ...]

    _skip_in_dict = ("contrast_losses",)

    def run(self, key: str) -> ValleyRun:
        """The run of method ``key``."""
        return next(r for r in self.runs if r.key == key)

    def __str__(self) -> str:
        lines = [
            f"Valley: data seed {self.data_seed}, λ_max {self.lambda_max:.3f} (2/λ_max "
            f"{2 / self.lambda_max:.5f}), λ_min {self.lambda_min:.4f}; contrast seed {self.contrast_seed} "
            f"λ_max {self.contrast_lambda_max:.3f}"
        ]
        for r in self.runs:
            lines.append(
                f"  {r.label:45s} "
                + ", ".join(
                    f"after {n}: loss {fmt(r.loss_at[n])} dist {fmt(r.distance_at[n])}"
                    for n in r.loss_at
                )
            )
        lines.append(f"doctor on GD lr 1e-2 at update {self.diagnosed_at}: {self.diagnosis.cause}")
        return "\n".join(lines)


def _run(m: Method, S: np.ndarray) -> ValleyRun:
    traj = (
        gd_closed_form(m.lr, m.steps, S)
        if m.key.startswith("gd")
        else descend(m.key, m.lr, m.steps, S)
    )
    losses = losses_of(traj, S)
    dist = np.linalg.norm(traj - np.asarray(W_STAR), axis=1)
    kept = keep_steps(m.steps)
    late = traj[DENSE_STEPS:, 1] - W_STAR[1]
    return ValleyRun(
        key=m.key,
        label=m.label,
        lr=m.lr,
        steps=m.steps,
        color=m.color,
        kept_steps=kept,
        trajectory=traj[kept],
        losses=losses[kept],
        loss_at={n: float(losses[n]) for n in CHECKPOINTS if n <= m.steps},
        distance_at={n: float(dist[n]) for n in CHECKPOINTS if n <= m.steps},
        late_jump=float(np.nanmax(np.abs(late))) if np.isfinite(late).any() else math.nan,
        diverged=not bool(np.isfinite(traj[-1]).all()),
    )


def doctor_on_bounce(
    x: np.ndarray, S: np.ndarray, at: int = DIAGNOSE_AT, lr: float = 1e-2
) -> Diagnosis:
    """The doctor's verdict on GD with ``lr`` after ``at`` updates, from the last 60 losses, gradient norms and successive-gradient cosines of the run, on the torch version of the problem."""
    traj = descend("gd", lr, at, S)
    losses = losses_of(traj[:-1], S)  # loss at step t is measured before update t
    grads = gradients_of(traj[:-1], S)
    norms = np.linalg.norm(grads, axis=1)
    cos = np.full(len(grads), np.nan)
    cos[1:] = np.einsum("ti,ti->t", grads[1:], grads[:-1]) / (norms[1:] * norms[:-1])
    xt = torch.from_numpy(x)
    yt = xt @ torch.tensor(W_STAR, dtype=torch.float64)
    model = TwoWeights((float(traj[-1, 0]), float(traj[-1, 1])))
    history = {"losses": losses[-60:], "grad_norms": norms[-60:], "grad_cosines": cos[-60:]}
    return diagnose(model, F.mse_loss, (xt, yt), history=history, lr=lr)


def run(*, quick: bool = True, progress: Progress | None = None) -> ValleyStudy:
    """Run the valley study (``quick``: fewer updates for the slow runs)."""
    seed = find_seed(BOUNCE_WINDOW)
    contrast = find_seed(DIVERGE_WINDOW)
    x = draw(seed)
    H = hessian_of(x)
    S = H / 2  # L(w) = (w - w*)ᵀ S (w - w*) with S = mean(x xᵀ)
    lam = np.linalg.eigvalsh(H)
    Hc = hessian_of(draw(contrast))
    total = len(METHODS) + 2
    runs = []
    with one_thread():
        for i, m in enumerate(METHODS):
            runs.append(_run(m, S))
            if progress is not None:
                progress(i + 1, total)
        contrast_traj = gd_closed_form(1e-2, 2_000, Hc / 2)
        contrast_losses = losses_of(contrast_traj, Hc / 2)
        contrast_losses = contrast_losses[np.isfinite(contrast_losses)]
        diagnosis = doctor_on_bounce(x, S)
    if progress is not None:
        progress(total, total)
    return ValleyStudy(
        data_seed=seed,
        contrast_seed=contrast,
        num_samples=N_SAMPLES,
        sigmas=SIGMAS,
        w_star=W_STAR,
        w_start=W_START,
        lambda_max=float(lam[-1]),
        lambda_min=float(lam[0]),
        contrast_lambda_max=float(np.linalg.eigvalsh(Hc)[-1]),
        convention="L(w) = mean((w1·x1 + w2·x2 - y)²), torch mse_loss without a ½; Hessian 2·mean(x xᵀ)",
        hessian=H,
        runs=runs,
        contrast_losses=contrast_losses,
        diagnosis=diagnosis,
        diagnosed_at=DIAGNOSE_AT,
        checkpoints=CHECKPOINTS,
    )
