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
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import _interrupt
from .._checks import check_arguments
from .._results import ResultMixin, fmt
from ..curvature import dense_hessian, eigenpairs, hessian, spectral_density
from ..curvature.density import fraction_below
from ..curvature.operator import LossFn
from ..progress import Progress, as_callback, scaled, with_progress
from ..types import Data, Kind, Mode, Reduction

KINDS = (
    "local_minimum",
    "local_maximum",
    "saddle_point",
    "degenerate",
    "not_critical",
    "undetermined",
)
# Default gradient tolerance: this fraction of the gradient scale sqrt(2 |L| Λ).
GRAD_RTOL = 1e-2
# Default eigenvalue tolerance: this many machine epsilons of the parameters' dtype times ||H||
# (a float32 Hessian-vector product is exact to ~5e-7 of ||H||: 100 eps = 1.2e-5 is 20x that),
# or three times the extreme eigenvalues' error bounds if larger.
EIG_EPS = 100
DENSE_MAX_PARAMS = 1000
# The loose accuracy of the first, cheap estimate of ||H|| that lets the gradient alone decide.
SCALE_TOL = 1e-2


@dataclass(frozen=True)
class CriticalPoint(ResultMixin):
    """The verdict on one point of the loss surface, with the numbers behind it.

    Returned by :func:`classify_critical_point`.

    Attributes:
        kind: ``"local_minimum"``, ``"local_maximum"``, ``"saddle_point"``, ``"degenerate"`` (a
            gradient of zero but flat directions where the second-order test says nothing, and
            no direction curving the other way), ``"not_critical"`` (the gradient is not small:
            follow it) or ``"undetermined"`` (interrupted or unconverged: no verdict).
        loss: the mean loss over the data.
        grad_norm: the full-data gradient norm.
        grad_tol: the gradient norm at or below which the point counts as critical.
        grad_scale: the problem's gradient scale (see :func:`gradient_scale`).
        min_eigenvalue: the smallest Hessian eigenvalue found.
        max_eigenvalue: the largest Hessian eigenvalue found.
        eig_tol: eigenvalues with ``|λ| <= eig_tol`` count as zero (flat).
        eigenvalues: the extreme eigenvalues found (both ends, sorted descending).
        residual_norms: their residual norms.
        error_bounds: their error bounds (see :class:`lossdoctor.EigenResult`).
        converged: their convergence flags.
        minimum_ratio: the fraction of eigenvalues above ``eig_tol``.
        minimum_ratio_error: its error bar (0 when exact).
        ratio_method: ``"dense"`` (exact), ``"slq"`` (estimated) or ``"none"``.
        num_positive: eigenvalues above ``eig_tol`` (dense path only, else ``None``).
        num_negative: eigenvalues below ``-eig_tol`` (dense path only).
        num_zero: eigenvalues within ``eig_tol`` of zero (dense path only).
        escape_direction: the unit eigenvector (flat, float64) of the most negative eigenvalue
            when it is below ``-eig_tol``, else ``None``.
        evidence: the verdict's reasoning in words.
        num_params: trainable parameters.
        num_samples: samples in the data.
        matvecs: Hessian-vector products spent.
        mode: ``"eval"`` or ``"train"``.
        seed: the seed of the random start vectors and probes.
        parameter_names: the trainable parameters' names (to split ``escape_direction``).
        parameter_shapes: their shapes.
        eig_tol_basis: how the zero tolerance was derived.
        minimum_ratio_bias: bound on the quadrature's bias in ``minimum_ratio`` (``"slq"``).
        interrupted: Ctrl-C stopped the run: a partial result, no verdict.

    Examples:
        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle()  # L = (1 - w1*w2)^2 at (0, 0)
        >>> c = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
        >>> c.kind, c.min_eigenvalue, c.max_eigenvalue, c.minimum_ratio
        ('saddle_point', -2.0, 2.0, 0.5)
    """

    kind: Kind
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
    eig_tol_basis: str = ""  # how the zero tolerance was derived
    minimum_ratio_bias: float = 0.0  # bound on the quadrature's bias in minimum_ratio (slq)
    interrupted: bool = False

    _skip_in_dict = ("escape_direction", "parameter_shapes")

    @property
    def is_critical(self) -> bool:
        """Whether the gradient is small enough for the second-order test (``kind`` is not ``"not_critical"``)."""
        return self.kind != "not_critical"

    @property
    def has_negative_curvature(self) -> bool:
        """Whether a direction of negative curvature was found (``escape_direction`` is set)."""
        return self.escape_direction is not None

    def escape_direction_by_parameter(self) -> dict[str, torch.Tensor] | None:
        """The escape direction split into ``{parameter name: tensor of its shape}``.

        Returns:
            A dict from each trainable parameter's name to its part of ``escape_direction``, or
            ``None`` when there is no direction of negative curvature.

        Examples:
            >>> import lossdoctor as ld
            >>> from lossdoctor.zoo.lecture import lecture_saddle
            >>> p = lecture_saddle()
            >>> c = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
            >>> {name: round(abs(v.item()), 4) for name, v in c.escape_direction_by_parameter().items()}
            {'w1': 0.7071, 'w2': 0.7071}
        """
        if self.escape_direction is None:
            return None
        sizes = [math.prod(s) for s in self.parameter_shapes]
        parts = torch.split(self.escape_direction, sizes)
        return {
            n: p.reshape(s)
            for n, p, s in zip(self.parameter_names, parts, self.parameter_shapes, strict=True)
        }

    def __str__(self) -> str:
        if self.ratio_method == "dense":
            ratio = f"{self.minimum_ratio:.4f} (exact)"
        elif self.ratio_method == "slq":
            ratio = (
                f"{self.minimum_ratio:.3f} +/- {self.minimum_ratio_error:.3f} (estimated; quadrature bias "
                f"within +/- {self.minimum_ratio_bias:.3f})"
            )
        else:
            ratio = "not computed"
        lines = [
            f"verdict: {self.kind.replace('_', ' ')} ({self.mode} mode)",
            f"loss {fmt(self.loss, 6)}, gradient norm {fmt(self.grad_norm)} (tolerance {fmt(self.grad_tol)})",
            f"Hessian eigenvalues: smallest {fmt(self.min_eigenvalue, 6)}, largest "
            f"{fmt(self.max_eigenvalue, 6)} (zero tolerance {fmt(self.eig_tol)})",
            f"minimum ratio {ratio}",
        ]
        if self.num_positive is not None:
            lines.append(
                f"eigenvalues: {self.num_positive} positive, {self.num_negative} negative, "
                f"{self.num_zero} zero (of {self.num_params})"
            )
        lines.append(f"evidence: {self.evidence}")
        if self.interrupted:
            lines.append("INTERRUPTED: partial result, no verdict")
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
    interrupted: bool = False


