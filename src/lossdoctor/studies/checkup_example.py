"""Study: the checkup page on one stalled model, as a user would run it on their own.

An MNIST-1D tanh MLP whose weights all start at zero sits on a saddle: the loss has not moved for
a window of steps. ``ld.checkup`` gives the page a user would get on their own model: the doctor's
verdict and its tested prescriptions first, then the evidence and the curvature behind them.
"""

from __future__ import annotations

import torch

from ..checkup import Checkup, checkup
from ..progress import Progress
from ._threads import one_thread
from .stall_cases import FAMILIES

FAMILY = "saddle/zero-tanh-mlp"
BUDGET = 60.0


def run(*, quick: bool = True, progress: Progress | None = None) -> Checkup:
    """Run the checkup on a stalled MNIST-1D model, as a user would on their own."""
    with one_thread(), torch.random.fork_rng():
        stall = next(f for f in FAMILIES if f.key == FAMILY).build(0)
        return checkup(
            stall.model,
            stall.loss_fn,
            stall.data,
            history=stall.losses,
            optimizer=stall.optimizer,
            budget=BUDGET if quick else 3 * BUDGET,
            progress=progress,
        )
