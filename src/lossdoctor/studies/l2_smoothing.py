"""Study: L2 regularization makes an overfitting network's function smoother and generalize better; biases are left out of the penalty because they shift the function without shaping it.

A wide tanh MLP is fitted to a few noisy samples of a smooth 1-D function (offset from zero, so
that penalizing the biases visibly pulls the curve towards zero) with the lecture's
``L_new = L_old + 1/2 * gamma * sum(w**2)``, for several gamma, once over the weights only and
once over every parameter including the biases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .._results import ResultMixin, fmt
from ..progress import Progress
from ..training.regularization import l2_penalty
from ._threads import one_thread

VARIANTS = {"weights only": ("bias", "norm"), "biases too": ()}


def target(x: torch.Tensor) -> torch.Tensor:
    """The noise-free function: a smooth bump on an offset (mean far from zero)."""
    return 2.0 + torch.sin(2.5 * x) + 0.3 * x


@dataclass(frozen=True)
class L2Fit(ResultMixin):
    """One fit of the L2-smoothing study: its γ, variant and measurements."""

    gamma: float
    variant: str
    seed: int
    train_mse: float
    test_mse: float
    roughness: float  # mean |f''| on the grid
    weight_norm: float  # ||w|| over the weights (no biases)
    bias_norm: float
    curve: list[float]  # f on the grid

    _skip_in_dict = ("curve",)


@dataclass(frozen=True)
class L2SmoothingStudy(ResultMixin):
    """The L2-smoothing study's result: every fit."""

    gammas: list[float]
    variants: list[str]
    seeds: list[int]
    num_train: int
    noise: float
    hidden: int
    steps: int
    grid: list[float]
    truth: list[float]
    train_x: list[list[float]]  # per seed
    train_y: list[list[float]]
    fits: list[L2Fit]

    _skip_in_dict = ("grid", "truth")

    def mean(self, variant: str, gamma: float, field: str) -> float:
        """The mean of ``field`` over the fits of ``variant`` at ``gamma``."""
        return float(
            np.mean(
                [getattr(f, field) for f in self.fits if f.variant == variant and f.gamma == gamma]
            )
        )

    def __str__(self) -> str:
        lines = [
            f"L2 smoothing: {self.num_train} noisy points, MLP width {self.hidden}, {self.steps} Adam "
            f"steps, mean over seeds {self.seeds}"
        ]
        for variant in self.variants:
            for g in self.gammas:
                lines.append(
                    f"  {variant:12s} gamma={fmt(g):>7s}: test MSE {fmt(self.mean(variant, g, 'test_mse'))}"
                    f", train MSE {fmt(self.mean(variant, g, 'train_mse'))}"
                    f", mean|f''| {fmt(self.mean(variant, g, 'roughness'))}"
                )
        return "\n".join(lines)


