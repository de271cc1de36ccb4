"""lossdoctor: why did my training loss stop going down, and what should I change?"""

import logging as _logging

from ._results import set_html_renderer
from ._version import __version__
from .analysis.critical import CriticalPoint, classify_critical_point
from .analysis.landscape import Curve, Landscape, interpolate, landscape
from .analysis.layers import LayerCurvature, LayerRow, layer_curvature
from .analysis.noise_scale import NoiseScale, gradient_noise_scale
from .analysis.saddle import (
    EscapeResult,
    SaddleEscapeComparison,
    compare_saddle_escapes,
    escape_saddle,
    gradient_descent_path,
)
from .analysis.sharpness import EpsilonSharpness, Sharpness, sharpness
from .checkup import Checkup, CheckupSection, checkup
from .curvature import (
    EigenResult,
    HessianOperator,
    SpectralDensity,
    TraceResult,
    dense_hessian,
    eigenpairs,
    hessian,
    observed_reduction,
    spectral_density,
    trace,
)
from .data import Batches, loss_on_batch
from .doctor import (
    CAUSES,
    Diagnosis,
    Monitor,
    MonitorAction,
    MonitoredRun,
    MonitorRecord,
    NeedsCodeChange,
    Prescription,
    Trial,
    attached_scheduler,
    diagnose,
    train_monitored,
)
from .problem import Problem, load_problem
from .training.lr_finder import LRRangeResult, lr_range_test
from .training.regularization import l2_penalty, weight_decay_groups
from .training.schedules import WarmupScheduler, gradual_warmup, linear_scaling_factor, warmup
from .training.sweep import SweepResult, SweepRun, batch_size_sweep
from .training.timing import BatchTiming, time_batch_sizes


def _notebook_html(result: object) -> str:
    """A result's notebook HTML.

    Drawing is the report's job, and the report sits above every result's layer, so the façade wires
    it in (imported only when a notebook shows a result)."""
    from .report.notebook import render_html

    return render_html(result)


set_html_renderer(_notebook_html)

# A library logs; the application decides where it goes (no stderr fallback printing twice).
_logging.getLogger("lossdoctor").addHandler(_logging.NullHandler())

__all__ = [
    "Curve",
    "Landscape",
    "interpolate",
    "landscape",
    "NoiseScale",
    "gradient_noise_scale",
    "EpsilonSharpness",
    "Sharpness",
    "sharpness",
    "SweepResult",
    "SweepRun",
    "batch_size_sweep",
    "BatchTiming",
    "time_batch_sizes",
    "EigenResult",
    "HessianOperator",
    "SpectralDensity",
    "TraceResult",
    "dense_hessian",
    "eigenpairs",
    "hessian",
    "observed_reduction",
    "spectral_density",
    "trace",
    "Problem",
    "load_problem",
    "LRRangeResult",
    "lr_range_test",
    "l2_penalty",
    "weight_decay_groups",
    "WarmupScheduler",
    "gradual_warmup",
    "linear_scaling_factor",
    "warmup",
    "CriticalPoint",
    "classify_critical_point",
    "EscapeResult",
    "SaddleEscapeComparison",
    "compare_saddle_escapes",
    "escape_saddle",
    "gradient_descent_path",
    "CAUSES",
    "Diagnosis",
    "diagnose",
    "Prescription",
    "Trial",
    "NeedsCodeChange",
    "attached_scheduler",
    "Monitor",
    "MonitorAction",
    "MonitorRecord",
    "MonitoredRun",
    "train_monitored",
    "LayerCurvature",
    "LayerRow",
    "layer_curvature",
    "Checkup",
    "CheckupSection",
    "checkup",
    "Batches",
    "loss_on_batch",
    "__version__",
]