def _check_tolerance(name: str, value: float | None) -> None:
    if value is None:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(
            f"{name} must be a finite number >= 0 (an absolute threshold), got {value!r}; "
            "leave it as None for the scale-relative default."
        )


def _dense_spectrum(
    model: nn.Module,
    loss_fn: LossFn,
    data: Any,
    mode: Mode,
    k: int,
    max_params: int,
    reduction: Reduction | None = None,
    params: Any = None,
) -> _Spectrum:
    H = dense_hessian(
        model, loss_fn, data, mode=mode, max_params=max_params, reduction=reduction, params=params
    ).to(torch.float64)
    values, vectors = torch.linalg.eigh(H)  # ascending
    n = values.shape[0]
    ends = sorted(set(range(min(k, n))) | set(range(max(n - k, 0), n)), reverse=True)
    idx = torch.tensor(ends, device=values.device)
    picked_values, picked_vectors = values[idx], vectors[:, idx]
    residuals = torch.linalg.vector_norm(H @ picked_vectors - picked_vectors * picked_values, dim=0)
    res = residuals.cpu().numpy()
    return _Spectrum(
        eigenvalues=picked_values.cpu().numpy(),
        vectors=picked_vectors,
        residual_norms=res,
        error_bounds=res.copy(),
        converged=np.ones(len(ends), dtype=bool),
        all_eigenvalues=values.cpu().numpy(),
        matvecs=n,
    )


