"""The doctor's measurements: numbers only, no verdict and no prose.

:func:`measure` looks at the recent loss history and at the model where it stands, in the mode
it trains in, on a bounded subset of the data and within a budget of Hessian-vector products:

* the loss trend (falling, stalled, growing; the noise of the losses);
* the full-data loss and gradient, and the minibatch gradient noise at the training batch size
  (per-batch gradients of the same pass: E||g_B||² against ||g||²);
* the optimizer as it acts: its per-coordinate step, the lr-scaled sharpness S against its
  stability limit, and one probe step of the optimizer itself from here (with the full-data
  gradient: the loss change against its first-order prediction, the gradient's turn, the share
  of the step that is weight decay);
* the curvature the gradient sees: Lanczos from the (preconditioned) gradient gives its spectral
  measure, hence the quadratic model's reducible loss, the steps it needs at this step size, and
  the condition number S / S_g between the sharpest direction and the gradient's;
* per layer: dead units (rows of a weight whose gradient is exactly zero on every sample), the
  step's size relative to the weights across depth, where the sharpest direction lives;
* near a critical point, the smallest Hessian eigenvalue and its eigenvector.

The model, its optimizer, its gradients, modes and every RNG are left exactly as they were.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin
from ..analysis.layers import parameter_blocks
from ..analysis.step_size import Preconditioned, StepSize, step_size
from ..curvature import eigenpairs
from ..curvature.lanczos import apply64, block_lanczos_tridiagonals, gaussian, tridiagonal
from ..curvature.operator import stepped_hessian
from ..data import batch_loss, batch_size, is_single_batch, iter_batches, map_inputs, place
from ..evaluation import mean_loss
from ..model_state import evaluation_mode, load_flat, preserved_model, preserved_rng
from ..progress import Progress
from ..training.lr_finder import preserved_optimizer
from ..types import Mode
from .trend import LossTrend, StepHistory, loss_trend

SAMPLES = 512
CURVATURE_SAMPLES = 128
BUDGET = 100
GRADIENT_STEPS = 10  # Lanczos steps from the gradient (its spectral measure)
SHARPNESS_TOL = 1e-2
SMALLEST_TOL = 1e-2
FLAT_FLOOR = 1e-6  # step-scaled curvatures below this fraction of S count as flat
MAX_HALF_LIFE = 1e9
ACTIVATIONS = (
    nn.ReLU,
    nn.ReLU6,
    nn.Hardtanh,
    nn.Softplus,
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.LeakyReLU,
    nn.Mish,
    nn.Hardswish,
    nn.Hardsigmoid,
)


@dataclass(frozen=True)
class LayerStat(ResultMixin):
    """One block's gradient, weights and probe step, in depth order."""

    name: str
    module_type: str
    numel: int
    weight_norm: float
    grad_norm: float
    update_norm: float | None
    units: int  # output units (rows of a weight matrix / output channels), 0 if not a weight layer
    dead_units: int

    @property
    def update_ratio(self) -> float | None:
        """The size of one update relative to the weights, ``update_norm / weight_norm`` (``None`` if unknown)."""
        if self.update_norm is None or self.weight_norm == 0:
            return None
        return self.update_norm / self.weight_norm


