"""Curvature layer by layer: each module's own Hessian block, its gradient and its step.

A *block* is the set of trainable parameters a module owns directly (a ``Linear``'s weight and
bias, a ``MultiheadAttention``'s input projection, a ``LayerNorm``'s scale and shift); a parameter
shared by several modules (tied embeddings) belongs to the first. For each block ``b``,
:func:`layer_curvature` measures the diagonal Hessian block ``H_bb`` by Lanczos from Rademacher
probes: its largest eigenvalue (a Ritz value, with its residual), its trace (Hutchinson: unbiased,
with a standard error from the probes) and its spectral density; plus the block's gradient and
weight norms and, given an optimizer, the lr-scaled sharpness ``S_b`` (``lr·λ_b`` for SGD, the
top eigenvalue of ``D_b^½ H_bb D_b^½`` for an adaptive method) against the stability limit.

*Block heterogeneity* (Zhang et al., 2024, "Why Transformers Need Adam: A Hessian Perspective")
is the mean Jensen-Shannon distance between the blocks' spectral densities: near 0 when every
block sees the same curvature (one learning rate fits all, SGD does well), large when blocks
differ (transformers: one lr cannot fit every block, an adaptive method can). The densities are
compared on a common grid in asinh(λ/τ), τ = 1e-3 of the largest |λ| over all blocks, so blocks
whose curvatures differ by orders of magnitude are told apart.

Examples:
    >>> from lossdoctor.zoo import tanh_classifier
    >>> p = tanh_classifier()
    >>> table = layer_curvature(p.model, p.loss_fn, p.train_data)
    >>> [row.name for row in table.rows]
    ['0', '2']
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import (
    check_arguments,
    check_int,
    check_optimizer,
    check_progress,
    check_seed,
)
from .._results import ResultMixin, fmt
from ..curvature.lanczos import apply64, block_lanczos_tridiagonals, rademacher, tridiagonal
from ..curvature.operator import stepped_hessian
from ..model_state import selected_parameters
from ..progress import Progress, with_progress
from ..types import Mode
from .step_size import check_lr, step_size


@dataclass(frozen=True)
class Block:
    """One module's directly owned trainable parameters, as a slice of the flat vector.

    Attributes:
        name: the module's name (``"(model)"`` for the root).
        module_type: the module's class name.
        parameter_names: the parameters it owns, as the operator names them.
        start: the block's first coordinate in the flat vector.
        stop: one past its last coordinate.

    Examples:
        >>> from torch import nn
        >>> from lossdoctor.analysis.layers import parameter_blocks
        >>> parameter_blocks(nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)))[1]
        Block(name='2', module_type='Linear', parameter_names=('2.weight', '2.bias'), start=40, stop=67)
    """

    name: str
    module_type: str
    parameter_names: tuple[str, ...]
    start: int
    stop: int

    @property
    def numel(self) -> int:
        """The block's number of coordinates."""
        return self.stop - self.start


def parameter_blocks(model: nn.Module, names: Sequence[str] | None = None) -> list[Block]:
    """The model's blocks (each module's own parameters) in module registration order.

    Args:
        model: any ``nn.Module``.
        names: the flat vector's parameters, in the order the Hessian operator lists them
            (default: every trainable parameter, each shared one once).

    Returns:
        One :class:`Block` per module owning parameters; a shared parameter belongs to the
        first module that owns it.

    Examples:
        >>> from torch import nn
        >>> from lossdoctor.analysis.layers import parameter_blocks
        >>> [(b.name, b.numel) for b in parameter_blocks(nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 3)))]
        [('0', 40), ('1', 27)]
    """
    if names is None:
        names = [n for n, _ in selected_parameters(model)]
    params = dict(model.named_parameters())
    offsets, pos = {}, 0
    for n in names:
        offsets[n] = (pos, pos + params[n].numel())
        pos += params[n].numel()
    owner: dict[str, tuple[str, str]] = {}
    by_id = {id(params[n]): n for n in names}
    for mod_name, module in model.named_modules():
        for _, p in module.named_parameters(recurse=False):
            flat = by_id.get(id(p))
            if flat is not None and flat not in owner:
                owner[flat] = (mod_name or "(model)", type(module).__name__)
    blocks: dict[str, list[str]] = {}
    kinds: dict[str, str] = {}
    for n in names:
        mod, kind = owner.get(n, (n.rsplit(".", 1)[0] if "." in n else "(model)", "Parameter"))
        blocks.setdefault(mod, []).append(n)
        kinds[mod] = kind
    out = []
    for mod, members in blocks.items():
        ranges = sorted(offsets[m] for m in members)
        # Members of one module are contiguous in the operator's order (named_parameters walks
        # modules in order); a block is described by its first and last coordinate.
        out.append(Block(mod, kinds[mod], tuple(members), ranges[0][0], ranges[-1][1]))
    return out