def _lanczos_spectrum(
    op, k: int, tol: float, seed: int, progress: Progress | None, max_matvecs: int | None = None
) -> _Spectrum:
    eig = eigenpairs(
        op, k=k, which="both", tol=tol, seed=seed, progress=progress, max_matvecs=max_matvecs
    )
    return _Spectrum(
        eigenvalues=np.asarray(eig.eigenvalues),
        vectors=eig.eigenvectors,
        residual_norms=np.asarray(eig.residual_norms),
        error_bounds=np.asarray(eig.error_bounds),
        converged=np.asarray(eig.converged),
        all_eigenvalues=None,
        matvecs=eig.matvecs,
        interrupted=eig.interrupted,
    )


def default_eig_tol(
    eigenvalues: np.ndarray, dtype: torch.dtype, error_bounds: np.ndarray | None = None
) -> tuple[float, str]:
    """The tolerance below which a Hessian eigenvalue counts as zero, and how it was derived.

    ``EIG_EPS`` (100) machine epsilons of the parameters' dtype times ||H|| = max |λ| (what
    rounding in the products can move an eigenvalue by, with a 20x margin), or three times the
    largest error bound of the extreme eigenvalues if that is larger (an eigenvalue within its
    error of zero has no known sign). A positive definite but ill-conditioned minimum (condition
    9,000) is a minimum: its smallest eigenvalue is far above rounding.

    Args:
        eigenvalues: the extreme eigenvalues found.
        dtype: the parameters' dtype.
        error_bounds: the eigenvalues' error bounds, if known.

    Returns:
        ``(eig_tol, basis)``: the tolerance and a sentence saying how it was derived.

    Examples:
        >>> import numpy as np, torch
        >>> from lossdoctor.analysis.critical import default_eig_tol
        >>> tol, basis = default_eig_tol(np.array([2.0, -2.0]), torch.float32)
        >>> f"{tol:.3g}", basis
        ('2.38e-05', '100 x torch.float32 eps (1.2e-07) x ||H|| (2)')
    """
    norm = float(np.max(np.abs(eigenvalues)))
    eps = torch.finfo(dtype).eps
    rounding = EIG_EPS * eps * norm
    accuracy = (
        3.0 * float(np.max(error_bounds)) if error_bounds is not None and len(error_bounds) else 0.0
    )
    if accuracy > rounding:
        return accuracy, (
            f"3 x the extreme eigenvalues' largest error bound ({fmt(accuracy / 3)}), above "
            f"{EIG_EPS} {dtype} eps x ||H|| = {fmt(rounding)}"
        )
    return rounding, f"{EIG_EPS} x {dtype} eps ({eps:.2g}) x ||H|| ({fmt(norm)})"


def gradient_scale(loss: float, eigenvalues: np.ndarray) -> float:
    """The problem's gradient scale sqrt(2 |L| Λ), Λ the largest |eigenvalue|.

    The gradient norm a quadratic bowl of the Hessian's largest curvature has at height |L|
    above its floor. It has the units of a gradient and scales like one when the loss is
    multiplied by a constant.

    Args:
        loss: the loss L.
        eigenvalues: the Hessian's extreme eigenvalues.

    Returns:
        sqrt(2 |L| max |eigenvalues|).

    Examples:
        >>> import numpy as np
        >>> from lossdoctor.analysis.critical import gradient_scale
        >>> gradient_scale(0.5, np.array([4.0, -1.0]))
        2.0
    """
    big = float(np.max(np.abs(eigenvalues)))
    return math.sqrt(2.0 * abs(loss) * big)


def _kind(grad_norm: float, grad_tol: float, lo: float, hi: float, eig_tol: float) -> Kind:
    if grad_norm > grad_tol:
        return "not_critical"
    if lo > eig_tol:
        return "local_minimum"
    if hi < -eig_tol:
        return "local_maximum"
    if lo < -eig_tol and hi > eig_tol:
        return "saddle_point"
    return "degenerate"


