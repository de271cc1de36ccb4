"""Study: time per update and per epoch against batch size on this machine (the lecture's "a big batch costs about as much as one sample until the hardware saturates"), on the CPU and, when one is available, on a GPU."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._results import ResultMixin
from ..progress import Progress, scaled
from ..training.timing import BatchTiming, default_batch_sizes, time_batch_sizes
from ..zoo import build

LECTURE_SAMPLES = 60_000


@dataclass(frozen=True)
class BatchTimeStudy(ResultMixin):
    """The batch-time study's result: the timings on this machine (and on a GPU when one is present)."""

    model: str
    num_train: int
    threads: int
    cpu: BatchTiming
    cuda: BatchTiming | None
    lecture_updates: dict[int, int]  # the lecture's MNIST: 60,000 samples -> updates per epoch

    def __str__(self) -> str:
        return f"Batch time on {self.model}:\n{self.cpu}" + (f"\n{self.cuda}" if self.cuda else "")


def run(*, quick: bool = True, progress: Progress | None = None) -> BatchTimeStudy:
    """Run the batch-time study (``quick``: fewer batch sizes and repeats)."""
    problem = build("mnist1d-mlp")
    n = problem.info["num_train"]
    sizes = default_batch_sizes(n)
    repeats = 5 if quick else 20
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    timings = []
    for i, device in enumerate(devices):
        timings.append(
            time_batch_sizes(
                problem.model,
                problem.loss_fn,
                problem.train_data,
                sizes,
                device=device,
                repeats=repeats,
                warmup=2,
                progress=scaled(progress, i * len(sizes), len(devices) * len(sizes)),
            )
        )
    return BatchTimeStudy(
        model="MNIST-1D MLP 40-100-100-10",
        num_train=n,
        threads=torch.get_num_threads(),
        cpu=timings[0],
        cuda=timings[1] if len(timings) > 1 else None,
        lecture_updates={b: -(-LECTURE_SAMPLES // b) for b in (1, 10, 100, 1000, 10_000)},
    )