def block_operator(op: Any, block: Block) -> Any:
    """The diagonal block ``H_bb`` as an operator of its own.

    ``op`` restricted to the block's parameters (``op.restrict``, the one place that selects
    parameters), so a product differentiates with respect to those parameters only."""
    return op.restrict(list(block.parameter_names))


class BlockView:
    """``D^½ H_bb D^½`` (``scale`` = D over the flat parameters, sliced to the block; none: ``H_bb`` itself), in float64, on the block's coordinates."""

    def __init__(self, block_op: Any, block: Block, scale: torch.Tensor | None = None):
        self.op, self.block = block_op, block
        self.shape = (block.numel, block.numel)
        self.device = block_op.device
        self.root = (
            None if scale is None else scale[block.start : block.stop].sqrt().to(torch.float64)
        )

    def __matmul__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float64)
        if self.root is not None:
            x = self.root.to(x.device).reshape(-1, *([1] * (x.dim() - 1))) * x
        out = apply64(self.op, x)
        if self.root is not None:
            out = self.root.to(out.device).reshape(-1, *([1] * (out.dim() - 1))) * out
        return out


@dataclass(frozen=True)
class LayerRow(ResultMixin):
    """One block's row of the curvature table (see :func:`layer_curvature`).

    Attributes:
        name: the module's name.
        module_type: the module's class name.
        numel: the block's number of parameters.
        weight_norm: the norm of its parameters.
        grad_norm: the norm of its part of the full-data gradient.
        lambda_max: the largest Ritz value of ``H_bb`` over the probes (a lower bound on the
            block's largest eigenvalue).
        lambda_residual: its Lanczos residual (the distance to the nearest eigenvalue is at most
            that).
        trace: Hutchinson's estimate of tr(H_bb).
        trace_se: its standard error (NaN with one probe).
        lr_sharpness: S_b, the lr-scaled sharpness (``None`` without an optimizer or lr).
        update_ratio: ||D_b g_b|| / ||θ_b||: the relative size of one step (no momentum).

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tanh_classifier
        >>> p = tanh_classifier()
        >>> row = ld.layer_curvature(p.model, p.loss_fn, p.train_data, lr=0.1).rows[1]
        >>> row.name, row.module_type, row.numel, round(row.lr_sharpness, 3)
        ('2', 'Linear', 27, 0.072)
    """

    name: str
    module_type: str
    numel: int
    weight_norm: float
    grad_norm: float
    lambda_max: float
    lambda_residual: float
    trace: float
    trace_se: float
    lr_sharpness: float | None
    update_ratio: float | None  # ||D_b g_b|| / ||θ_b||: the relative size of one step (no momentum)