def _evidence(
    kind: str,
    grad_norm: float,
    grad_tol: float,
    lo: float,
    hi: float,
    eig_tol: float,
    counts: tuple[int, int, int] | None,
    n: int,
    unconverged: bool,
) -> str:
    parts = [
        f"gradient norm {fmt(grad_norm)} {'>' if grad_norm > grad_tol else '<='} tolerance {fmt(grad_tol)}"
    ]
    if kind == "not_critical":
        parts.append(
            "so this is not a critical point: the gradient itself still points downhill, "
            "no second-order test is needed"
        )
    parts.append(
        f"smallest Hessian eigenvalue {fmt(lo, 6)}, largest {fmt(hi, 6)}, "
        f"zero tolerance +/-{fmt(eig_tol)}"
    )
    if counts is not None:
        pos, neg, zero = counts
        parts.append(f"of all {n} eigenvalues {pos} are positive, {neg} negative, {zero} zero")
    explain = {
        "local_minimum": "every eigenvalue is positive: the loss curves up in every direction, a local minimum",
        "local_maximum": "every eigenvalue is negative: the loss curves down in every direction, a local maximum",
        "saddle_point": (
            "eigenvalues of both signs: the loss curves up in some directions and down in others, "
            "a saddle point; step along the eigenvector of the smallest eigenvalue to go down"
        ),
    }
    if kind in explain:
        parts.append(explain[kind])
    elif kind == "degenerate":
        if lo < -eig_tol:
            parts.append(
                "no eigenvalue is clearly positive but some are negative and others are zero: "
                "the loss still goes down along the negative-curvature eigenvector"
            )
        elif hi > eig_tol:
            parts.append(
                "no eigenvalue is clearly negative, but the smallest are zero within tolerance: flat "
                "directions where the second-order test says nothing (a minimum up to second order)"
            )
        else:
            parts.append(
                "every eigenvalue is zero within tolerance: the surface is flat to second order here"
            )
    if unconverged and kind != "not_critical":
        parts.append(
            "WARNING: some extreme eigenpairs did not converge (see converged); a negative Ritz value "
            "is still a certified direction of negative curvature, but a positive smallest value "
            "may be an overestimate"
        )
    return "; ".join(parts) + "."