@dataclass(frozen=True)
class Measurements(ResultMixin):
    """Everything the decision rules read.

    Fields are None where a measurement was not taken (no optimizer, a non-finite loss, out of
    budget); see the module docstring for each."""

    trend: LossTrend
    history_grad_norm: float | None
    history_cosine: float | None
    recent_loss: float
    mode: Mode
    mode_note: str | None
    samples: int
    batch_size: int | None
    batches: int
    nonfinite_params: bool
    loss: float | None
    loss_agrees: bool | None
    grad_norm: float | None
    param_norm: float | None
    minibatch_grad_norm: float | None
    noise_ratio: float | None  # tr(Σ)/B over ||g||²: gradient noise against signal at batch B
    optimizer: str | None
    lr: float | None
    momentum: float
    threshold: float | None
    weight_decay: float
    decoupled: bool
    adaptive: bool
    effective_lr: float | None
    optimizer_note: str | None
    lambda_max: float | None
    lambda_max_converged: bool
    lambda_max_error: float | None  # the Lanczos residual: some eigenvalue lies within it
    lr_sharpness: float | None
    gradient_curvature: float | None  # S_g: step-scaled curvature along the gradient's step
    reducible: float | None  # ½ gᵀH⁺g: what the local quadratic model can still lose
    half_life: float | None  # steps at this step size for the quadratic model to lose half of it
    negative_mass: float | None  # share of the (preconditioned) gradient on negative curvature
    probe_loss_change: float | None
    probe_predicted: float | None
    probe_cosine: float | None
    update_norm: float | None
    decay_share: float | None  # ||decay part of the step|| / ||gradient part||
    decay_alignment: float | None  # cosine between the two parts (-1: decay undoes the gradient)
    efficiency: float | None  # realized loss drop per step / predicted by the probe step
    layers: tuple[LayerStat, ...]
    sharpest_block: str | None
    sharpest_block_share: float | None
    lambda_min: float | None
    lambda_min_converged: bool
    lambda_min_error: float | None
    hvps: int
    gradients: int
    seconds: float
    interrupted: bool = False
    loss_eps: float = 1.2e-7  # the machine epsilon of the loss's dtype
    # Σ|g_i θ_i|: the loss's first-order change when every parameter moves by its own size, so
    # eps times it bounds what rounding the parameters alone changes the loss by.
    rounding_sensitivity: float | None = None
    dead_rows: dict[str, list[int]] = field(default_factory=dict, repr=False)
    escape_direction: torch.Tensor | None = field(default=None, repr=False)
    top_direction: torch.Tensor | None = field(default=None, repr=False)
    parameter_names: tuple[str, ...] = ()

    _skip_in_dict = ("escape_direction", "top_direction", "dead_rows")

    # -- derived numbers the rules use ---------------------------------------------------------
    @property
    def stability(self) -> float | None:
        """S over its limit: 1 is the edge of stability, 0.5 is lr·λ_max = 1 for plain GD."""
        if self.lr_sharpness is None or not self.threshold:
            return None
        return self.lr_sharpness / self.threshold

    @property
    def trust_ratio(self) -> float | None:
        """Realized over predicted decrease of the probe step (the trust-region ratio).

        ~1 where the local linear model holds, < 0 when the step goes uphill. None when the
        prediction is not a decrease or the change is below rounding."""
        if self.probe_predicted is None or self.probe_loss_change is None or self.loss is None:
            return None
        # A predicted change below ~100 rounding units of the loss cannot be measured.
        if self.probe_predicted >= 0 or abs(self.probe_predicted) <= 100 * self.loss_eps * max(
            abs(self.loss), 1e-30
        ):
            return None
        return self.probe_loss_change / self.probe_predicted

    @property
    def condition(self) -> float | None:
        """S / S_g: how much sharper the sharpest direction is than the gradient's direction."""
        if (
            self.lr_sharpness is None
            or self.gradient_curvature is None
            or self.gradient_curvature <= 0
        ):
            return None
        return self.lr_sharpness / self.gradient_curvature

    @property
    def grad_scale(self) -> float | None:
        """sqrt(2 |L| λ_max): the gradient a quadratic bowl of the top curvature has at this loss."""
        if self.loss is None or self.lambda_max is None or self.lambda_max <= 0:
            return None
        return math.sqrt(2 * abs(self.loss) * self.lambda_max)

    @property
    def relative_grad(self) -> float | None:
        """||g|| / sqrt(2 |L| λ_max): ~1 on a quadratic bowl, << 1 at a critical point."""
        scale = self.grad_scale
        if self.grad_norm is None or scale is None or scale == 0:
            return None
        return self.grad_norm / scale

    @property
    def dead_fraction(self) -> float | None:
        """The fraction of hidden units that are dead (never active on the samples measured), or ``None``."""
        units = sum(s.units for s in self.hidden_layers)
        return None if units == 0 else sum(s.dead_units for s in self.hidden_layers) / units

    @property
    def worst_dead_layer(self) -> LayerStat | None:
        """The hidden layer with the largest fraction of dead units, or ``None``."""
        hidden = [s for s in self.hidden_layers if s.units]
        return max(hidden, key=lambda s: s.dead_units / s.units) if hidden else None

    @property
    def hidden_layers(self) -> tuple[LayerStat, ...]:
        """Weight layers before the last one (the output layer has no 'dead' units)."""
        weighted = [s for s in self.layers if s.units]
        return tuple(weighted[:-1])

    @property
    def depth_ratio(self) -> float | None:
        """Smallest step/weight ratio among hidden weight layers over the output layer's."""
        weighted = [s for s in self.layers if s.units and s.update_ratio is not None]
        if len(weighted) < 3:
            return None
        last = weighted[-1].update_ratio
        hidden = [s.update_ratio for s in weighted[:-1] if s.update_ratio is not None]
        if not last or last <= 0:
            return None
        return min(hidden) / last

    def _depth_ratios(self) -> list[float] | None:
        """Each weight layer's gradient/weight ratio over the output layer's (None: fewer than 3)."""
        weighted = [s for s in self.layers if s.units and s.weight_norm > 0]
        if len(weighted) < 3:
            return None
        ratios = [s.grad_norm / s.weight_norm for s in weighted]
        return None if ratios[-1] <= 0 else [r / ratios[-1] for r in ratios[:-1]]

    @property
    def depth_gradient_ratio(self) -> float | None:
        """Smallest gradient/weight ratio among hidden weight layers over the output layer's."""
        ratios = self._depth_ratios()
        return None if ratios is None else min(ratios)

    @property
    def max_depth_gradient_ratio(self) -> float | None:
        """Largest gradient/weight ratio among hidden weight layers over the output layer's."""
        ratios = self._depth_ratios()
        return None if ratios is None else max(ratios)

    def __str__(self) -> str:
        from .._results import fmt

        parts = [str(self.trend), f"measured in {self.mode} mode on {self.samples} samples"]
        if self.loss is not None:
            parts.append(f"loss {fmt(self.loss, 5)}, gradient norm {fmt(self.grad_norm)}")
        if self.lambda_max is not None:
            parts.append(
                f"λ_max {fmt(self.lambda_max, 4)}, S {fmt(self.lr_sharpness, 4)} / {fmt(self.threshold, 3)}"
            )
        parts.append(
            f"cost: {self.hvps} Hessian-vector products, {self.gradients} gradients, {self.seconds:.2f} s"
        )
        return "\n".join(parts)


