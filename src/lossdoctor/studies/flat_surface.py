"""Study: the flat surface.

Mean squared error on softmax outputs against cross-entropy, for the same classifier (the lecture's
reason to change the loss).

Two pictures of one fact. The error surface of one sample over two logits (z1, z2) with z3 = 0
and target class 1: where the softmax is confidently wrong, MSE is flat (its gradient carries a
factor p(1 - p) that vanishes as the softmax saturates) while cross-entropy keeps a slope. And a
training run: a linear softmax classifier on three Gaussian blobs, started confidently wrong
(weights pointing away from the class means), trained by full-batch gradient descent with the
same learning rate under each loss. MSE sits on a plateau, cross-entropy walks off it; the doctor
is asked about the MSE run.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._results import ResultMixin, fmt
from ..doctor.diagnosis import Diagnosis, diagnose
from ..progress import Progress
from ._threads import one_thread

CLASSES = 3
GRID = 121
SPAN = 10.0
LR = 0.5
INIT_SCALE = 6.0


def softmax_mse(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the squared error between softmax(logits) and the one-hot target."""
    p = torch.softmax(logits, dim=-1)
    onehot = F.one_hot(targets, logits.shape[-1]).to(p.dtype)
    return ((p - onehot) ** 2).sum(-1).mean()


def surfaces(span: float = SPAN, grid: int = GRID) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(axis, MSE, CE) over logits (z1, z2) in [-span, span]², z3 = 0, target class 1."""
    axis = torch.linspace(-span, span, grid, dtype=torch.float64)
    z1, z2 = torch.meshgrid(axis, axis, indexing="xy")
    logits = torch.stack([z1, z2, torch.zeros_like(z1)], dim=-1).reshape(-1, 3)
    target = torch.zeros(logits.shape[0], dtype=torch.long)
    p = torch.softmax(logits, -1)
    mse = ((p - F.one_hot(target, 3).to(p.dtype)) ** 2).sum(-1).reshape(grid, grid)
    ce = F.cross_entropy(logits, target, reduction="none").reshape(grid, grid)
    return axis.numpy(), mse.numpy(), ce.numpy()


def blobs(seed: int = 0, per_class: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Three Gaussian blobs (std 0.7) around the corners of a triangle of radius 2."""
    gen = torch.Generator().manual_seed(seed)
    angles = torch.tensor([0.0, 2.0944, 4.1888], dtype=torch.float64)
    means = 2 * torch.stack([angles.cos(), angles.sin()], dim=1)
    x = torch.cat(
        [
            means[c] + 0.7 * torch.randn(per_class, 2, generator=gen, dtype=torch.float64)
            for c in range(CLASSES)
        ]
    )
    y = torch.arange(CLASSES).repeat_interleave(per_class)
    return x, y, means


def confidently_wrong(means: torch.Tensor) -> nn.Linear:
    """A linear classifier whose weights point away from each class mean: confident and wrong."""
    model = nn.Linear(2, CLASSES).double()
    with torch.no_grad():
        model.weight.copy_(-INIT_SCALE * means / means.norm(dim=1, keepdim=True))
        model.bias.zero_()
    return model


@dataclass(frozen=True)
class LossRun(ResultMixin):
    """One training run of the flat-surface study: its loss and gradient norm per step."""

    loss_name: str
    losses: list[float]
    grad_norms: list[float]
    accuracies: list[float]
    final_loss: float
    final_accuracy: float


@dataclass(frozen=True)
class FlatSurfaceStudy(ResultMixin):
    """The flat-surface study's result: both error surfaces, both runs and the doctor's verdict."""

    axis: np.ndarray
    mse_surface: np.ndarray
    ce_surface: np.ndarray
    steps: int
    lr: float
    init_scale: float
    num_samples: int
    seed: int
    runs: list[LossRun]
    diagnosis: Diagnosis
    ce_diagnosis: Diagnosis

    _skip_in_dict = ("axis", "mse_surface", "ce_surface")

    def run(self, name: str) -> LossRun:
        """The run trained with the loss ``name``."""
        return next(r for r in self.runs if r.loss_name == name)

    def __str__(self) -> str:
        lines = [
            f"Flat surface: linear softmax classifier, {self.num_samples} samples, GD lr {self.lr}, "
            f"{self.steps} steps from a confidently wrong start"
        ]
        for r in self.runs:
            lines.append(
                f"  {r.loss_name}: loss {fmt(r.losses[0])} -> {fmt(r.final_loss)}, accuracy "
                f"{r.accuracies[0]:.0%} -> {r.final_accuracy:.0%}, gradient norm {fmt(r.grad_norms[0])} -> "
                f"{fmt(r.grad_norms[-1])}"
            )
        lines.append(
            f"doctor on the MSE run: {self.diagnosis.cause}; on the CE run: {self.ce_diagnosis.cause}"
        )
        return "\n".join(lines)


def _squared_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """The squared norm of the gradients of ``params``, summed in their own dtype in order."""
    total = torch.zeros(())
    for p in params:
        if p.grad is not None:
            total = total + (p.grad**2).sum()
    return total


def train_gd(
    model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, steps: int, lr: float
) -> tuple[LossRun, torch.optim.Optimizer]:
    """Full-batch gradient descent: the run (loss, gradient norm and accuracy at every step) and its optimizer."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, norms, accs = [], [], []
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        loss = loss_fn(out, y)
        loss.backward()
        norms.append(float(torch.sqrt(_squared_norm(model.parameters()))))
        losses.append(float(loss.detach()))
        accs.append(float((out.argmax(1) == y).double().mean()))
        opt.step()
    name = "MSE on softmax" if loss_fn is softmax_mse else "cross-entropy"
    return LossRun(
        loss_name=name,
        losses=losses,
        grad_norms=norms,
        accuracies=accs,
        final_loss=losses[-1],
        final_accuracy=accs[-1],
    ), opt


def run(*, quick: bool = True, progress: Progress | None = None) -> FlatSurfaceStudy:
    """Run the flat-surface study."""
    steps = 300 if quick else 1000
    seed = 0
    axis, mse, ce = surfaces()
    x, y, means = blobs(seed)
    runs, diagnoses = [], []
    with one_thread():
        for i, loss_fn in enumerate((softmax_mse, F.cross_entropy)):
            model = confidently_wrong(means)
            result, opt = train_gd(model, loss_fn, x, y, steps, LR)
            runs.append(result)
            history = {"losses": result.losses, "grad_norms": result.grad_norms}
            diagnoses.append(diagnose(model, loss_fn, (x, y), history=history, optimizer=opt))
            if progress is not None:
                progress(i + 1, 2)
    return FlatSurfaceStudy(
        axis=axis,
        mse_surface=mse,
        ce_surface=ce,
        steps=steps,
        lr=LR,
        init_scale=INIT_SCALE,
        num_samples=len(y),
        seed=seed,
        runs=runs,
        diagnosis=diagnoses[0],
        ce_diagnosis=diagnoses[1],
    )
