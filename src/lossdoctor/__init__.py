"""lossdoctor: why did my training loss stop going down, and what should I change?"""

from .analysis.critical import CriticalPoint, classify_critical_point
from .analysis.saddle import (
    EscapeResult,
    SaddleEscapeComparison,
    compare_saddle_escapes,
    escape_saddle,
    gradient_descent_path,
)
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
from .training.lr_finder import LRRangeResult, lr_range_test
from .training.regularization import l2_penalty, weight_decay_groups
from .training.schedules import WarmupScheduler, gradual_warmup, linear_scaling_factor, warmup

__version__ = "0.1.0"

__all__ = [
    "EigenResult", "HessianOperator", "SpectralDensity", "TraceResult", "dense_hessian",
    "eigenpairs", "hessian", "spectral_density", "trace", "Problem", "load_problem",
    "LRRangeResult", "lr_range_test", "l2_penalty", "weight_decay_groups",
    "WarmupScheduler", "gradual_warmup", "linear_scaling_factor", "warmup",
    "CriticalPoint", "classify_critical_point", "EscapeResult", "SaddleEscapeComparison",
    "compare_saddle_escapes", "escape_saddle", "gradient_descent_path",
]