# -- data ------------------------------------------------------------------------------------------
def first_samples(
    data: Any, samples: int | None, batch: int | None = None
) -> list[tuple[Any, torch.Tensor]]:
    """The first ``samples`` samples of ``data`` as a list of batches (a single pair is cut into batches of ``batch``); iterating a shuffling DataLoader leaves the global RNG as it was."""
    out: list[tuple[Any, torch.Tensor]] = []
    count = 0
    with preserved_rng():
        if is_single_batch(data) and batch is not None:
            x, y = data
            n, size = batch_size(y), batch

            def rows(t: torch.Tensor, a: int) -> torch.Tensor:
                return t[a : a + size] if t.dim() and t.shape[0] == n else t

            source: Iterable[tuple[Any, torch.Tensor]] = [
                (map_inputs(functools.partial(rows, a=a), x), y[a : a + size])
                for a in range(0, n, size)
            ]
        else:
            source = iter_batches(data)
        for x, y in source:
            n = batch_size(y)
            if samples is not None and count + n > samples and out:
                keep = samples - count
                if keep <= 0 or not isinstance(x, torch.Tensor):
                    break
                x, y, n = x[:keep], y[:keep], keep
            out.append((x, y))
            count += n
            if samples is not None and count >= samples:
                break
    return out


@contextlib.contextmanager
def dropout_off(model: nn.Module) -> Iterator[list[str]]:
    """Dropout modules' probability set to 0 (restored on exit), so a train-mode loss is deterministic; yields the names of the modules switched off."""
    saved = []
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            saved.append((name, m, m.p))
            m.p = 0.0
    try:
        yield [name for name, _, _ in saved]
    finally:
        for _, m, p in saved:
            m.p = p


