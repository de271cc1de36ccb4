"""The curvature engine: the Hessian as an operator, and what to compute from it."""

from .dense import dense_hessian
from .density import SpectralDensity, spectral_density
from .eigen import EigenResult, eigenpairs
from .operator import HessianOperator, hessian, observed_reduction
from .trace import TraceResult, trace

__all__ = [
    "HessianOperator",
    "hessian",
    "observed_reduction",
    "EigenResult",
    "eigenpairs",
    "TraceResult",
    "trace",
    "SpectralDensity",
    "spectral_density",
    "dense_hessian",
]