@dataclass(frozen=True)
class LayerCurvature(ResultMixin):
    """The per-block table, the block heterogeneity, and the stability limit it is read against.

    Returned by :func:`layer_curvature`.

    Attributes:
        rows: one :class:`LayerRow` per block.
        heterogeneity: the mean pairwise Jensen-Shannon distance (base 2, in [0, 1]) between
            the blocks' spectral densities.
        js_matrix: every pair's distance.
        threshold: the limit of the lr-scaled sharpness (2 for SGD), ``None`` without an
            optimizer or lr.
        optimizer: the optimizer's kind (``"sgd"``, ``"adam"``, ...), or ``None``.
        lr: the learning rate, or ``None``.
        probes: Rademacher probes per block.
        lanczos_steps: Lanczos steps per probe.
        matvecs: Hessian-vector products spent.
        mode: ``"eval"`` or ``"train"``.
        num_params: trainable parameters.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo import tanh_classifier
        >>> p = tanh_classifier()
        >>> table = ld.layer_curvature(p.model, p.loss_fn, p.train_data, lr=50.0)
        >>> table.threshold, [row.name for row in table.unstable()]  # lr 50: both blocks too sharp
        (2.0, ['2', '0'])
    """

    rows: tuple[LayerRow, ...]
    heterogeneity: float
    js_matrix: np.ndarray
    threshold: float | None
    optimizer: str | None
    lr: float | None
    probes: int
    lanczos_steps: int
    matvecs: int
    mode: str
    num_params: int

    _skip_in_dict = ("js_matrix",)

    def unstable(self) -> list[LayerRow]:
        """Blocks whose lr-scaled sharpness exceeds the stability limit, sharpest first.

        Returns:
            The rows above ``threshold`` (none without an optimizer or lr).
        """
        if self.threshold is None:
            return []
        bad = [
            r for r in self.rows if r.lr_sharpness is not None and r.lr_sharpness > self.threshold
        ]
        return sorted(bad, key=lambda r: -(r.lr_sharpness or 0.0))

    def sharpest(self) -> LayerRow:
        """The block with the largest lr-scaled sharpness (with an optimizer or lr), else λ_max.

        Returns:
            That block's row.
        """
        key = (lambda r: r.lr_sharpness) if self.threshold is not None else (lambda r: r.lambda_max)
        return max(self.rows, key=key)

    @property
    def spread(self) -> float:
        """The ratio max/min over blocks of λ_max (positive ones): how far one lr is from fitting all."""
        lams = [r.lambda_max for r in self.rows if r.lambda_max > 0]
        return max(lams) / min(lams) if lams else math.nan

    def __str__(self) -> str:
        head = (
            f"per-layer curvature ({len(self.rows)} blocks, {self.num_params} parameters, {self.mode} mode, "
            f"{self.probes} probe(s) x {self.lanczos_steps} Lanczos steps, {self.matvecs} products)"
        )
        cols = f"{'block':28s} {'type':18s} {'params':>8s} {'λ_max':>10s} {'trace':>18s} {'|grad|':>9s}"
        if self.threshold is not None:
            cols += f" {'S_b':>9s} {'step/|θ|':>9s}"
        lines = [head, cols]
        for r in self.rows:
            tr = (
                f"{fmt(r.trace)} ± {fmt(r.trace_se, 2)}"
                if math.isfinite(r.trace_se)
                else fmt(r.trace)
            )
            line = f"{r.name[:28]:28s} {r.module_type[:18]:18s} {r.numel:8d} {fmt(r.lambda_max):>10s} {tr:>18s} {fmt(r.grad_norm):>9s}"
            if self.threshold is not None:
                flag = (
                    " <- above the limit"
                    if r.lr_sharpness is not None and r.lr_sharpness > self.threshold
                    else ""
                )
                line += f" {fmt(r.lr_sharpness):>9s} {fmt(r.update_ratio):>9s}{flag}"
            lines.append(line)
        lines.append(
            f"block heterogeneity (mean Jensen-Shannon distance of the blockwise spectra): "
            f"{self.heterogeneity:.3f}; λ_max spread over blocks {fmt(self.spread)}x"
        )
        if self.threshold is not None:
            lines.append(f"stability limit of S_b ({self.optimizer}): {fmt(self.threshold, 3)}")
        return "\n".join(lines)


def _density_on(
    grid: np.ndarray, nodes: list[np.ndarray], weights: list[np.ndarray], tau: float, width: float
) -> np.ndarray:
    dens = np.zeros_like(grid)
    for theta, w in zip(nodes, weights):
        u = np.arcsinh(theta / tau)
        dens += (w[None, :] * np.exp(-0.5 * ((grid[:, None] - u[None, :]) / width) ** 2)).sum(1)
    total = dens.sum()
    return dens / total if total > 0 else dens


