"""Is this a local minimum, a saddle point, or neither? The lecture's second-order test.

At a critical point (gradient zero) the Taylor expansion is L(θ) ≈ L(θ') + ½ (θ-θ')ᵀ H (θ-θ'),
so the signs of the Hessian's eigenvalues decide: all positive, a local minimum; all negative, a
local maximum; both signs, a saddle point. Only the two ends of the spectrum are needed for the
verdict (the smallest eigenvalue is positive exactly when all are); the *minimum ratio* (the
fraction of positive eigenvalues) needs the whole spectrum: exact from the dense Hessian for
small models, estimated by stochastic Lanczos quadrature otherwise.

Tolerances (both documented in :func:`classify_critical_point`) are relative to the problem's
own scale, so the verdict does not change when the loss is multiplied by a constant, and
eigenvalues within rounding distance of zero are called zero ("flat"), never given a sign.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..curvature import dense_hessian, eigenpairs, hessian, spectral_density
from ..curvature.operator import LossFn
from ..progress import Progress, scaled, with_progress

KINDS = ("local_minimum", "local_maximum", "saddle_point", "degenerate", "not_critical")
# Default gradient tolerance: this fraction of the gradient scale sqrt(2 |L| Λ).
GRAD_RTOL = 1e-2
# Default eigenvalue tolerance: this fraction of the spectrum's spread (at least 1000 float eps).
EIG_RTOL = 1e-4
DENSE_MAX_PARAMS = 1000


@dataclass(frozen=True)
class CriticalPoint(ResultMixin):
    """The verdict on one point of the loss surface, with the numbers behind it.

    ``kind`` is one of ``"local_minimum"``, ``"local_maximum"``, ``"saddle_point"``,
    ``"degenerate"`` (a gradient of zero but flat directions where the second-order test says
    nothing, and no direction curving the other way) or ``"not_critical"`` (the gradient is not
    small: follow it). ``eigenvalues`` are the extreme eigenvalues found (both ends, sorted
    descending) with their ``residual_norms``, ``error_bounds`` and ``converged`` flags.
    ``minimum_ratio`` is the fraction of eigenvalues above ``eig_tol`` (exact when
    ``ratio_method == "dense"``, else a stochastic estimate with ``minimum_ratio_error``).
    ``escape_direction`` is the unit eigenvector (flat, float64) of the most negative
    eigenvalue when that eigenvalue is below ``-eig_tol``, else ``None``.
    """

    kind: str
    loss: float
    grad_norm: float
    grad_tol: float
    grad_scale: float
    min_eigenvalue: float
    max_eigenvalue: float
    eig_tol: float
    eigenvalues: np.ndarray
    residual_norms: np.ndarray
    error_bounds: np.ndarray
    converged: np.ndarray
    minimum_ratio: float
    minimum_ratio_error: float
    ratio_method: str
    num_positive: int | None
    num_negative: int | None
    num_zero: int | None
    escape_direction: torch.Tensor | None
    evidence: str
    num_params: int
    num_samples: int
    matvecs: int
    mode: str
    seed: int
    parameter_names: tuple[str, ...] = ()
    parameter_shapes: tuple[tuple[int, ...], ...] = ()

    _skip_in_dict = ("escape_direction", "parameter_shapes")

    @property
    def is_critical(self) -> bool:
        return self.kind != "not_critical"

    @property
    def has_negative_curvature(self) -> bool:
        return self.escape_direction is not None

    def escape_direction_by_parameter(self) -> dict[str, torch.Tensor] | None:
        """The escape direction split into ``{parameter name: tensor of its shape}``."""
        if self.escape_direction is None:
            return None
        sizes = [math.prod(s) for s in self.parameter_shapes]
        parts = torch.split(self.escape_direction, sizes)
        return {n: p.reshape(s) for n, p, s in zip(self.parameter_names, parts, self.parameter_shapes, strict=True)}

    def __str__(self) -> str:
        ratio = (f"{self.minimum_ratio:.4f} (exact)" if self.ratio_method == "dense"
                 else f"{self.minimum_ratio:.3f} +/- {self.minimum_ratio_error:.3f} (estimated)")
        lines = [f"verdict: {self.kind.replace('_', ' ')}",
                 f"loss {fmt(self.loss, 6)}, gradient norm {fmt(self.grad_norm)} (tolerance {fmt(self.grad_tol)})",
                 f"Hessian eigenvalues: smallest {fmt(self.min_eigenvalue, 6)}, largest "
                 f"{fmt(self.max_eigenvalue, 6)} (zero tolerance {fmt(self.eig_tol)})",
                 f"minimum ratio {ratio}"]
        if self.num_positive is not None:
            lines.append(f"eigenvalues: {self.num_positive} positive, {self.num_negative} negative, "
                         f"{self.num_zero} zero (of {self.num_params})")
        lines.append(f"evidence: {self.evidence}")
        return "\n".join(lines)


@dataclass(frozen=True)
class _Spectrum:
    """What the classification needs from the Hessian, however it was computed."""

    eigenvalues: np.ndarray  # extreme eigenvalues, descending
    vectors: torch.Tensor  # matching unit eigenvectors as float64 columns
    residual_norms: np.ndarray
    error_bounds: np.ndarray
    converged: np.ndarray
    all_eigenvalues: np.ndarray | None  # the full spectrum (dense path only)
    matvecs: int


def _check_tolerance(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 (an absolute threshold), got {value!r}; "
                         "leave it as None for the scale-relative default.")


def _dense_spectrum(model: nn.Module, loss_fn: LossFn, data: Any, mode: str, k: int,
                    max_params: int, reduction: str | None = None) -> _Spectrum:
    H = dense_hessian(model, loss_fn, data, mode=mode, max_params=max_params,
                      reduction=reduction).to(torch.float64)
    values, vectors = torch.linalg.eigh(H)  # ascending
    n = values.shape[0]
    ends = sorted(set(range(min(k, n))) | set(range(max(n - k, 0), n)), reverse=True)
    idx = torch.tensor(ends, device=values.device)
    picked_values, picked_vectors = values[idx], vectors[:, idx]
    residuals = torch.linalg.vector_norm(H @ picked_vectors - picked_vectors * picked_values, dim=0)
    res = residuals.cpu().numpy()
    return _Spectrum(eigenvalues=picked_values.cpu().numpy(), vectors=picked_vectors, residual_norms=res,
                     error_bounds=res.copy(), converged=np.ones(len(ends), dtype=bool),
                     all_eigenvalues=values.cpu().numpy(), matvecs=n)


def _lanczos_spectrum(op, k: int, tol: float, seed: int, progress: Progress | None,
                      max_matvecs: int | None = None) -> _Spectrum:
    eig = eigenpairs(op, k=k, which="both", tol=tol, seed=seed, progress=progress, max_matvecs=max_matvecs)
    return _Spectrum(eigenvalues=np.asarray(eig.eigenvalues), vectors=eig.eigenvectors,
                     residual_norms=np.asarray(eig.residual_norms), error_bounds=np.asarray(eig.error_bounds),
                     converged=np.asarray(eig.converged), all_eigenvalues=None, matvecs=eig.matvecs)


def default_eig_tol(eigenvalues: np.ndarray, dtype: torch.dtype) -> float:
    """``EIG_RTOL`` (or 1000 machine epsilons of the parameters' dtype, if larger) times the
    spectrum's scale max(λ_max - λ_min, |λ_max|, |λ_min|)."""
    lo, hi = float(np.min(eigenvalues)), float(np.max(eigenvalues))
    scale = max(hi - lo, abs(hi), abs(lo))
    return max(EIG_RTOL, 1000 * torch.finfo(dtype).eps) * scale


def gradient_scale(loss: float, eigenvalues: np.ndarray) -> float:
    """sqrt(2 |L| Λ) with Λ the largest |eigenvalue|: the gradient norm a quadratic bowl of the
    Hessian's largest curvature has at height |L| above its floor. It has the units of a gradient
    and scales like one when the loss is multiplied by a constant."""
    big = float(np.max(np.abs(eigenvalues)))
    return math.sqrt(2.0 * abs(loss) * big)


def _kind(grad_norm: float, grad_tol: float, lo: float, hi: float, eig_tol: float) -> str:
    if grad_norm > grad_tol:
        return "not_critical"
    if lo > eig_tol:
        return "local_minimum"
    if hi < -eig_tol:
        return "local_maximum"
    if lo < -eig_tol and hi > eig_tol:
        return "saddle_point"
    return "degenerate"


def _evidence(kind: str, grad_norm: float, grad_tol: float, lo: float, hi: float, eig_tol: float,
              counts: tuple[int, int, int] | None, n: int, unconverged: bool) -> str:
    parts = [f"gradient norm {fmt(grad_norm)} {'>' if grad_norm > grad_tol else '<='} tolerance {fmt(grad_tol)}"]
    if kind == "not_critical":
        parts.append("so this is not a critical point: the gradient itself still points downhill, "
                     "no second-order test is needed")
    parts.append(f"smallest Hessian eigenvalue {fmt(lo, 6)}, largest {fmt(hi, 6)}, "
                 f"zero tolerance +/-{fmt(eig_tol)}")
    if counts is not None:
        pos, neg, zero = counts
        parts.append(f"of all {n} eigenvalues {pos} are positive, {neg} negative, {zero} zero")
    explain = {
        "local_minimum": "every eigenvalue is positive: the loss curves up in every direction, a local minimum",
        "local_maximum": "every eigenvalue is negative: the loss curves down in every direction, a local maximum",
        "saddle_point": ("eigenvalues of both signs: the loss curves up in some directions and down in others, "
                         "a saddle point; step along the eigenvector of the smallest eigenvalue to go down"),
    }
    if kind in explain:
        parts.append(explain[kind])
    elif kind == "degenerate":
        if lo < -eig_tol:
            parts.append("no eigenvalue is clearly positive but some are negative and others are zero: "
                         "the loss still goes down along the negative-curvature eigenvector")
        elif hi > eig_tol:
            parts.append("no eigenvalue is clearly negative, but the smallest are zero within tolerance: flat "
                         "directions where the second-order test says nothing (a minimum up to second order)")
        else:
            parts.append("every eigenvalue is zero within tolerance: the surface is flat to second order here")
    if unconverged and kind != "not_critical":
        parts.append("WARNING: some extreme eigenpairs did not converge (see converged); a negative Ritz value "
                     "is still a certified direction of negative curvature, but a positive smallest value "
                     "may be an overestimate")
    return "; ".join(parts) + "."


@with_progress("critical point")
def classify_critical_point(model: nn.Module, loss_fn: LossFn, data: Any, *, grad_tol: float | None = None,
                            eig_tol: float | None = None, k: int = 5, dense: bool | None = None,
                            dense_max_params: int = DENSE_MAX_PARAMS, mode: str = "eval", tol: float = 1e-6,
                            seed: int = 0, num_probes: int = 8, lanczos_steps: int = 80,
                            max_matvecs: int | None = None, progress: Progress | bool | str | None = "auto",
                            reduction: str | None = None) -> CriticalPoint:
    """Classify the model's current parameters as a local minimum, local maximum, saddle point,
    degenerate critical point, or not a critical point at all.

    The loss is the mean of ``loss_fn(model(inputs), targets)`` over every sample of ``data``;
    its Hessian is exact (not Gauss-Newton). The model is left exactly as it was.

    Args:
        grad_tol: the point is critical when the full-data gradient norm is at most this.
            Default ``GRAD_RTOL`` (1e-2) times the gradient scale sqrt(2 |L| Λ), Λ the largest
            |eigenvalue| (see :func:`gradient_scale`). The scale measures the loss from 0, so
            near a critical point whose loss is itself ~0 (an interpolating fit) pass an
            absolute ``grad_tol``.
        eig_tol: eigenvalues with |λ| <= eig_tol count as zero (flat), never as a sign. Default
            ``EIG_RTOL`` (1e-4, or 1000 float eps of the parameters' dtype if larger) times the
            spectrum's spread max(λ_max - λ_min, |λ_max|, |λ_min|). Near a point that is only
            approximately critical, flat directions pick up curvature of order ||g|| times the
            third derivative: raise ``eig_tol`` if the gradient is not tiny.
        k: extreme eigenpairs found at each end of the spectrum.
        dense: build the dense Hessian (exact eigenvalues, exact minimum ratio). Default: when
            the model has at most ``dense_max_params`` trainable parameters.
        tol: relative accuracy of the Lanczos eigenvalues (matrix-free path).
        seed: seed of the Lanczos start vector and the density probes.
        num_probes, lanczos_steps: the stochastic Lanczos quadrature estimating the minimum
            ratio on the matrix-free path.
        max_matvecs: budget of Hessian-vector products for the extreme eigenpairs (matrix-free
            path; default that of :func:`eigenpairs`). Unconverged pairs are flagged.
        progress: called as ``progress(done, total)``.
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` combines a batch's samples, for
            loss functions without a ``.reduction`` attribute (see :func:`lossdoctor.hessian`).
    """
    check_arguments(model=model, loss_fn=loss_fn, grad_tol=grad_tol, eig_tol=eig_tol, k=k, dense=dense,
                    dense_max_params=dense_max_params, mode=mode, tol=tol, seed=seed, num_probes=num_probes,
                    lanczos_steps=lanczos_steps, max_matvecs=max_matvecs, progress=progress)
    _check_tolerance("grad_tol", grad_tol)
    _check_tolerance("eig_tol", eig_tol)
    k = int(k)
    op = hessian(model, loss_fn, data, mode=mode, reduction=reduction)
    n = op.num_params
    use_dense = n <= dense_max_params if dense is None else bool(dense)
    if use_dense and n > dense_max_params:
        raise ValueError(f"dense=True but the model has {n} trainable parameters > dense_max_params="
                         f"{dense_max_params}; raise dense_max_params or use dense=False (matrix-free).")
    total = n + 1 if use_dense else 300 + num_probes * lanczos_steps + 1
    loss, grad = op.gradient()
    grad_norm = float(torch.linalg.vector_norm(grad.to(torch.float64)))
    if not math.isfinite(grad_norm):
        raise ValueError("the gradient is not finite (NaN/Inf): check the model's parameters and the data.")
    if progress is not None:
        progress(1, total)
    if use_dense:
        spec = _dense_spectrum(model, loss_fn, data, mode, k, dense_max_params, op.reduction)
    else:
        spec = _lanczos_spectrum(op, k, tol, seed, scaled(progress, 1, total), max_matvecs)
    lo, hi = float(spec.eigenvalues[-1]), float(spec.eigenvalues[0])
    if eig_tol is None:
        ref = spec.all_eigenvalues if spec.all_eigenvalues is not None else spec.eigenvalues
        eig_tol = default_eig_tol(ref, op.dtype)
    scale = gradient_scale(loss, spec.eigenvalues)
    if grad_tol is None:
        grad_tol = GRAD_RTOL * scale
    kind = _kind(grad_norm, grad_tol, lo, hi, eig_tol)

    counts = None
    matvecs = spec.matvecs
    if spec.all_eigenvalues is not None:
        values = spec.all_eigenvalues
        counts = (int((values > eig_tol).sum()), int((values < -eig_tol).sum()),
                  int((np.abs(values) <= eig_tol).sum()))
        ratio, ratio_err, method = counts[0] / n, 0.0, "dense"
    else:
        dens = spectral_density(op, num_probes=num_probes, lanczos_steps=lanczos_steps, zero_tol=eig_tol,
                                seed=seed, progress=scaled(progress, 1 + spec.matvecs, total))
        per_probe = np.array([w[theta > eig_tol].sum() for theta, w in zip(dens.nodes, dens.weights, strict=True)])
        ratio = float(per_probe.mean())
        ratio_err = float(per_probe.std(ddof=1) / math.sqrt(len(per_probe))) if len(per_probe) > 1 else math.inf
        method = "slq"
        matvecs += dens.matvecs
    direction = None
    if lo < -eig_tol:
        direction = spec.vectors[:, -1].clone()
        direction = direction / torch.linalg.vector_norm(direction)
        # An eigenvector's sign is arbitrary: fix it (largest component positive) for reproducibility.
        if direction[torch.argmax(direction.abs())] < 0:
            direction = -direction
    if progress is not None:
        progress(total, total)
    evidence = _evidence(kind, grad_norm, grad_tol, lo, hi, eig_tol, counts, n,
                         not bool(np.all(spec.converged)))
    if method == "slq":
        evidence = evidence[:-1] + (f"; minimum ratio {ratio:.3f} +/- {ratio_err:.3f} estimated by stochastic "
                                    f"Lanczos quadrature ({num_probes} probes x {lanczos_steps} steps).")
    return CriticalPoint(
        kind=kind, loss=float(loss), grad_norm=grad_norm, grad_tol=float(grad_tol), grad_scale=scale,
        min_eigenvalue=lo, max_eigenvalue=hi, eig_tol=float(eig_tol), eigenvalues=spec.eigenvalues,
        residual_norms=spec.residual_norms, error_bounds=spec.error_bounds, converged=spec.converged,
        minimum_ratio=float(ratio), minimum_ratio_error=float(ratio_err), ratio_method=method,
        num_positive=None if counts is None else counts[0], num_negative=None if counts is None else counts[1],
        num_zero=None if counts is None else counts[2], escape_direction=direction, evidence=evidence,
        num_params=n, num_samples=op.num_samples, matvecs=matvecs, mode=mode, seed=seed,
        parameter_names=tuple(op.names), parameter_shapes=tuple(op.shapes))