@with_progress("critical point")
def classify_critical_point(  # noqa: C901 - checked options, then the documented steps in order
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    grad_tol: float | None = None,
    eig_tol: float | None = None,
    k: int = 5,
    dense: bool | None = None,
    dense_max_params: int = DENSE_MAX_PARAMS,
    mode: Mode | None = None,
    tol: float = 1e-6,
    seed: int = 0,
    num_probes: int = 8,
    lanczos_steps: int = 80,
    max_matvecs: int | None = None,
    progress: Progress | bool | str | None = "auto",
    reduction: Reduction | None = None,
    params: Any = None,
) -> CriticalPoint:
    """Classify the model's current parameters: local minimum, maximum, saddle, or neither.

    The lecture's second-order test: at a point where the gradient is (nearly) zero, the signs
    of the Hessian's eigenvalues decide. The verdict is a local minimum, a local maximum, a
    saddle point, a degenerate critical point, or not a critical point at all. The loss is the
    mean of ``loss_fn(model(inputs), targets)`` over every sample of ``data``; its Hessian is
    exact (not Gauss-Newton). The model is left exactly as it was.

    Args:
        model: any ``nn.Module``; its trainable parameters are the point classified.
        loss_fn: the loss, as for :func:`lossdoctor.hessian` (``None``: the model's own
            ``outputs.loss``).
        data: a DataLoader, a list of batches or one batch, as for :func:`lossdoctor.hessian`.
        grad_tol: the point is critical when the full-data gradient norm is at most this.
            Default ``GRAD_RTOL`` (1e-2) times the gradient scale sqrt(2 |L| Λ), Λ the largest
            |eigenvalue| (see :func:`gradient_scale`). The scale measures the loss from 0, so
            near a critical point whose loss is itself ~0 (an interpolating fit) pass an
            absolute ``grad_tol``.
        eig_tol: eigenvalues with |λ| <= eig_tol count as zero (flat), never as a sign. Default
            (see :func:`default_eig_tol`, stated in ``eig_tol_basis``): 100 machine epsilons of
            the parameters' dtype times ||H||, or three times the extreme eigenvalues' error
            bounds if larger. Near a point that is only approximately critical, flat directions
            pick up curvature of order ||g|| times the third derivative: raise ``eig_tol`` if
            the gradient is not tiny.
        k: extreme eigenpairs found at each end of the spectrum.
        dense: build the dense Hessian (exact eigenvalues, exact minimum ratio). Default: when
            the model has at most ``dense_max_params`` trainable parameters.
        tol: relative accuracy of the Lanczos eigenvalues (matrix-free path).
        seed: seed of the Lanczos start vector and the density probes.
        dense_max_params: the largest model ``dense=None`` builds the dense Hessian for.
        mode: ``"eval"`` (default) or ``"train"``.
        num_probes: probes of the stochastic Lanczos quadrature estimating the minimum ratio on
            the matrix-free path.
        lanczos_steps: Lanczos steps per probe of that quadrature.
        max_matvecs: budget of Hessian-vector products for the extreme eigenpairs (matrix-free
            path; default that of :func:`eigenpairs`). Unconverged pairs are flagged.
        progress: called as ``progress(done, total)``.
        reduction: ``"mean"`` or ``"sum"``: how ``loss_fn`` combines a batch's samples, for
            loss functions without a ``.reduction`` attribute (see :func:`lossdoctor.hessian`).
        params: classify with respect to these parameters only (tensors, names or glob
            patterns, modules; see :func:`lossdoctor.hessian`), the others held fixed: the
            gradient, the eigenvalues and the escape direction are those of that subspace
            (``parameter_names`` lists them). ``requires_grad`` is not touched.

    Returns:
        The verdict (``kind``) with the gradient norm, the extreme eigenvalues, the minimum
        ratio and the escape direction behind it. Ctrl-C returns a partial result flagged
        ``interrupted``, never a verdict.

    Raises:
        ValueError: a bad tolerance or option, or ``dense=True`` for a model above
            ``dense_max_params``.

    Examples:
        The lecture's toy L = (1 - w1*w2)^2: a saddle at the origin, and a degenerate minimum
        (a whole valley w1*w2 = 1 of minima, one flat direction) at (1, 1):

        >>> import lossdoctor as ld
        >>> from lossdoctor.zoo.lecture import lecture_saddle
        >>> p = lecture_saddle(0.0, 0.0)
        >>> ld.classify_critical_point(p.model, p.loss_fn, p.train_data).kind
        'saddle_point'
        >>> q = lecture_saddle(1.0, 1.0)
        >>> ld.classify_critical_point(q.model, q.loss_fn, q.train_data).kind
        'degenerate'
    """
    check_arguments(
        model=model,
        loss_fn=loss_fn,
        grad_tol=grad_tol,
        eig_tol=eig_tol,
        k=k,
        dense=dense,
        dense_max_params=dense_max_params,
        mode=mode,
        tol=tol,
        seed=seed,
        num_probes=num_probes,
        lanczos_steps=lanczos_steps,
        max_matvecs=max_matvecs,
        progress=progress,
    )
    _check_tolerance("grad_tol", grad_tol)
    _check_tolerance("eig_tol", eig_tol)
    k = int(k)
    op = hessian(model, loss_fn, data, mode=mode, reduction=reduction, params=params)
    n = op.num_params
    use_dense = n <= dense_max_params if dense is None else bool(dense)
    if use_dense and n > dense_max_params:
        raise ValueError(
            f"dense=True but the model has {n} trainable parameters > dense_max_params="
            f"{dense_max_params}; raise dense_max_params or use dense=False (matrix-free)."
        )
    total = n + 1 if use_dense else 300 + num_probes * lanczos_steps + 1
    loss, grad = op.gradient()  # a Ctrl-C here: nothing finished, it propagates
    grad_norm = float(torch.linalg.vector_norm(grad.to(torch.float64)))
    if not math.isfinite(grad_norm):
        raise ValueError(
            "the gradient is not finite (NaN/Inf): check the model's parameters and the data."
        )
    callback = as_callback(progress)
    if callback is not None:
        callback(1, total)
    common: dict[str, Any] = dict(
        loss=float(loss),
        grad_norm=grad_norm,
        num_params=n,
        num_samples=op.num_samples,
        mode=op.mode,
        seed=seed,
        parameter_names=tuple(op.names),
        parameter_shapes=tuple(op.shapes),
    )
    spent = 0
    spec = None
    try:
        if not use_dense:
            # The gradient alone may decide "not critical": with an absolute grad_tol at once,
            # otherwise from a cheap, loose estimate of ||H|| (the default tolerance scales with
            # sqrt(||H||); its error bound is added so the estimate only errs towards "critical").
            norm_est = None
            if grad_tol is None:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    rough = eigenpairs(
                        op,
                        k=1,
                        which="largest_magnitude",
                        tol=SCALE_TOL,
                        seed=seed,
                        progress=scaled(callback, 1, total),
                    )
                spent += rough.matvecs
                if _interrupt.was_interrupted(rough):
                    raise KeyboardInterrupt
                norm_est = float(np.abs(rough.eigenvalues).max()) + float(
                    np.max(rough.error_bounds)
                )
                upper_tol = GRAD_RTOL * gradient_scale(loss, np.array([norm_est]))
            else:
                upper_tol = grad_tol
            if grad_norm > upper_tol:
                return _gradient_decides(
                    common, grad_norm, float(upper_tol), norm_est, spent, grad_tol is None
                )
        if use_dense:
            spec = _dense_spectrum(
                model, loss_fn, data, op.mode, k, dense_max_params, op.reduction, op.params
            )
        else:
            spec = _lanczos_spectrum(
                op, k, tol, seed, scaled(callback, 1 + spent, total), max_matvecs
            )
            if spec.interrupted:
                spent += spec.matvecs
                raise KeyboardInterrupt
        lo, hi = float(spec.eigenvalues[-1]), float(spec.eigenvalues[0])
        if eig_tol is None:
            ref = spec.all_eigenvalues if spec.all_eigenvalues is not None else spec.eigenvalues
            eig_tol, basis = default_eig_tol(
                ref, op.dtype, None if use_dense else spec.error_bounds
            )
        else:
            basis = "given (absolute)"
        scale = gradient_scale(loss, spec.eigenvalues)
        if grad_tol is None:
            grad_tol = GRAD_RTOL * scale
        kind = _kind(grad_norm, grad_tol, lo, hi, eig_tol)

        counts = None
        matvecs = spent + spec.matvecs
        bias = 0.0
        if spec.all_eigenvalues is not None:
            values = spec.all_eigenvalues
            counts = (
                int((values > eig_tol).sum()),
                int((values < -eig_tol).sum()),
                int((np.abs(values) <= eig_tol).sum()),
            )
            ratio, ratio_err, method = counts[0] / n, 0.0, "dense"
        else:
            dens = spectral_density(
                op,
                num_probes=num_probes,
                lanczos_steps=lanczos_steps,
                zero_tol=eig_tol,
                seed=seed,
                progress=scaled(callback, 1 + matvecs, total),
            )
            # The fraction above +eig_tol, bracketed per probe by the Gauss quadrature (its bias
            # is part of the error bar; the probes' spread alone was 0.416 +/- 0.018 for 0.330).
            below, ratio_err, bias = fraction_below(
                dens.nodes, dens.weights, dens.residuals, eig_tol
            )
            ratio = 1.0 - below
            method = "slq"
            matvecs += dens.matvecs
    except KeyboardInterrupt:
        _interrupt.keep_partial()  # re-raises inside an analysis that cannot use a part
        return _undetermined(common, grad_norm, grad_tol, spec, spent)
    direction = None
    if lo < -eig_tol:
        direction = spec.vectors[:, -1].clone()
        direction = direction / torch.linalg.vector_norm(direction)
        # An eigenvector's sign is arbitrary: fix it (largest component positive) for reproducibility.
        if direction[torch.argmax(direction.abs())] < 0:
            direction = -direction
    if callback is not None:
        callback(total, total)
    evidence = _evidence(
        kind, grad_norm, grad_tol, lo, hi, eig_tol, counts, n, not bool(np.all(spec.converged))
    )
    if method == "slq":
        evidence = evidence[:-1] + (
            f"; minimum ratio {ratio:.3f} +/- {ratio_err:.3f} estimated by stochastic "
            f"Lanczos quadrature ({num_probes} probes x {lanczos_steps} steps; the "
            f"quadrature's bias is within +/- {bias:.3f} and included in the +/-)."
        )
    return CriticalPoint(
        kind=kind,
        grad_tol=float(grad_tol),
        grad_scale=scale,
        min_eigenvalue=lo,
        max_eigenvalue=hi,
        eig_tol=float(eig_tol),
        eigenvalues=spec.eigenvalues,
        residual_norms=spec.residual_norms,
        error_bounds=spec.error_bounds,
        converged=spec.converged,
        minimum_ratio=float(ratio),
        minimum_ratio_error=float(ratio_err),
        ratio_method=method,
        num_positive=None if counts is None else counts[0],
        num_negative=None if counts is None else counts[1],
        num_zero=None if counts is None else counts[2],
        escape_direction=direction,
        evidence=evidence,
        matvecs=matvecs,
        eig_tol_basis=basis,
        minimum_ratio_bias=float(bias),
        **common,
    )