def js_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon distance (square root of the divergence, base 2) of two discrete densities.

    Args:
        p: a discrete density (non-negative, summing to 1).
        q: another, on the same points.

    Returns:
        The distance, in [0, 1].

    Examples:
        >>> import numpy as np
        >>> from lossdoctor.analysis.layers import js_distance
        >>> js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0])), js_distance(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
        (1.0, 0.0)
    """
    m = 0.5 * (p + q)
    with np.errstate(divide="ignore", invalid="ignore"):
        kl_p = np.where(p > 0, p * np.log2(p / m), 0.0).sum()
        kl_q = np.where(q > 0, q * np.log2(q / m), 0.0).sum()
    return float(math.sqrt(max(0.5 * (kl_p + kl_q), 0.0)))


def heterogeneity(
    nodes: list[list[np.ndarray]], weights: list[list[np.ndarray]], grid_points: int = 400
) -> tuple[float, np.ndarray]:
    """Mean pairwise Jensen-Shannon distance between blocks' spectral densities, and every pair.

    The densities are compared on a common grid in asinh(λ/τ), τ = 1e-3 of the largest |λ|.

    Args:
        nodes: per block, per probe, the Ritz values.
        weights: per block, per probe, their quadrature weights.
        grid_points: points of the common grid.

    Returns:
        ``(mean, matrix)``: the mean distance over pairs of blocks and the ``(k, k)`` matrix.

    Examples:
        >>> import numpy as np
        >>> from lossdoctor.analysis.layers import heterogeneity
        >>> one = [[np.array([1.0])], [np.array([1.0])]]
        >>> w = [[np.array([1.0])], [np.array([1.0])]]
        >>> heterogeneity(one, w)[0]  # identical blocks
        0.0
    """
    every = np.concatenate([np.abs(t) for block in nodes for t in block]) if nodes else np.zeros(1)
    top = float(every.max()) if every.size else 0.0
    k = len(nodes)
    if k < 2 or top == 0:
        return 0.0, np.zeros((k, k))
    tau = 1e-3 * top
    lo, hi = -np.arcsinh(top / tau), np.arcsinh(top / tau)
    grid = np.linspace(lo - 1, hi + 1, grid_points)
    width = 0.02 * (hi - lo)
    dens = [_density_on(grid, n, w, tau, width) for n, w in zip(nodes, weights)]
    js = np.zeros((k, k))
    for i in range(k):
        for j in range(i + 1, k):
            js[i, j] = js[j, i] = js_distance(dens[i], dens[j])
    return float(js[np.triu_indices(k, 1)].mean()), js


@with_progress("layer curvature")
def layer_curvature(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    lr: float | None = None,
    mode: Mode | None = None,
    probes: int = 2,
    lanczos_steps: int = 12,
    seed: int = 0,
    op: Any = None,
    max_blocks: int | None = None,
    progress: Progress | bool | str | None = "auto",
    params: Any = None,
) -> LayerCurvature:
    """The per-block curvature table of ``model`` on ``data`` (see the module docstring).

    Args:
        model: as for :func:`lossdoctor.hessian`; the model is left as it was.
        loss_fn: as for :func:`lossdoctor.hessian`, taken as the optimizer steps on it: a loss
            that sums its batch (a function, or a module with ``reduction="sum"``) is measured
            as that sum, so the lr-scaled sharpness and the step size are those of the step.
        data: as for :func:`lossdoctor.hessian`.
        optimizer: the optimizer training the model (for the per-block lr-scaled sharpness and
            step size; Adam's, RMSprop's and Adagrad's per-coordinate steps come from their state).
        lr: the learning rate, when no optimizer is given.
        mode: ``"eval"`` or ``"train"`` (BatchNorm on batch statistics); default (None):
            ``"eval"``, stated with a notice on BatchNorm/dropout models (see :func:`hessian`).
        probes: Rademacher probes per block; the cost is ``blocks x probes x lanczos_steps``
            Hessian-vector products (each a full product).
        lanczos_steps: Lanczos steps per probe.
        seed: the seed of the probes.
        op: an existing operator of the same model, loss and data (reused instead of built).
        max_blocks: measure only the this many largest blocks (None: all), to bound the cost.
        progress: called as ``progress(done, total)``.
        params: the table over these parameters only (tensors, names or glob patterns, modules;
            see :func:`lossdoctor.hessian`): the blocks of the modules owning them. Each block's
            ``H_bb`` is the operator restricted to that block (``op.restrict``), so it equals the
            diagonal block of the dense Hessian. ``requires_grad`` is not touched.

    Returns:
        A :class:`LayerCurvature`: one row per block, the heterogeneity and the stability limit.

    Raises:
        ValueError: a bad option or learning rate.

    Examples:
        >>> import torch, lossdoctor as ld
        >>> from lossdoctor.zoo import tanh_classifier
        >>> p = tanh_classifier()
        >>> table = ld.layer_curvature(p.model, p.loss_fn, p.train_data, optimizer=torch.optim.SGD(p.model.parameters(), lr=0.1))
        >>> table.sharpest().name, table.unstable(), round(table.spread, 1)
        ('2', [], 4.1)
    """
    check_arguments(model=model, loss_fn=loss_fn)
    if optimizer is not None:
        check_optimizer(optimizer)
    probes = check_int(probes, "probes", minimum=1)
    lanczos_steps = check_int(lanczos_steps, "lanczos_steps", minimum=1)
    seed = check_seed(seed)
    check_progress(progress)
    lr = check_lr(lr)
    if op is None:
        op = stepped_hessian(model, loss_fn, data, mode, params=params)
    elif params is not None:
        op = op.restrict(params)
    blocks = parameter_blocks(model, op.names)
    max_blocks = check_int(max_blocks, "max_blocks", minimum=1, optional=True)
    if max_blocks is not None and len(blocks) > max_blocks:
        largest = set(sorted(range(len(blocks)), key=lambda i: -blocks[i].numel)[:max_blocks])
        blocks = [b for i, b in enumerate(blocks) if i in largest]
    steps = step_size(optimizer, op.params, lr)
    _, grad = op.gradient()
    grad = grad.to(torch.float64)
    theta = op.parameter_vector().to(torch.float64)
    scale = None
    if steps is not None:
        scale = steps.scale if steps.scale is not None else torch.full_like(theta, steps.lr)
    total = sum(probes * min(lanczos_steps + 1, b.numel) for b in blocks)
    done = [0]
    rows, all_nodes, all_weights = [], [], []
    start_matvecs = op.num_matvecs
    block_matvecs = 0
    for i, block in enumerate(blocks):
        block_op = block_operator(op, block)
        view = BlockView(block_op, block)
        k = min(lanczos_steps, block.numel)
        start = rademacher(block.numel, probes, seed + 7919 * i, op.device)

        def matmul(X: torch.Tensor, view: BlockView = view) -> torch.Tensor:
            out = view @ X
            done[0] += X.shape[1]
            if callable(progress):
                progress(done[0], total)
            return out

        nodes, weights, lam, res = [], [], -math.inf, math.nan
        traces = []
        # One step more than the quadrature uses: its coupling β_k gives the Ritz residuals.
        for alpha, beta in block_lanczos_tridiagonals(matmul, start, min(k + 1, block.numel)):
            m = min(k, len(alpha))
            values, vectors = torch.linalg.eigh(tridiagonal(alpha[:m], beta[: m - 1]))
            nodes.append(values.numpy())
            weights.append((vectors[0] ** 2).numpy())
            traces.append(
                float(alpha[0]) * block.numel
            )  # vᵀHv with ||v||² = n_b: unbiased for tr H_bb
            coupling = float(beta[m - 1]) if len(beta) >= m else 0.0
            if float(values[-1]) > lam:
                lam, res = float(values[-1]), abs(coupling * float(vectors[-1, -1]))
        all_nodes.append(nodes)
        all_weights.append(weights)
        tr = float(np.mean(traces))
        tr_se = (
            float(np.std(traces, ddof=1) / math.sqrt(len(traces))) if len(traces) > 1 else math.nan
        )
        sl = slice(block.start, block.stop)
        w_norm = float(theta[sl].norm())
        g_norm = float(grad[sl].norm())
        s_b = ratio = None
        if scale is not None:
            d = scale[sl].to(torch.float64)
            uniform = bool(torch.all(d == d[0])) if d.numel() else True
            if uniform:
                s_b = float(d[0]) * lam if d.numel() else 0.0
            else:
                pre = BlockView(block_op, block, scale.to(torch.float64))
                s_b = _top_eigenvalue(
                    pre, block.numel, min(lanczos_steps, block.numel), seed + i, op.device
                )
            ratio = float((d * grad[sl].to(d.device)).norm()) / w_norm if w_norm > 0 else math.inf
        rows.append(
            LayerRow(
                block.name,
                block.module_type,
                block.numel,
                w_norm,
                g_norm,
                lam,
                res,
                tr,
                tr_se,
                s_b,
                ratio,
            )
        )
        block_matvecs += block_op.num_matvecs
    het, js = heterogeneity(all_nodes, all_weights)
    return LayerCurvature(
        rows=tuple(rows),
        heterogeneity=het,
        js_matrix=js,
        threshold=None if steps is None else steps.threshold,
        optimizer=None if steps is None else steps.kind,
        lr=None if steps is None else steps.lr,
        probes=probes,
        lanczos_steps=lanczos_steps,
        matvecs=op.num_matvecs - start_matvecs + block_matvecs,
        mode=op.mode,
        num_params=op.num_params,
    )


def _top_eigenvalue(op: Any, n: int, steps: int, seed: int, device: Any) -> float:
    start = rademacher(n, 1, seed, device)
    ((alpha, beta),) = block_lanczos_tridiagonals(lambda X: apply64(op, X), start, steps)
    return float(torch.linalg.eigvalsh(tridiagonal(alpha, beta))[-1])
