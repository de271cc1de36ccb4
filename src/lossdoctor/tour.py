"""The tour: every study of the lecture on the embedded default, written to one HTML report.

Each section's result is saved to ``results.json`` (and the page rewritten) as soon as it is
finished, so an interrupted tour keeps every section it completed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .progress import Progress
from .report import batch_sweep as batch_sweep_report
from .report import batch_time as batch_time_report
from .report import critical_regression as critical_regression_report
from .report import critical_toy as critical_toy_report
from .report import doctor_validation as doctor_validation_report
from .report import flat_sharp as flat_sharp_report
from .report import flat_surface as flat_surface_report
from .report import l2_smoothing as l2_report
from .report import layers as layers_report
from .report import lr_range as lr_range_report
from .report import noise_scale as noise_scale_report
from .report import rare_minima as rare_minima_report
from .report import spectrum as spectrum_report
from .report import valley as valley_report
from .report import warmup as warmup_report
from .report.html import Section, write_page
from .studies import batch_sweep as batch_sweep_study
from .studies import batch_time as batch_time_study
from .studies import critical_regression as critical_regression_study
from .studies import critical_toy as critical_toy_study
from .studies import doctor_validation as doctor_validation_study
from .studies import flat_sharp as flat_sharp_study
from .studies import flat_surface as flat_surface_study
from .studies import l2_smoothing as l2_study
from .studies import layers as layers_study
from .studies import lr_range as lr_range_study
from .studies import noise_scale as noise_scale_study
from .studies import rare_minima as rare_minima_study
from .studies import spectrum as spectrum_study
from .studies import valley as valley_study
from .studies import warmup as warmup_study


@dataclass(frozen=True)
class TourSection:
    key: str
    title: str
    run: Callable[..., Any]  # run(quick=..., progress=...) -> result with to_dict()
    render: Callable[[Any, Path], Section]


SECTIONS: list[TourSection] = [
    TourSection("spectrum", "Hessian spectrum", spectrum_study.run, spectrum_report.render),
    TourSection("critical-toy", "Critical points: the lecture's saddle", critical_toy_study.run,
                critical_toy_report.render),
    TourSection("critical-regression", "Critical points: the homework regression", critical_regression_study.run,
                critical_regression_report.render),
    TourSection("rare-minima", "Critical points: local minima are rare", rare_minima_study.run,
                rare_minima_report.render),
    TourSection("valley", "The loss stalls: oscillating in an elongated valley", valley_study.run,
                valley_report.render),
    TourSection("flat-surface", "The flat surface: MSE vs cross-entropy", flat_surface_study.run,
                flat_surface_report.render),
    TourSection("layers", "Curvature layer by layer", layers_study.run, layers_report.render),
    TourSection("doctor-validation", "The stall doctor on held-out runs: causes and fixes", doctor_validation_study.run,
                doctor_validation_report.render),
    TourSection("batch-time", "Batch size: time", batch_time_study.run, batch_time_report.render),
    TourSection("batch-sweep", "Batch size: training, testing, sharpness", batch_sweep_study.run,
                batch_sweep_report.render),
    TourSection("flat-sharp", "Batch size: flat vs. sharp minima", flat_sharp_study.run, flat_sharp_report.render),
    TourSection("noise-scale", "Batch size: gradient noise scale", noise_scale_study.run, noise_scale_report.render),
    TourSection("l2", "L2 regularization without biases", l2_study.run, l2_report.render),
    TourSection("warmup", "Learning-rate warm-up", warmup_study.run, warmup_report.render),
    TourSection("lr-range", "Learning-rate range test", lr_range_study.run, lr_range_report.render),
]

INTRO = ("Why did the loss stop going down? Each section runs one study of the lecture on built-in "
         "MNIST-1D problems and toys, generated offline; every number below was measured in this run.")


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def run_tour(out_dir: str | Path, *, quick: bool = True, only: list[str] | None = None,
             progress_for: Callable[[str], Progress | None] | None = None) -> Path:
    """Run the sections (all, or those named in ``only``) and write ``out_dir/index.html`` and
    ``out_dir/results.json``. ``progress_for(title)`` gives each section a progress callback."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = SECTIONS if not only else [s for s in SECTIONS if s.key in only]
    unknown = set(only or ()) - {s.key for s in SECTIONS}
    if unknown:
        raise ValueError(f"unknown tour sections {sorted(unknown)}; available: {[s.key for s in SECTIONS]}.")
    results: dict[str, Any] = {}
    rendered: list[Section] = []
    page = out / "index.html"
    for section in chosen:
        progress = progress_for(section.title) if progress_for else None
        result = section.run(quick=quick, progress=progress)
        results[section.key] = result.to_dict()
        rendered.append(section.render(result, out))
        _write_json(out / "results.json", results)
        page = write_page(out, rendered, title="lossdoctor tour", intro=INTRO)
    return page