def _empty_spectrum_fields() -> dict:
    empty = np.zeros(0)
    return dict(
        min_eigenvalue=math.nan,
        max_eigenvalue=math.nan,
        eig_tol=math.nan,
        eigenvalues=empty,
        residual_norms=empty,
        error_bounds=empty,
        converged=np.zeros(0, dtype=bool),
        minimum_ratio=math.nan,
        minimum_ratio_error=math.nan,
        ratio_method="none",
        num_positive=None,
        num_negative=None,
        num_zero=None,
        escape_direction=None,
    )


def _gradient_decides(
    common: dict,
    grad_norm: float,
    grad_tol: float,
    norm_est: float | None,
    matvecs: int,
    relative: bool,
) -> CriticalPoint:
    """Build the "not critical" result from the gradient alone: no spectrum, no minimum ratio."""
    if relative:
        why = (
            f"gradient norm {fmt(grad_norm)} > tolerance {fmt(grad_tol)} ({GRAD_RTOL:g} x sqrt(2 |L| ||H||), "
            f"||H|| <= {fmt(norm_est)} from {matvecs} Hessian-vector products)"
        )
    else:
        why = f"gradient norm {fmt(grad_norm)} > tolerance {fmt(grad_tol)}"
    evidence = (
        why + ", so this is not a critical point: the gradient itself still points downhill; the "
        "second-order test was skipped (its spectrum would not change the verdict)."
    )
    scale = grad_tol / GRAD_RTOL if relative else math.nan
    return CriticalPoint(
        kind="not_critical",
        grad_tol=grad_tol,
        grad_scale=scale,
        evidence=evidence,
        matvecs=matvecs,
        eig_tol_basis="not needed",
        **_empty_spectrum_fields(),
        **common,
    )


def _undetermined(
    common: dict, grad_norm: float, grad_tol: float | None, spec: _Spectrum | None, matvecs: int
) -> CriticalPoint:
    """A Ctrl-C before the verdict: what was measured, flagged, and no verdict."""
    fields = _empty_spectrum_fields()
    if spec is not None and not spec.interrupted and len(spec.eigenvalues):
        fields.update(
            min_eigenvalue=float(spec.eigenvalues[-1]),
            max_eigenvalue=float(spec.eigenvalues[0]),
            eigenvalues=spec.eigenvalues,
            residual_norms=spec.residual_norms,
            error_bounds=spec.error_bounds,
            converged=spec.converged,
        )
        matvecs += spec.matvecs
    evidence = (
        f"gradient norm {fmt(grad_norm)}; interrupted before the second-order test finished: no "
        "verdict (a partial spectrum can miss the eigenvalue that decides it)."
    )
    return CriticalPoint(
        kind="undetermined",
        grad_tol=math.nan if grad_tol is None else float(grad_tol),
        grad_scale=math.nan,
        evidence=evidence,
        matvecs=matvecs,
        eig_tol_basis="",
        interrupted=True,
        **fields,
        **common,
    )