def has_batchnorm(model: nn.Module) -> bool:
    """Whether the model has a BatchNorm layer."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


# -- the pieces --------------------------------------------------------------------------------
class _Budget:
    """Hessian-vector products left; every measurement takes what it needs or is skipped."""

    def __init__(self, total: int, progress: Progress | None):
        self.total, self.used, self.progress = total, 0, progress

    def left(self) -> int:
        return max(self.total - self.used, 0)

    def spend(self, n: int) -> None:
        self.used += n
        if self.progress is not None:
            self.progress(min(self.used, self.total), self.total)


def _sharpness_start(grad: torch.Tensor, seed: int) -> torch.Tensor | None:
    """The λ_max run's start: the gradient's direction plus a random one of the same length.

    A loss gradient lies mostly in the top Hessian eigenspace (on the tiny BatchNorm ResNet of
    tests/test_vision_analyses.py its component along the top eigenvector is 300x that of a random
    vector: the run found the top, 2.64, from each of 4 seeds in 16 products, against 3 of 4 from
    a random start, one stopping at the second eigenvalue, 2.31); the random half keeps every
    direction reachable. The search for missed eigenvalues still starts from random vectors."""
    norm = float(grad.norm())
    if not math.isfinite(norm) or norm == 0.0:
        return None
    z = gaussian(grad.numel(), 1, seed, grad.device).squeeze(1)
    return grad.reshape(-1).to(torch.float64) / norm + z / z.norm()


def _batch_gradients(op: Any, batches: list) -> tuple[float, torch.Tensor, list[float], list[int]]:
    """One pass: the mean loss, the mean gradient (float64) and each batch's squared gradient norm and size, in the operator's mode."""
    grad = torch.zeros(op.num_params, dtype=torch.float64, device=op.device)
    sq, sizes, total, count = [], [], 0.0, 0
    with preserved_rng(), evaluation_mode(op.model, op.mode):
        for i, (x, y) in enumerate(batches):
            x, y = place(x, y, op.device)
            n = batch_size(y)
            loss = batch_loss(op.model, op.loss_fn, x, y, i)  # as stepped on: stepped_hessian
            gs = torch.autograd.grad(loss, op.params, allow_unused=True, materialize_grads=True)
            g = torch.cat([t.reshape(-1) for t in gs]).to(torch.float64)
            grad += n * g
            sq.append(float(g @ g))
            sizes.append(n)
            total += float(loss.detach()) * n
            count += n
    return total / count, grad / count, sq, sizes


def _noise(
    mean_grad: torch.Tensor, sq: list[float], sizes: list[int]
) -> tuple[float | None, float | None, float]:
    """(minibatch gradient norm, noise ratio tr(Σ)/B / ||G||², ||G||² estimate) from per-batch squared norms: E||g_B||² = ||G||² + tr(Σ)/B and ||ḡ_N||² = ||G||² + tr(Σ)/N."""
    gbar = float(mean_grad @ mean_grad)
    if len(sq) < 2:
        return None, None, gbar
    total = sum(sizes)
    b = float(np.median(sizes))
    mean_sq = float(np.average(sq, weights=sizes))
    if b >= total:
        return math.sqrt(mean_sq), None, gbar
    tr_sigma = max(mean_sq - gbar, 0.0) / (1 / b - 1 / total)
    # The signal estimate ||ḡ||² - tr(Σ)/N can fall to or below zero when the full gradient is
    # lost in the noise; floored at 5% of ||ḡ||², the ratio is then a lower bound.
    signal = max(gbar - tr_sigma / total, 0.05 * gbar, 1e-300)
    return math.sqrt(mean_sq), (tr_sigma / b) / signal, signal


def _flat_set(params: list[torch.Tensor], vector: torch.Tensor) -> None:
    load_flat(params, vector)


class _Probe(TypedDict):
    delta: torch.Tensor  # the step Δ
    loss_after: float
    cosine: float | None  # of the gradients before and after (None: one of them is zero)
    decay_share: float | None  # |weight-decay part| / |gradient part| (None: no weight decay)
    decay_alignment: float | None  # cosine between the two parts (None: no weight decay)


def _probe_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, op: Any, grad: torch.Tensor, batches: list
) -> _Probe:
    """One step of the optimizer itself with the full-data gradient, then undone.

    The step Δ, the loss change against gᵀΔ, the gradient's cosine before/after, and the
    weight-decay part."""
    theta = op.parameter_vector().to(torch.float64)
    pieces = torch.split(grad, op.numels)
    known = {id(p) for g in optimizer.param_groups for p in g["params"]}
    share = alignment = None
    with preserved_model(model), preserved_optimizer(optimizer):

        def step(decay: bool) -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            for p, piece in zip(op.params, pieces):
                p.grad = piece.view_as(p).to(p.dtype).clone()
            for p in (q for g in optimizer.param_groups for q in g["params"]):
                if p.grad is None and id(p) in known and p.requires_grad:
                    p.grad = torch.zeros_like(p)
            saved_wd = [g.get("weight_decay", 0.0) for g in optimizer.param_groups]
            if not decay:
                for g in optimizer.param_groups:
                    if "weight_decay" in g:
                        g["weight_decay"] = 0.0
            type(optimizer).step(optimizer)  # the class's step: no scheduler bookkeeping
            for g, wd in zip(optimizer.param_groups, saved_wd):
                if "weight_decay" in g:
                    g["weight_decay"] = wd
            return op.parameter_vector().to(torch.float64) - theta

        has_decay = any(
            float(g.get("weight_decay", 0.0) or 0.0) > 0 for g in optimizer.param_groups
        )
        if has_decay:
            with preserved_optimizer(optimizer):
                delta_plain = step(decay=False)
            _flat_set(op.params, theta)
        delta = step(decay=True)
        loss_after, grad_after, _, _ = _batch_gradients(op, batches)
        denom = float(grad.norm() * grad_after.norm())
        if has_decay:
            decay_part = delta - delta_plain
            dn, gn = float(decay_part.norm()), float(delta_plain.norm())
            share = dn / gn if gn > 0 else (math.inf if dn > 0 else None)
            alignment = float(decay_part @ delta_plain) / (dn * gn) if dn > 0 and gn > 0 else None
    return _Probe(
        delta=delta,
        loss_after=loss_after,
        cosine=float(grad @ grad_after) / denom if denom > 0 else None,
        decay_share=share,
        decay_alignment=alignment,
    )


def contraction(a: np.ndarray, momentum: float = 0.0) -> np.ndarray:
    """Per step, the factor by which gradient descent with step-scaled curvature ``a`` (lr·λ) and heavy-ball momentum shrinks the error along an eigenvector of the quadratic model: the larger root modulus of z² - (1 + μ - a) z + μ (|1 - a| without momentum).

    Below 1 while 0 < a < 2 + 2μ; slow directions get ~1 - a/(1 - μ) (momentum's gain), stiff ones
    sqrt(μ).

    Examples:
        >>> float(contraction(np.array([0.5]))[0]), float(contraction(np.array([3.0]), 0.9)[0]) < 1
        (0.5, True)
    """
    a = np.asarray(a, dtype=np.float64)
    b = 1 + momentum - a
    disc = b * b - 4 * momentum
    root = np.sqrt(np.abs(disc))
    real = np.maximum(np.abs((b + root) / 2), np.abs((b - root) / 2))
    return np.where(disc >= 0, real, math.sqrt(momentum))


def _gradient_spectrum(
    op: Any, steps: StepSize, grad: torch.Tensor, lam_s: float, n_steps: int
) -> tuple[float, float, float, float]:
    """Lanczos from the preconditioned gradient g̃ = D^½ g on Ã = D^½ H D^½ (unit step).

    (S_g = g̃ᵀÃg̃/|g̃|², reducible ½ Σ c_j²/a_j over a_j > 0, half-life in steps, negative mass)."""
    d = steps.scale if steps.scale is not None else torch.full_like(grad, steps.lr)
    pre = Preconditioned(op, d.to(grad.device))
    g_t = d.sqrt().to(grad.device) * grad
    gsq = float(g_t @ g_t)
    if gsq == 0:
        return 0.0, 0.0, math.inf, 0.0
    ((alpha, beta),) = block_lanczos_tridiagonals(
        lambda X: apply64(pre, X), g_t.reshape(-1, 1), n_steps
    )
    a, vecs = torch.linalg.eigh(tridiagonal(alpha, beta))
    a, w = a.numpy(), (vecs[0] ** 2).numpy()
    s_g = float(alpha[0])
    floor = FLAT_FLOOR * max(abs(lam_s), float(np.abs(a).max()), 1e-300)
    pos = a > floor
    c2 = w * gsq
    parts = c2[pos] / (2 * a[pos])
    reducible = float(parts.sum())
    # Momentum (heavy ball) lengthens the slow directions' steps by 1/(1 - μ).
    heavy_ball = (
        steps.momentum if steps.kind in ("sgd", "rmsprop") and 0 < steps.momentum < 1 else 0.0
    )
    keep = np.minimum(contraction(a[pos], heavy_ball) ** 2, 1.0)
    half = math.inf
    if reducible > 0 and np.any(keep < 1):
        # Smallest t with Σ parts keep^t <= ½ Σ parts (inf when the shrinking part is under half).
        def left(t: float) -> float:
            return float((parts * keep**t).sum())

        if left(MAX_HALF_LIFE) <= 0.5 * reducible:
            lo, hi = 0.0, 1.0
            while left(hi) > 0.5 * reducible:
                lo, hi = hi, hi * 4
            for _ in range(60):
                mid = 0.5 * (lo + hi) if hi - lo < 1 else math.sqrt(max(lo, 1e-3) * hi)
                if left(mid) > 0.5 * reducible:
                    lo = mid
                else:
                    hi = mid
            half = hi
    negative = float(w[a < -floor].sum())
    return s_g, reducible, half, negative


def _dead_units(
    op: Any, grad: torch.Tensor, blocks: list
) -> tuple[dict[str, tuple[int, int]], dict[str, list[int]]]:
    """Per weight layer: (output units, units whose every incoming weight and bias has an exactly zero full-data gradient although the weights are not all zero): ReLUs that never fire.

    Also the dead rows by weight name (normalization layers' channels included, for
    re-initializing)."""
    params = dict(zip(op.names, op.params))
    offsets, pos = {}, 0
    for name, numel in zip(op.names, op.numels):
        offsets[name] = (pos, pos + numel)
        pos += numel
    counts: dict[str, tuple[int, int]] = {}
    rows_of: dict[str, list[int]] = {}
    for b in blocks:
        weight = next((n for n in b.parameter_names if n.endswith("weight")), None)
        if weight is None or b.module_type in ("Embedding", "EmbeddingBag"):
            continue
        p = params[weight]
        a, z = offsets[weight]
        g = grad[a:z].reshape(p.shape)
        w = p.detach().to(torch.float64)
        transposed = b.module_type.startswith("ConvTranspose")
        if transposed:
            g, w = g.transpose(0, 1), w.transpose(0, 1)
        rows = g.shape[0]
        g_rows = g.reshape(rows, -1).abs().amax(1)
        w_rows = w.reshape(rows, -1).abs().amax(1)
        dead = (g_rows == 0) & (w_rows > 0)
        bias = next((n for n in b.parameter_names if n.endswith("bias")), None)
        if bias is not None and params[bias].numel() == rows:
            a, z = offsets[bias]
            dead &= grad[a:z] == 0
        idx = [int(i) for i in torch.nonzero(dead).reshape(-1)]
        if idx and not transposed:
            rows_of[weight] = idx
        if p.dim() >= 2:
            counts[b.name] = (rows, len(idx))
    return counts, rows_of


@torch.no_grad()
def batches_loss(model: nn.Module, loss_fn: Any, batches: list, mode: str) -> float:
    """The mean loss over ``batches`` in ``mode`` (dropout off), the model's modes, buffers and the RNG restored."""
    device = next(model.parameters()).device
    with preserved_model(model), dropout_off(model):
        model.train(mode == "train")
        return mean_loss(model, loss_fn, batches, device)


def escape_step(
    model: nn.Module,
    loss_fn: Any,
    batches: list,
    mode: str,
    names: tuple[str, ...],
    direction: torch.Tensor,
    eigenvalue: float,
    loss: float,
) -> tuple[dict[str, torch.Tensor], float]:
    """A line search along ±``direction`` (flat over ``names``).

    The step (signed) that lowers the loss on ``batches`` most among geometric trial lengths around
    the quadratic model's scale sqrt(2 |L| / |λ|). Returns the direction by parameter name and the
    step."""
    params = dict(model.named_parameters())
    sizes = [params[n].numel() for n in names]
    pieces = {
        n: piece.reshape(params[n].shape) for n, piece in zip(names, torch.split(direction, sizes))
    }
    theta = {n: params[n].detach().clone() for n in names}
    scale = math.sqrt(2 * max(abs(loss), 1e-12) / max(abs(eigenvalue), 1e-12))
    best_t, best = 0.0, loss

    def loss_at(t: float) -> float:
        with torch.no_grad():
            for n in names:
                params[n].copy_(theta[n] + t * pieces[n].to(params[n].dtype))
        value = batches_loss(model, loss_fn, batches, mode)
        return value if math.isfinite(value) else math.inf

    with preserved_model(model):
        for k in range(-12, 4):
            for sign in (1.0, -1.0):
                t = sign * scale * 2.0**k
                value = loss_at(t)
                if value < best:
                    best_t, best = t, value
        if best_t != 0.0:
            # Golden-section refinement between half and twice the best grid step.
            a, b = best_t / 2, best_t * 2
            ratio = (math.sqrt(5) - 1) / 2
            c, d = b - ratio * (b - a), a + ratio * (b - a)
            fc, fd = loss_at(c), loss_at(d)
            for _ in range(24):
                if fc < fd:
                    b, d, fd = d, c, fc
                    c = b - ratio * (b - a)
                    fc = loss_at(c)
                else:
                    a, c, fc = c, d, fd
                    d = a + ratio * (b - a)
                    fd = loss_at(d)
            t, value = (c, fc) if fc < fd else (d, fd)
            if value < best:
                best_t, best = t, value
    return pieces, best_t


# -- the measurement ------------------------------------------------------------------------------
MAX_WIDENING = 8


def widened_trend(losses: np.ndarray, window: int) -> LossTrend:
    """The trend over ``window`` steps, or over 2x, 4x, ...

    (up to ``MAX_WIDENING`` x, as far as the history reaches) while minibatch noise leaves the stall
    test open."""
    trend = loss_trend(losses, window)
    k = 2
    while (
        trend.stalled is None
        and trend.nonfinite == 0
        and k <= MAX_WIDENING
        and k * window <= losses.size
    ):
        trend = loss_trend(losses, k * window)
        k *= 2
    return trend


def measure(  # noqa: C901 - the measurement steps in order, each within the budget
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    history: StepHistory,
    *,
    optimizer: Any = None,
    lr: float | None = None,
    window: int,
    mode: Mode | Literal["auto"] = "auto",
    samples: int | None = SAMPLES,
    curvature_samples: int | None = CURVATURE_SAMPLES,
    batch: int | None = None,
    budget: int = BUDGET,
    seed: int = 0,
    progress: Progress | None = None,
) -> Measurements:
    """Measure everything the decision rules read (see the module docstring).

    Args:
        model: the model where training stands.
        loss_fn: its loss.
        data: its training data.
        history: the recent per-step signals (:func:`lossdoctor.doctor.trend.read_history`).
        optimizer: the optimizer that produced the history.
        lr: the plain-SGD lr, when no optimizer is given (or an override).
        window: steps of history the trend is read from.
        mode: ``"auto"`` (the model's own: train mode if ``model.training``; BatchNorm on batch
            statistics, dropout switched off so the loss is deterministic), ``"train"`` or ``"eval"``.
        samples: measure the loss, gradient and noise on the first this many samples of ``data``
            (None: all).
        curvature_samples: measure curvature (Hessian-vector products) on the first this many of
            those (None: all of them).
        batch: the training batch size, for the gradient noise when ``data`` is one pair.
        budget: Hessian-vector products the curvature measurements may use.
        seed: the seed of the random vectors (Lanczos starts, probes).
        progress: called as ``progress(products done, budget)``.
    """
    started = time.perf_counter()
    trend = widened_trend(history.losses, window)
    w = trend.window
    finite = history.losses[-w:][np.isfinite(history.losses[-w:])]
    recent = float(np.median(finite[-max(1, finite.size // 3) :])) if finite.size else math.nan
    hist_g = hist_c = None
    if history.grad_norms is not None and np.isfinite(history.grad_norms[-w:]).any():
        hist_g = float(np.nanmedian(history.grad_norms[-w:]))
    if history.grad_cosines is not None and np.isfinite(history.grad_cosines[-w:]).any():
        hist_c = float(np.nanmean(history.grad_cosines[-w:]))
    nonfinite_params = any(not bool(torch.isfinite(p).all()) for p in model.parameters())
    want: Mode = (
        "train" if mode == "auto" and model.training else ("eval" if mode == "auto" else mode)
    )
    mode_note = None
    budget_left = _Budget(budget, progress)
    base: dict[str, Any] = dict(
        trend=trend,
        history_grad_norm=hist_g,
        history_cosine=hist_c,
        recent_loss=recent,
        mode=want,
        mode_note=None,
        samples=0,
        batch_size=batch,
        batches=0,
        nonfinite_params=nonfinite_params,
        loss=None,
        loss_agrees=None,
        grad_norm=None,
        param_norm=None,
        minibatch_grad_norm=None,
        noise_ratio=None,
        optimizer=None,
        lr=lr,
        momentum=0.0,
        threshold=None,
        weight_decay=0.0,
        decoupled=False,
        adaptive=False,
        effective_lr=None,
        optimizer_note=None,
        lambda_max=None,
        lambda_max_converged=False,
        lambda_max_error=None,
        lambda_min_error=None,
        lr_sharpness=None,
        gradient_curvature=None,
        reducible=None,
        half_life=None,
        negative_mass=None,
        probe_loss_change=None,
        probe_predicted=None,
        probe_cosine=None,
        update_norm=None,
        decay_share=None,
        decay_alignment=None,
        efficiency=None,
        layers=(),
        sharpest_block=None,
        sharpest_block_share=None,
        lambda_min=None,
        lambda_min_converged=False,
        hvps=0,
        gradients=0,
        seconds=0.0,
    )

    def done(**fields: Any) -> Measurements:
        base.update(fields)
        base["seconds"] = time.perf_counter() - started
        return Measurements(**base)

    steps0 = step_size(optimizer, [p for p in model.parameters() if p.requires_grad], lr)
    if steps0 is not None:
        base.update(
            optimizer=steps0.kind,
            lr=steps0.lr,
            momentum=steps0.momentum,
            threshold=steps0.threshold,
            weight_decay=steps0.weight_decay,
            decoupled=steps0.decoupled,
            adaptive=steps0.adaptive,
            effective_lr=steps0.effective_lr,
            optimizer_note=steps0.note,
        )
    if nonfinite_params:
        return done()
    batches = first_samples(data, samples, batch)
    base["samples"] = sum(batch_size(y) for _, y in batches)
    base["batches"] = len(batches)
    base["batch_size"] = batch or (batch_size(batches[0][1]) if batches else None)
    with dropout_off(model) as switched:
        if switched and want == "train":
            mode_note = f"dropout ({', '.join(switched)}) switched off while measuring, so the loss is deterministic"
        try:
            op = stepped_hessian(model, loss_fn, batches, want)
        except ValueError as err:
            if "loss is" not in str(err):
                raise
            return done(mode_note=mode_note, loss=math.inf)
        # A model measured in eval mode whose history disagrees (BatchNorm running statistics that
        # do not match the batch statistics it trains on): measure in train mode instead.
        if mode == "auto" and want == "eval" and has_batchnorm(model) and math.isfinite(recent):
            other = stepped_hessian(model, loss_fn, batches, "train")
            if abs(other.loss - recent) < 0.5 * abs(op.loss - recent):
                mode_note = (
                    f"in eval mode (BatchNorm running statistics) the loss is {op.loss:.4g}, far from the "
                    f"training losses (~{recent:.4g}); measured in train mode (batch statistics), "
                    f"where it is {other.loss:.4g}"
                )
                op, want = other, "train"
        base.update(mode=want, mode_note=mode_note)
        # Curvature on the first curvature_samples samples (a Hessian-vector product costs several
        # training steps per batch); loss, gradient and noise on all of them.
        curvature_batches = (
            first_samples(batches, curvature_samples) if curvature_samples else batches
        )
        cop = (
            op
            if len(curvature_batches) == len(batches)
            else stepped_hessian(model, loss_fn, curvature_batches, want)
        )
        loss, grad, sq, sizes = _batch_gradients(op, batches)
        gradients = 1
        if not math.isfinite(loss) or not bool(torch.isfinite(grad).all()):
            return done(loss=loss, gradients=gradients)
        mb, noise, signal = _noise(grad, sq, sizes)
        grad_norm = float(grad.norm())
        theta = op.parameter_vector().to(torch.float64)
        noise_floor = 3 * trend.noise if math.isfinite(trend.noise) else 0.0
        agrees = (
            None
            if not math.isfinite(recent)
            else bool(abs(loss - recent) <= max(noise_floor, 0.25 * abs(recent), 1e-12))
        )
        base.update(
            loss=loss,
            loss_agrees=agrees,
            grad_norm=grad_norm,
            param_norm=float(theta.norm()),
            minibatch_grad_norm=mb,
            noise_ratio=noise,
            gradients=gradients,
            rounding_sensitivity=float((grad.to(torch.float64) * theta).abs().sum()),
        )
        blocks = parameter_blocks(model, op.names)
        dead, dead_rows = _dead_units(op, grad, blocks)
        steps = step_size(optimizer, op.params, lr)
        with warnings.catch_warnings():
            warnings.simplefilter(
                "ignore", RuntimeWarning
            )  # unconverged pairs are flagged, not warned
            top = eigenpairs(
                cop,
                k=1,
                which="largest",
                tol=SHARPNESS_TOL,
                seed=seed,
                max_matvecs=max(min(30, int(0.4 * budget)), 2),
                start=_sharpness_start(grad, seed),
            )
        budget_left.spend(top.matvecs)
        lam = float(top.eigenvalues[0])
        v = top.eigenvectors[:, 0]
        shares = [(b.name, float((v[b.start : b.stop] ** 2).sum())) for b in blocks]
        sharpest = max(shares, key=lambda s: s[1]) if shares else (None, None)
        base.update(
            lambda_max=lam,
            lambda_max_converged=bool(top.converged[0]),
            lambda_max_error=float(top.residual_norms[0]),
            sharpest_block=sharpest[0],
            sharpest_block_share=sharpest[1],
            top_direction=v,
            parameter_names=tuple(op.names),
        )
        probe: _Probe | None = None
        if steps is not None:
            base.update(
                optimizer=steps.kind,
                lr=steps.lr,
                momentum=steps.momentum,
                threshold=steps.threshold,
                weight_decay=steps.weight_decay,
                decoupled=steps.decoupled,
                adaptive=steps.adaptive,
                effective_lr=steps.effective_lr,
                optimizer_note=steps.note,
            )
            if steps.scale is None:
                s_top = steps.lr * lam
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    pre = eigenpairs(
                        Preconditioned(cop, steps.scale),
                        k=1,
                        which="largest",
                        tol=SHARPNESS_TOL,
                        seed=seed,
                        max_matvecs=max(min(30, int(0.3 * budget), budget_left.left()), 2),
                    )
                budget_left.spend(pre.matvecs)
                s_top = float(pre.eigenvalues[0])
                # its eigenvector (8 bytes a parameter: 1 GB on GPT-2 small) is not needed below,
                # where the gradient spectrum's Lanczos store sets the doctor's peak memory
                del pre
            n_steps = max(
                min(GRADIENT_STEPS, budget_left.left(), op.num_params), min(3, op.num_params)
            )
            s_g, reducible, half, negative = _gradient_spectrum(cop, steps, grad, s_top, n_steps)
            budget_left.spend(n_steps)
            base.update(
                lr_sharpness=s_top,
                gradient_curvature=s_g,
                reducible=reducible,
                half_life=half,
                negative_mass=negative,
            )
            # The probe: one step of the optimizer itself (plain SGD at lr when only an lr is given).
            prober = optimizer if optimizer is not None else torch.optim.SGD(op.params, lr=steps.lr)
            probe = _probe_step(model, prober, op, grad, batches)
            gradients += 1
            delta = probe["delta"]
            predicted = float(grad @ delta)
            eff = None
            if predicted < 0 and math.isfinite(trend.drop_per_step):
                eff = trend.drop_per_step / -predicted
            base.update(
                probe_loss_change=probe["loss_after"] - loss,
                probe_predicted=predicted,
                probe_cosine=probe["cosine"],
                update_norm=float(delta.norm()),
                decay_share=probe["decay_share"],
                decay_alignment=probe["decay_alignment"],
                efficiency=eff,
                gradients=gradients,
            )
        layers = []
        probed = None if probe is None else probe["delta"]
        for b in blocks:
            sl = slice(b.start, b.stop)
            units, n_dead = dead.get(b.name, (0, 0))
            layers.append(
                LayerStat(
                    b.name,
                    b.module_type,
                    b.numel,
                    float(theta[sl].norm()),
                    float(grad[sl].norm()),
                    None if probed is None else float(probed[sl].norm()),
                    units,
                    n_dead,
                )
            )
        base.update(layers=tuple(layers), dead_rows=dead_rows)
        # Near a critical point: the other end of the spectrum (a negative eigenvalue: a saddle).
        rel = (
            grad_norm / math.sqrt(2 * abs(loss) * lam)
            if lam > 0 and loss != 0
            else (0.0 if grad_norm == 0 else math.inf)
        )
        near_critical = rel < 0.1 or (
            base["reducible"] is not None and base["reducible"] < 1e-3 * max(abs(loss), 1e-12)
        )
        if near_critical and budget_left.left() >= 2:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                low = eigenpairs(
                    cop,
                    k=1,
                    which="smallest",
                    tol=SMALLEST_TOL,
                    seed=seed + 1,
                    max_matvecs=max(min(40, budget_left.left()), 2),
                )
            budget_left.spend(low.matvecs)
            lo = float(low.eigenvalues[-1])
            escape = low.eigenvectors[:, -1].clone() if lo < 0 else None
            if escape is not None and escape[torch.argmax(escape.abs())] < 0:
                escape = -escape
            base.update(
                lambda_min=lo,
                lambda_min_converged=bool(low.converged[-1]),
                lambda_min_error=float(low.residual_norms[-1]),
                escape_direction=escape,
            )
        base.update(hvps=cop.num_matvecs, loss_eps=float(torch.finfo(op.dtype).eps))
    return done()