def make_data(seed: int, num_train: int, noise: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_train`` noisy samples of the target function on [-2, 2], drawn from ``seed``."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.rand(num_train, 1, generator=g) * 4.0 - 2.0
    y = target(x) + noise * torch.randn(num_train, 1, generator=g)
    return x, y


def _linears(hidden: int) -> tuple[nn.Linear, nn.Linear, nn.Linear]:
    """The 1-H-H-1 MLP's linear layers, initialized in order from the global RNG."""
    return nn.Linear(1, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 1)


class MLPEnsemble(nn.Module):
    """``M`` independent 1-H-H-1 tanh MLPs evaluated at once (batched matrix products), so a sweep over gamma, variants and seeds costs about one training run.

    Member ``m`` is exactly the ``nn.Sequential(Linear, Tanh, Linear, Tanh, Linear)`` returned by
    :meth:`member`."""

    # Registered in __init__ (w: weights transposed, b: biases, one slice per member); declared here
    # for the type checker, which otherwise types nn.Module attributes as Tensor | Module.
    w0: nn.Parameter
    b0: nn.Parameter
    w1: nn.Parameter
    b1: nn.Parameter
    w2: nn.Parameter
    b2: nn.Parameter

    def __init__(self, members: int, hidden: int, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        # every member starts from the same initialization (only gamma and the variant differ)
        for i, layer in enumerate(_linears(hidden)):
            self.register_parameter(
                f"w{i}", nn.Parameter(layer.weight.detach().t().repeat(members, 1, 1))
            )
            self.register_parameter(
                f"b{i}", nn.Parameter(layer.bias.detach().repeat(members, 1, 1))
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (N, 1) shared, or (M, N, 1)
        """Every member's output at ``x``."""
        h = x.expand(self.w0.shape[0], *x.shape[-2:]) if x.dim() == 2 else x
        h = torch.tanh(torch.baddbmm(self.b0, h, self.w0))
        h = torch.tanh(torch.baddbmm(self.b1, h, self.w1))
        return torch.baddbmm(self.b2, h, self.w2)

    def member(self, m: int) -> nn.Sequential:
        """Member ``m`` as a plain ``nn.Sequential``."""
        linears = _linears(self.w0.shape[2])
        net = nn.Sequential(linears[0], nn.Tanh(), linears[1], nn.Tanh(), linears[2])
        with torch.no_grad():
            for i, layer in enumerate(linears):
                layer.weight.copy_(getattr(self, f"w{i}")[m].t())
                layer.bias.copy_(getattr(self, f"b{i}")[m, 0])
        return net


def fit_all(
    x: torch.Tensor,
    y: torch.Tensor,
    settings: list[tuple[float, str]],
    *,
    hidden: int,
    steps: int,
    seed: int,
) -> list[nn.Sequential]:
    """Train one member per ``(gamma, variant)`` on ``L = MSE + 1/2 gamma sum(w**2)``, the sum over the weights ("weights only") or every parameter ("biases too").

    Members are independent: the summed loss gives each its own gradient and Adam works elementwise."""
    ens = MLPEnsemble(len(settings), hidden, seed)
    gw = torch.tensor([g for g, _ in settings]).view(-1, 1, 1)
    gb = torch.tensor([g if v == "biases too" else 0.0 for g, v in settings]).view(-1, 1, 1)
    opt = torch.optim.Adam(ens.parameters(), lr=5e-3)
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        mse = (ens(x) - y).pow(2).mean(dim=(1, 2)).sum()
        penalty = sum(
            (gw * getattr(ens, f"w{i}").pow(2)).sum() + (gb * getattr(ens, f"b{i}").pow(2)).sum()
            for i in range(3)
        )
        (mse + 0.5 * penalty).backward()
        opt.step()
    members = [ens.member(m) for m in range(len(settings))]
    # the batched penalty is the library's l2_penalty of each member (a cheap self-check)
    with torch.no_grad():
        for m, (net, (gamma, variant)) in enumerate(zip(members, settings, strict=True)):
            batched = 0.5 * sum(
                float(gw[m]) * float(getattr(ens, f"w{i}")[m].pow(2).sum())
                + float(gb[m]) * float(getattr(ens, f"b{i}")[m].pow(2).sum())
                for i in range(3)
            )
            lib = float(l2_penalty(net, gamma, exclude=VARIANTS[variant]))
            if abs(lib - batched) > 1e-4 * max(1.0, lib):
                raise RuntimeError(f"batched penalty {batched} differs from l2_penalty {lib}")
    return members


@torch.no_grad()
def measure(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor
) -> dict[str, Any]:
    """Train and test MSE (test: the noise-free function on a dense grid), mean |f''| by central differences on the grid, and the norms of the weights and of the biases."""
    f = model(grid)
    h = float(grid[1, 0] - grid[0, 0])
    second = (f[2:] - 2 * f[1:-1] + f[:-2]) / h**2
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return {
        "train_mse": float((model(x) - y).pow(2).mean()),
        "test_mse": float((f - target(grid)).pow(2).mean()),
        "roughness": float(second.abs().mean()),
        "weight_norm": float(torch.sqrt(sum((p.pow(2).sum() for p in weights), torch.zeros(())))),
        "bias_norm": float(torch.sqrt(sum((p.pow(2).sum() for p in biases), torch.zeros(())))),
        "curve": f.squeeze(1).tolist(),
    }


def run(*, quick: bool = True, progress: Progress | None = None) -> L2SmoothingStudy:
    """Run the L2-smoothing study (``quick``: fewer γ and seeds)."""
    gammas = (
        [0.0, 1e-4, 1e-3, 1e-2, 1e-1]
        if quick
        else [0.0, 1e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    )
    seeds = [0, 1] if quick else [0, 1, 2, 3, 4]
    num_train, noise, hidden = 16, 0.3, 64
    steps = 1000 if quick else 4000
    grid = torch.linspace(-2.0, 2.0, 401).unsqueeze(1)
    fits: list[L2Fit] = []
    xs, ys = [], []
    total = len(seeds) * len(VARIANTS) * len(gammas)
    settings = [(gamma, variant) for variant in VARIANTS for gamma in gammas]
    with one_thread():
        for seed in seeds:
            x, y = make_data(seed, num_train, noise)
            xs.append(x.squeeze(1).tolist())
            ys.append(y.squeeze(1).tolist())
            members = fit_all(x, y, settings, hidden=hidden, steps=steps, seed=seed)
            for model, (gamma, variant) in zip(members, settings, strict=True):
                fits.append(
                    L2Fit(gamma=gamma, variant=variant, seed=seed, **measure(model, x, y, grid))
                )
            if progress is not None:
                progress(len(fits), total)
    return L2SmoothingStudy(
        gammas=gammas,
        variants=list(VARIANTS),
        seeds=seeds,
        num_train=num_train,
        noise=noise,
        hidden=hidden,
        steps=steps,
        grid=grid.squeeze(1).tolist(),
        truth=target(grid).squeeze(1).tolist(),
        train_x=xs,
        train_y=ys,
        fits=fits,
    )
