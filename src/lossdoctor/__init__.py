"""lossdoctor: why did my training loss stop going down, and what should I change?"""

from .curvature import (
    EigenResult,
    HessianOperator,
    SpectralDensity,
    TraceResult,
    dense_hessian,
    eigenpairs,
    hessian,
    spectral_density,
    trace,
)
from .problem import Problem, load_problem

__version__ = "0.1.0"

__all__ = [
    "EigenResult", "HessianOperator", "SpectralDensity", "TraceResult", "dense_hessian",
    "eigenpairs", "hessian", "spectral_density", "trace", "Problem", "load_problem",
]
