"""What a Monitor has to report after a step, in the form loggers take.

Numbers by name, and the text of the diagnoses and treatments that are new since the last report.
One owner for every integration (Lightning, Hugging Face, TensorBoard)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..doctor.monitor import Monitor

PREFIX = "lossdoctor/"


def step_signals(monitor: Monitor, prefix: str = PREFIX) -> dict[str, float]:
    """The latest step's numbers.

    ``loss``, ``grad_norm`` (on the steps the monitor takes it: every ``signals_every`` steps),
    ``lambda_max`` (the last estimate, if any), ``diagnoses`` and ``treatments`` (counts so far).
    Non-finite values are left out (loggers reject them)."""
    record = monitor.record
    out: dict[str, float] = {}
    if record.losses:
        out["loss"] = record.losses[-1]
    if record.grad_norms:  # NaN (left out) on steps the monitor did not take it
        out["grad_norm"] = record.grad_norms[-1]
    if record.sharpness:
        out["lambda_max"] = record.sharpness[-1][1]
    out["diagnoses"] = float(len(monitor.diagnoses))
    out["treatments"] = float(sum(a.kind == "applied" for a in monitor.actions))
    return {prefix + k: float(v) for k, v in out.items() if math.isfinite(v)}


@dataclass
class EventCursor:
    """Hands out each diagnosis and action once.

    ``cursor.new(monitor)`` returns the text of those recorded since the last call."""

    diagnoses: int = 0
    actions: int = 0
    seen: list[str] = field(default_factory=list)

    def new(self, monitor: Monitor) -> list[tuple[str, str]]:
        """``[(tag, text)]``: ``("diagnosis", ...)`` and ``("treatment", ...)`` entries, oldest first."""
        out = [("diagnosis", str(d)) for d in monitor.diagnoses[self.diagnoses :]]  # says its step
        out += [("treatment", str(a)) for a in monitor.actions[self.actions :]]
        self.diagnoses, self.actions = len(monitor.diagnoses), len(monitor.actions)
        return out
