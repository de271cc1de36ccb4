"""The stall doctor: why did the loss stop going down, and what should change?

``measure`` (numbers only) -> ``rules.decide`` (pure rules) -> ``explain`` (words) ->
``trials`` (each prescription tried against continuing unchanged) -> :class:`Diagnosis`.
:class:`Monitor` runs it inside a training loop.
"""

from .diagnosis import CAUSES, Diagnosis, diagnose
from .monitor import Monitor, MonitorAction, MonitoredRun, MonitorRecord, train_monitored
from .prescriptions import NeedsCodeChange, Prescription, Trial, attached_scheduler

__all__ = [
    "CAUSES",
    "Diagnosis",
    "diagnose",
    "Monitor",
    "MonitorAction",
    "MonitorRecord",
    "MonitoredRun",
    "train_monitored",
    "NeedsCodeChange",
    "Prescription",
    "Trial",
    "attached_scheduler",
]
