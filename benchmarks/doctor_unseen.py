"""Held-out validation of the stall doctor on stalls it was not built on.

    python benchmarks/doctor_unseen.py                              # every family, seeds 100,101,102
    python benchmarks/doctor_unseen.py --families transformer,bncnn --seeds 100
    python benchmarks/doctor_unseen.py --validate                   # ground truth only, no doctor
    python benchmarks/doctor_unseen.py --json results.json

Every case is a real, short training run (its own model, data, optimizer and minibatch order)
stopped where it stalls, with a ground-truth cause, the remedy an expert would apply (a function
``(model, optimizer) -> optimizer``) and a horizon. The scenarios were designed from the issue
texts (16, 17) and general ML knowledge, without reading the doctor's rules, candidates,
measurements or tuning cases.

For every case the runner calls, as a user would,
``ld.diagnose(model, loss_fn, batches, history=last_240_losses, optimizer=opt, checkpoint=ckpt)``
with default arguments, then continues training from the stalled state for the horizon over the
same minibatch order, three times from the same exact snapshot (model, optimizer state, global
RNG): (a) unchanged, (b) with the known remedy, (c) with ``d.prescriptions[0].apply(model, opt)``
(a ``NeedsCodeChange`` counts as unchanged). The loss compared is the full training loss (the
mean over all training batches of ``loss_fn``, in the mode the model trains in: BatchNorm nets
on batch statistics, evaluated on a copy so the running statistics are not touched).

Scores:
- cause right / wrong (confusion matrix, truth x predicted);
- stalled cases (truth not ``progressing``/``converged``): *fixed* = the prescription's loss
  closes >= half the gap between unchanged and the remedy (when unchanged ends NaN/Inf, the
  stalled state's loss stands in for it);
- *harmful* (every case) = the prescription ends NaN/Inf, or worse than unchanged by more than
  0.1% relative;
- healthy (``progressing``) cases: false alarm = ``d.stalled``; whether the first prescription
  is "no change" (``not action``);
- converged cases: whether the first prescription is no change / stop;
- the doctor's seconds per architecture; whether ``diagnose`` left the model, the optimizer
  state and the global RNG exactly as they were.

``--validate`` checks the ground truth without the doctor: the remedy must end >= 5% below
unchanged on stalled cases, a healthy run must fall >= 5% more over the horizon, a converged run
must move < 0.1%.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld

SEEDS = (100, 101, 102)
HISTORY = 240
HARM_TOL = 1e-3

Remedy = Callable[[nn.Module, torch.optim.Optimizer], torch.optim.Optimizer]


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
_CACHE: dict[str, Any] = {}


def mnist1d(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST-1D training samples, a seed-dependent subset of the 4,000."""
    if "mnist1d" not in _CACHE:
        from lossdoctor.zoo.mnist1d import mnist1d_arrays

        x, y, _, _ = mnist1d_arrays()
        _CACHE["mnist1d"] = (torch.from_numpy(x), torch.from_numpy(y))
    x, y = _CACHE["mnist1d"]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    return x[idx].clone(), y[idx].clone()


def digits(n: int, seed: int, images: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits scaled to [0, 1]: (n, 1, 8, 8) images or (n, 64) vectors."""
    if "digits" not in _CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        _CACHE["digits"] = (
            torch.tensor(d.data, dtype=torch.float32) / 16.0,
            torch.tensor(d.target),
        )
    x, y = _CACHE["digits"]
    idx = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:n]
    x, y = x[idx].clone(), y[idx].clone()
    return (x.view(-1, 1, 8, 8), y) if images else (x, y)


def partition(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def batch_order(n_batches: int, steps: int, seed: int) -> list[int]:
    """A fresh permutation of the batches every epoch, from a private generator."""
    gen = torch.Generator().manual_seed(seed)
    out: list[int] = []
    while len(out) < steps:
        out += torch.randperm(n_batches, generator=gen).tolist()
    return out[:steps]


def spectrum_matrix(n: int, d: int, eigs: np.ndarray, seed: int) -> torch.Tensor:
    """X (n x d) whose X^T X / n has exactly the eigenvalues ``eigs`` (random rotations)."""
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, d)))
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = math.sqrt(n) * u @ np.diag(np.sqrt(eigs)) @ v.T
    return torch.tensor(x, dtype=torch.float32)


def token_task(
    n: int, seed: int, vocab: int = 16, length: int = 12, lag: int = 2
) -> tuple[torch.Tensor, torch.Tensor]:
    """Modular sum with a lag: y_t = (x_t + x_{t-lag}) mod vocab (y_t = x_t for the first ``lag``
    positions): attention to a fixed offset plus a learned addition table."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (n, length), generator=gen)
    y = x.clone()
    y[:, lag:] = (x[:, lag:] + x[:, :-lag]) % vocab
    return x, y


def majority_task(
    n: int, seed: int, symbols: int = 4, length: int = 15
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot sequences; the label is the most frequent symbol (ties: the smallest)."""
    gen = torch.Generator().manual_seed(seed)
    s = torch.randint(0, symbols, (n, length), generator=gen)
    counts = F.one_hot(s, symbols).sum(1)
    return F.one_hot(s, symbols).float(), counts.argmax(1)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def mlp(
    sizes: list[int], act: type[nn.Module] = nn.ReLU, bias: bool = True, out_bias: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        last = i == len(sizes) - 2
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=out_bias if last else bias))
        if not last:
            layers.append(act())
    return nn.Sequential(*layers)


class CNN1d(nn.Sequential):
    """A small 1-D convnet for MNIST-1D's 40-sample signals."""

    def __init__(self, channels: int = 8, hidden: int = 64):
        super().__init__(
            nn.Unflatten(1, (1, 40)),
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, 2 * channels, 5, padding=2, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * 20, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 10),
        )


class BNCNN(nn.Sequential):
    """A small CNN with BatchNorm for 8x8 digits."""

    def __init__(self, c: int = 8):
        super().__init__(
            nn.Conv2d(1, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * c * 16, 10),
        )


class TinyTransformer(nn.Module):
    """2 pre-LN causal encoder layers, learned positions, output tied to the token embedding."""

    def __init__(
        self, vocab: int = 16, length: int = 12, d: int = 24, heads: int = 4, ff: int = 48
    ):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        nn.init.normal_(self.emb.weight, std=0.02)  # GPT-2's initialization for tied embeddings
        self.pos = nn.Parameter(0.02 * torch.randn(length, d))
        layer = nn.TransformerEncoderLayer(
            d, heads, ff, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.register_buffer("mask", nn.Transformer.generate_square_subsequent_mask(length))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        h = self.emb(x) + self.pos[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.norm(h) @ self.emb.weight.T


class SeqClassifier(nn.Module):
    """GRU/LSTM over the sequence, a linear head on the last hidden state."""

    def __init__(self, cell: str = "gru", inputs: int = 4, hidden: int = 32, classes: int = 4):
        super().__init__()
        self.rnn = (nn.GRU if cell == "gru" else nn.LSTM)(inputs, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


# ---------------------------------------------------------------------------------------------
# losses (functional, as users write them)
# ---------------------------------------------------------------------------------------------
def seq_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def bce_logits(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(out.squeeze(-1), y)


def sigmoid_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.sigmoid(out.squeeze(-1)), y)


def softmax_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(torch.softmax(out, -1), F.one_hot(y, out.shape[-1]).float())


def mse_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.mse_loss(out, y, reduction="sum")


def ce_sum(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="sum")


# ---------------------------------------------------------------------------------------------
# remedies: what an expert would do, as (model, optimizer) -> optimizer
# ---------------------------------------------------------------------------------------------
def keep() -> Remedy:
    return lambda model, opt: opt


def set_lr(lr: float) -> Remedy:
    def f(model, opt):
        for g in opt.param_groups:
            g["lr"] = lr
        return opt

    return f


def set_momentum(mu: float, lr: float | None = None) -> Remedy:
    def f(model, opt):
        for g in opt.param_groups:
            g["momentum"] = mu
            if lr is not None:
                g["lr"] = lr
        return opt

    return f


def set_weight_decay(wd: float) -> Remedy:
    def f(model, opt):
        for g in opt.param_groups:
            g["weight_decay"] = wd
        return opt

    return f


def switch_adam(lr: float) -> Remedy:
    return lambda model, opt: torch.optim.Adam(model.parameters(), lr=lr)


def reinitialize(
    seed: int, optimizer: Callable[[Any], torch.optim.Optimizer] | None = None
) -> Remedy:
    """Every module's reset_parameters() from a seeded draw (global RNG restored), fresh optimizer state."""

    def f(model, opt):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        if optimizer is not None:
            return optimizer(model.parameters())
        opt.state.clear()
        return opt

    return f


def perturb(scale: float, seed: int) -> Remedy:
    """Add N(0, (scale / sqrt(fan_in))^2) to every weight matrix (a small random kick)."""

    def f(model, opt):
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() >= 2:
                    p.add_(torch.randn(p.shape, generator=gen) * scale / math.sqrt(p[0].numel()))
        return opt

    return f


def restore(state: dict[str, torch.Tensor], lr: float) -> Remedy:
    def f(model, opt):
        model.load_state_dict(state)
        opt.state.clear()
        for g in opt.param_groups:
            g["lr"] = lr
        return opt

    return f


# ---------------------------------------------------------------------------------------------
# cases
# ---------------------------------------------------------------------------------------------
@dataclass
class Case:
    family: str
    seed: int
    arch: str
    cause: str
    remedy_text: str
    model: nn.Module
    loss_fn: Callable
    batches: list
    optimizer: torch.optim.Optimizer
    history: list[float]
    remedy: Remedy
    horizon: int
    continue_order: list[int]
    checkpoint: dict | None = None
    info: dict[str, Any] = field(default_factory=dict)


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable,
    batches: list,
    order: list[int],
    losses: list[float] | None = None,
) -> list[float]:
    """The standard loop; stops at the first non-finite loss."""
    losses = [] if losses is None else losses
    for i in order:
        x, y = batches[i]
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            break
    return losses


def has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@torch.no_grad()
def full_loss(model: nn.Module, loss_fn: Callable, batches: list) -> float:
    """Mean over all training batches, in the model's own mode (on a copy when BatchNorm would
    update its running statistics)."""
    m = copy.deepcopy(model) if (model.training and has_batchnorm(model)) else model
    if any(not torch.isfinite(p).all() for p in m.parameters()):
        return float("nan")
    vals = [float(loss_fn(m(x), y)) for x, y in batches]
    return float(np.mean(vals))


def run(
    family: str,
    seed: int,
    arch: str,
    cause: str,
    remedy_text: str,
    model: nn.Module,
    loss_fn: Callable,
    batches: list,
    opt: torch.optim.Optimizer,
    steps: int,
    horizon: int,
    remedy_fn: Callable[[dict], Remedy],
    *,
    schedule: Callable[[int, torch.optim.Optimizer], None] | None = None,
    stop: Callable[[list[float]], bool] | None = None,
    checkpoint_at: Callable[[list[float]], bool] | None = None,
    info: dict | None = None,
    prefix: list[float] | None = None,
) -> Case:
    """Train ``steps`` steps (calling ``schedule(step, opt)`` before each, stopping early when ``stop``
    says so), then package the case; the continuation order follows on from the last step."""
    order = batch_order(len(batches), steps + horizon + 10, seed * 7 + 3)
    losses: list[float] = list(prefix or [])
    ctx: dict[str, Any] = {"checkpoint": None}
    done = 0
    for step in range(steps):
        if schedule is not None:
            schedule(step, opt)
        train(model, opt, loss_fn, batches, [order[step]], losses)
        done = step + 1
        if checkpoint_at is not None and checkpoint_at(losses):
            ctx["checkpoint"] = copy.deepcopy(model.state_dict())
        if stop is not None and stop(losses):
            break
    ctx.update(info or {})
    return Case(
        family,
        seed,
        arch,
        cause,
        remedy_text,
        model,
        loss_fn,
        batches,
        opt,
        losses,
        remedy_fn(ctx),
        horizon,
        order[done : done + horizon],
        ctx["checkpoint"],
        {"steps": done, **(info or {})},
    )


def seeded(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)


# -- ill-conditioned ----------------------------------------------------------------------------
def ls_valley(seed: int) -> Case:
    """Issue 16's valley: least squares, condition number 9,000, GD at lr = 1.99/lambda_max, 1,000 steps."""
    seeded(seed)
    n, d, kappa = 400, 20, 9000.0
    eigs = np.geomspace(1.0, 1.0 / kappa, d) * 50.0
    x = spectrum_matrix(n, d, eigs, seed)
    w = torch.randn(d, 1, generator=torch.Generator().manual_seed(seed))
    y = x @ w
    model = nn.Linear(d, 1, bias=False)
    lam_max, lam_min = (
        2 * eigs.max(),
        2 * eigs.min(),
    )  # Hessian of the mean squared error: 2 X^T X / n
    opt = torch.optim.SGD(model.parameters(), lr=1.99 / lam_max)
    lr_hb = 4.0 / (math.sqrt(lam_max) + math.sqrt(lam_min)) ** 2
    mu_hb = ((math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)) ** 2
    return run(
        "ls_valley_k9000",
        seed,
        "linear",
        "ill_conditioned",
        f"heavy ball at Polyak's optimum (lr {lr_hb:.3g}, momentum {mu_hb:.3f})",
        model,
        F.mse_loss,
        [(x, y)],
        opt,
        1000,
        300,
        lambda c: set_momentum(mu_hb, lr_hb),
        info={"lambda_max": lam_max, "lambda_min": lam_min},
    )


def logreg_unscaled(seed: int) -> Case:
    """Logistic regression on raw features whose scales span 1..100 (no standardization), full-batch
    GD at 1.9/lambda_max of the Hessian at the start: the small-scale weights crawl."""
    seeded(seed)
    n, d = 1000, 10
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=gen)
    w_true = torch.randn(d, generator=gen) * 1.5
    p = torch.sigmoid(z @ w_true)
    y = torch.bernoulli(p, generator=gen)
    scales = torch.logspace(0, 2, d)
    x = z * scales + 0.5 * scales  # raw units with an offset too
    lam_max = float(
        torch.linalg.eigvalsh(
            0.25 * torch.cat([x, torch.ones(n, 1)], 1).T @ torch.cat([x, torch.ones(n, 1)], 1) / n
        ).max()
    )
    model = nn.Linear(d, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1.9 / lam_max)
    return run(
        "logreg_unscaled",
        seed,
        "logistic",
        "ill_conditioned",
        "switch to Adam, lr 0.01",
        model,
        bce_logits,
        [(x, y)],
        opt,
        1000,
        300,
        lambda c: switch_adam(0.01),
        info={"lambda_max0": lam_max},
    )


# -- dead units --------------------------------------------------------------------------------
def mlp_dead_lr(seed: int) -> Case:
    """MNIST-1D ReLU MLP trained with SGD at lr 1.0, momentum 0.9: the second hidden layer dies, the
    loss sits at ln 10."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 100, 100, 10])
    opt = torch.optim.SGD(model.parameters(), lr=1.0, momentum=0.9)
    return run(
        "mlp_dead_relu_lr",
        seed,
        "mlp",
        "dead_units",
        "re-initialize, SGD lr 0.1 momentum 0.9",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        400,
        200,
        lambda c: reinitialize(seed + 1, lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9)),
    )


def cnn1d_dead_adam(seed: int) -> Case:
    """MNIST-1D 1-D CNN trained with Adam at lr 0.2: the ReLUs die, the loss sits at ln 10."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = CNN1d()
    opt = torch.optim.Adam(model.parameters(), lr=0.2)
    return run(
        "cnn1d_dead_adam",
        seed,
        "cnn1d",
        "dead_units",
        "re-initialize, Adam lr 1e-3",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        400,
        200,
        lambda c: reinitialize(seed + 1, lambda ps: torch.optim.Adam(ps, lr=1e-3)),
    )


# -- momentum too high -------------------------------------------------------------------------
def mlp_momentum(seed: int) -> Case:
    """MNIST-1D tanh MLP, SGD lr 0.05 with momentum 0.99 (effective step 5), 1,200 steps."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 64, 64, 10], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.99)
    return run(
        "mlp_momentum_099",
        seed,
        "mlp",
        "momentum_too_high",
        "momentum 0.9",
        model,
        F.cross_entropy,
        partition(x, y, 128),
        opt,
        1200,
        300,
        lambda c: set_momentum(0.9),
    )


def bncnn_momentum(seed: int) -> Case:
    """Digits CNN with BatchNorm in train mode, SGD lr 0.1 with momentum 0.99: the loss swings by
    orders of magnitude (and the eval-mode loss differs from the train-mode one)."""
    seeded(seed)
    x, y = digits(1536, seed)
    model = BNCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.99)
    return run(
        "bncnn_momentum_099",
        seed,
        "bn_cnn",
        "momentum_too_high",
        "momentum 0.9",
        model,
        F.cross_entropy,
        partition(x, y, 64),
        opt,
        500,
        200,
        lambda c: set_momentum(0.9),
    )


def softmax_momentum(seed: int) -> Case:
    """Linear softmax regression on MNIST-1D, minibatch SGD lr 0.05 with momentum 0.99."""
    seeded(seed)
    x, y = mnist1d(3000, seed)
    model = nn.Linear(40, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.99)
    return run(
        "softmax_momentum_099",
        seed,
        "logistic",
        "momentum_too_high",
        "momentum 0.9",
        model,
        F.cross_entropy,
        partition(x, y, 50),
        opt,
        600,
        300,
        lambda c: set_momentum(0.9),
    )


# -- weight decay ------------------------------------------------------------------------------
def mlp_adamw_wd(seed: int) -> Case:
    """MNIST-1D ReLU MLP, AdamW lr 3e-3 with weight decay 3 (lr x wd = 0.9% shrink per step)."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 100, 100, 10])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=3.0)
    return run(
        "mlp_adamw_wd",
        seed,
        "mlp",
        "weight_decay",
        "weight decay 0.01",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        500,
        300,
        lambda c: set_weight_decay(0.01),
    )


def transformer_adamw_wd(seed: int) -> Case:
    """2-layer transformer on the lag-copy task, AdamW lr 3e-3 with weight decay 5."""
    seeded(seed)
    x, y = token_task(2048, seed)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5.0)
    return run(
        "transformer_adamw_wd",
        seed,
        "transformer",
        "weight_decay",
        "weight decay 0.01",
        model,
        seq_ce,
        partition(x, y, 64),
        opt,
        500,
        250,
        lambda c: set_weight_decay(0.01),
    )


def digits_softmax_l2(seed: int) -> Case:
    """Multinomial logistic regression on digits vectors, SGD lr 0.5 with coupled L2 weight decay 0.5."""
    seeded(seed)
    x, y = digits(1500, seed, images=False)
    model = nn.Linear(64, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5, weight_decay=0.5)
    return run(
        "digits_softmax_sgd_l2",
        seed,
        "logistic",
        "weight_decay",
        "weight decay 1e-4",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        500,
        300,
        lambda c: set_weight_decay(1e-4),
    )


# -- oscillation (lr too high) -------------------------------------------------------------------
def transformer_lr_high(seed: int) -> Case:
    """2-layer transformer trained with AdamW at lr 1e-3 for 300 steps, then warmed up to a peak of 0.1
    (too high) over 50 steps and held there: the loss spikes and bounces between 0.01 and 2. The
    checkpoint is the state before the warm-up; the remedy rolls back to it at lr 1e-3."""
    seeded(seed)
    x, y = token_task(2048, seed)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

    def schedule(step: int, o: torch.optim.Optimizer) -> None:
        if step >= 300:
            for g in o.param_groups:
                g["lr"] = 1e-3 + (0.1 - 1e-3) * min((step - 300) / 50, 1.0)

    return run(
        "transformer_adamw_lr_high",
        seed,
        "transformer",
        "oscillation",
        "restore the checkpoint, lr 1e-3",
        model,
        seq_ce,
        partition(x, y, 64),
        opt,
        550,
        250,
        lambda c: restore(c["checkpoint"], 1e-3),
        schedule=schedule,
        checkpoint_at=lambda losses: len(losses) == 300,
    )


def mlp_adam_lr_high(seed: int) -> Case:
    """MNIST-1D tanh MLP, Adam at lr 0.02: the loss hovers at a level set by the step size."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 100, 100, 10], act=nn.Tanh)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    return run(
        "mlp_tanh_adam_lr_high",
        seed,
        "mlp",
        "oscillation",
        "lr 1e-3",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        800,
        200,
        lambda c: set_lr(1e-3),
    )


def lstm_lr_small(seed: int) -> Case:
    """LSTM on the majority task, plain SGD at lr 0.01."""
    seeded(seed)
    x, y = majority_task(2000, seed)
    model = SeqClassifier("lstm")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    return run(
        "lstm_sgd_lr_small",
        seed,
        "rnn",
        "lr_too_small",
        "lr 1.0",
        model,
        F.cross_entropy,
        partition(x, y, 50),
        opt,
        400,
        200,
        lambda c: set_lr(1.0),
    )


# -- healthy (progressing) ---------------------------------------------------------------------
def mlp_healthy(seed: int) -> Case:
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 100, 100, 10])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    return run(
        "mlp_adam_healthy",
        seed,
        "mlp",
        "progressing",
        "no change",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        300,
        200,
        lambda c: keep(),
    )


def bncnn_healthy(seed: int) -> Case:
    seeded(seed)
    x, y = digits(1536, seed)
    model = BNCNN()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return run(
        "bncnn_sgd_healthy",
        seed,
        "bn_cnn",
        "progressing",
        "no change",
        model,
        F.cross_entropy,
        partition(x, y, 64),
        opt,
        240,
        200,
        lambda c: keep(),
    )


def gru_healthy(seed: int) -> Case:
    seeded(seed)
    x, y = majority_task(2000, seed)
    model = SeqClassifier("gru")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    return run(
        "gru_adam_healthy",
        seed,
        "rnn",
        "progressing",
        "no change",
        model,
        F.cross_entropy,
        partition(x, y, 50),
        opt,
        300,
        200,
        lambda c: keep(),
    )


def transformer_healthy(seed: int) -> Case:
    seeded(seed)
    x, y = token_task(2048, seed)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    return run(
        "transformer_adamw_healthy",
        seed,
        "transformer",
        "progressing",
        "no change",
        model,
        seq_ce,
        partition(x, y, 64),
        opt,
        300,
        200,
        lambda c: keep(),
    )


def cnn1d_healthy(seed: int) -> Case:
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = CNN1d()
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9)
    return run(
        "cnn1d_sgd_healthy",
        seed,
        "cnn1d",
        "progressing",
        "no change",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        300,
        200,
        lambda c: keep(),
    )


# -- converged ---------------------------------------------------------------------------------
def linreg_converged(seed: int) -> Case:
    """Noisy least squares (sum reduction), well conditioned, full-batch GD run to its minimum."""
    seeded(seed)
    n, d = 200, 10
    eigs = np.geomspace(1.0, 0.1, d)
    x = spectrum_matrix(n, d, eigs, seed)
    gen = torch.Generator().manual_seed(seed)
    y = x @ torch.randn(d, 1, generator=gen) + 0.5 * torch.randn(n, 1, generator=gen)
    model = nn.Linear(d, 1)
    lam = float(
        torch.linalg.eigvalsh(
            2 * torch.cat([x, torch.ones(n, 1)], 1).T @ torch.cat([x, torch.ones(n, 1)], 1)
        ).max()
    )
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / lam)
    return run(
        "linreg_gd_converged",
        seed,
        "linear",
        "converged",
        "no change (stop)",
        model,
        mse_sum,
        [(x, y)],
        opt,
        800,
        200,
        lambda c: keep(),
    )


def _lbfgs(
    model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, iters: int = 500
) -> None:
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1.0,
        max_iter=iters,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    for _ in range(4):
        opt.step(closure)


def softmax_converged(seed: int) -> Case:
    """Linear softmax regression on MNIST-1D (not separable): L-BFGS to the minimum, then the user's
    full-batch GD (lr 0.1) continues there."""
    seeded(seed)
    x, y = mnist1d(2000, seed)
    model = nn.Linear(40, 10)
    _lbfgs(model, F.cross_entropy, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return run(
        "softmax_lbfgs_gd_converged",
        seed,
        "logistic",
        "converged",
        "no change (stop)",
        model,
        F.cross_entropy,
        [(x, y)],
        opt,
        300,
        200,
        lambda c: keep(),
    )


def _lambda_max(
    model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, iters: int = 100
) -> float:
    """Power iteration on Hessian-vector products (the user's own estimate of the sharpness)."""
    ps = list(model.parameters())
    g = torch.autograd.grad(loss_fn(model(x), y), ps, create_graph=True)
    v = [torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) for i, p in enumerate(ps)]
    lam = 0.0
    for _ in range(iters):
        n = torch.sqrt(sum((a * a).sum() for a in v))
        v = [a / n for a in v]
        hv = torch.autograd.grad(g, ps, v, retain_graph=True)
        lam = float(sum((a * b).sum() for a, b in zip(hv, v)))
        v = [h.detach() for h in hv]
    return lam


def mlp_regression_converged(seed: int) -> Case:
    """A small tanh MLP (1-16-16-1) fit to noisy 1-D regression data (512 points): L-BFGS to a
    minimum, then the user's full-batch GD at lr = 1/lambda_max stays there."""
    seeded(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(512, 1, generator=gen) * 6 - 3
    y = torch.sin(2 * x) + 0.3 * x + 0.3 * torch.randn(512, 1, generator=gen)
    model = mlp([1, 16, 16, 1], act=nn.Tanh)
    _lbfgs(model, F.mse_loss, x, y, 3000)
    lam = _lambda_max(model, F.mse_loss, x, y)
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / lam)
    return run(
        "mlp_regression_converged",
        seed,
        "mlp",
        "converged",
        "no change (stop)",
        model,
        F.mse_loss,
        [(x, y)],
        opt,
        300,
        200,
        lambda c: keep(),
        info={"lambda_max": lam},
    )


# -- saddle / degenerate -------------------------------------------------------------------------
def _zero_(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    return model


def tanh_zero_saddle(seed: int) -> Case:
    """One-hidden-layer tanh MLP with every weight and bias zero-initialized, full-batch GD: the output
    bias fits the class priors, the weights stay exactly at the saddle W1 = W2 = 0."""
    seeded(seed)
    x, y = mnist1d(2000, seed)
    model = _zero_(mlp([40, 32, 10], act=nn.Tanh))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return run(
        "tanh_zero_init_saddle",
        seed,
        "mlp",
        "saddle_point",
        "perturb the weights (0.1/sqrt(fan_in))",
        model,
        F.cross_entropy,
        [(x, y)],
        opt,
        300,
        200,
        lambda c: perturb(0.1, seed + 1),
    )


def deep_linear_saddle(seed: int) -> Case:
    """A two-layer linear network (20 -> 20 -> 5, no biases) at a 1e-12 x default initialization, regression,
    full-batch GD: parked at the saddle at the origin."""
    seeded(seed)
    n, din, dout = 500, 20, 5
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, din, generator=gen)
    y = x @ (torch.randn(din, dout, generator=gen) / math.sqrt(din)) + 0.1 * torch.randn(
        n, dout, generator=gen
    )
    model = nn.Sequential(nn.Linear(din, 20, bias=False), nn.Linear(20, dout, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e-12)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return run(
        "deep_linear_small_init_saddle",
        seed,
        "linear",
        "saddle_point",
        "re-initialize (default init)",
        model,
        F.mse_loss,
        [(x, y)],
        opt,
        300,
        200,
        lambda c: reinitialize(seed + 1),
    )


def tanh_deep_zero_degenerate(seed: int) -> Case:
    """Three tanh hidden layers, no biases anywhere, every weight zero, full-batch GD: the gradient and
    the whole Hessian vanish (every second derivative carries a third zero factor): a higher-order
    critical point at loss ln 10."""
    seeded(seed)
    x, y = mnist1d(2000, seed)
    model = _zero_(mlp([40, 32, 32, 32, 10], act=nn.Tanh, bias=False, out_bias=False))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return run(
        "tanh_deep_zero_degenerate",
        seed,
        "mlp",
        "degenerate",
        "re-initialize (default init)",
        model,
        F.cross_entropy,
        [(x, y)],
        opt,
        300,
        200,
        lambda c: reinitialize(seed + 1),
    )


# -- vanishing gradients -----------------------------------------------------------------------
def sigmoid_deep(seed: int) -> Case:
    """MNIST-1D, 8 hidden sigmoid layers of 64, SGD lr 0.1: the gradient dies on its way down."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40] + [64] * 8 + [10], act=nn.Sigmoid)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return run(
        "sigmoid_deep_vanishing",
        seed,
        "mlp",
        "vanishing_gradients",
        "switch to Adam, lr 1e-3",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        400,
        300,
        lambda c: switch_adam(1e-3),
    )


# -- gradient noise ----------------------------------------------------------------------------
def linreg_noise(seed: int) -> Case:
    """Least squares with label noise (sigma 1), SGD batch 4 at lr 0.05: hovering at the noise floor."""
    seeded(seed)
    n, d = 2000, 20
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=gen)
    y = x @ torch.randn(d, 1, generator=gen) + torch.randn(n, 1, generator=gen)
    model = nn.Linear(d, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return run(
        "linreg_sgd_noise_floor",
        seed,
        "linear",
        "gradient_noise",
        "lr 0.005 (10x lower)",
        model,
        F.mse_loss,
        partition(x, y, 4),
        opt,
        1200,
        300,
        lambda c: set_lr(0.005),
    )


def softmax_noise(seed: int) -> Case:
    """Linear softmax regression on MNIST-1D, SGD batch 8 at lr 0.2: hovering at the noise floor."""
    seeded(seed)
    x, y = mnist1d(3000, seed)
    model = nn.Linear(40, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    return run(
        "softmax_sgd_noise_floor",
        seed,
        "logistic",
        "gradient_noise",
        "lr 0.02 (10x lower)",
        model,
        F.cross_entropy,
        partition(x, y, 8),
        opt,
        1200,
        300,
        lambda c: set_lr(0.02),
    )


# -- flat plateau (saturated outputs) ----------------------------------------------------------
def sigmoid_mse_saturated(seed: int) -> Case:
    """Digits 'is it < 5' with a ReLU MLP whose sigmoid output is trained with MSE; the output bias
    sits at -15 (saturated: every output ~0): the gradient through the sigmoid is ~1e-7."""
    seeded(seed)
    x, y = digits(1500, seed, images=False)
    y = (y < 5).float()
    model = mlp([64, 32, 1])
    with torch.no_grad():
        model[-1].bias.fill_(-15.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return run(
        "sigmoid_mse_saturated",
        seed,
        "mlp",
        "flat_plateau",
        "re-initialize (default init)",
        model,
        sigmoid_mse,
        partition(x, y, 100),
        opt,
        400,
        300,
        lambda c: reinitialize(seed + 1),
    )


def softmax_mse_saturated(seed: int) -> Case:
    """MNIST-1D MLP with softmax outputs trained with MSE on one-hot targets; the output bias of class
    0 sits at +20: every sample gets p(0) ~ 1, and the softmax passes back ~e^-20 of the error."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 64, 10])
    with torch.no_grad():
        model[-1].bias[0] = 20.0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return run(
        "mlp_softmax_mse_saturated",
        seed,
        "mlp",
        "flat_plateau",
        "re-initialize (default init)",
        model,
        softmax_mse,
        partition(x, y, 100),
        opt,
        400,
        300,
        lambda c: reinitialize(seed + 1),
    )


# -- lr too small ------------------------------------------------------------------------------
def mlp_sum_lr_small(seed: int) -> Case:
    """MNIST-1D ReLU MLP, cross-entropy with reduction='sum' over batches of 50, SGD lr 2e-6
    (= 1e-4 on the mean)."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 64, 64, 10])
    opt = torch.optim.SGD(model.parameters(), lr=2e-6)
    return run(
        "mlp_sum_lr_small",
        seed,
        "mlp",
        "lr_too_small",
        "lr 1e-3 (= 0.05 on the mean)",
        model,
        ce_sum,
        partition(x, y, 50),
        opt,
        400,
        300,
        lambda c: set_lr(1e-3),
    )


def transformer_lr_small(seed: int) -> Case:
    seeded(seed)
    x, y = token_task(2048, seed)
    model = TinyTransformer()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    return run(
        "transformer_adamw_lr_small",
        seed,
        "transformer",
        "lr_too_small",
        "lr 1e-3",
        model,
        seq_ce,
        partition(x, y, 64),
        opt,
        300,
        250,
        lambda c: set_lr(1e-3),
    )


def logreg_bce_lr_small(seed: int) -> Case:
    """Digits 'is it a 3' logistic regression (BCE on logits), SGD lr 1e-4, batch 64."""
    seeded(seed)
    x, y = digits(1500, seed, images=False)
    y = (y == 3).float()
    model = nn.Linear(64, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return run(
        "logreg_bce_lr_small",
        seed,
        "logistic",
        "lr_too_small",
        "lr 0.1",
        model,
        bce_logits,
        partition(x, y, 64),
        opt,
        400,
        300,
        lambda c: set_lr(0.1),
    )


def bncnn_lr_small(seed: int) -> Case:
    seeded(seed)
    x, y = digits(1536, seed)
    model = BNCNN()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    return run(
        "bncnn_sgd_lr_small",
        seed,
        "bn_cnn",
        "lr_too_small",
        "lr 0.05",
        model,
        F.cross_entropy,
        partition(x, y, 64),
        opt,
        300,
        200,
        lambda c: set_lr(0.05),
    )


# -- diverging ---------------------------------------------------------------------------------
def linreg_diverging(seed: int) -> Case:
    """Least squares, full-batch GD at lr 1/lambda_max for 200 steps, then the lr is raised to
    2.5/lambda_max: the top direction grows 1.5x per step (from rounding error). Stopped when the loss
    is 10x its lowest; the checkpoint is the state at the change."""
    seeded(seed)
    n, d = 300, 10
    eigs = np.geomspace(1.0, 0.05, d)
    x = spectrum_matrix(n, d, eigs, seed)
    gen = torch.Generator().manual_seed(seed)
    y = x @ torch.randn(d, 1, generator=gen) + 0.1 * torch.randn(n, 1, generator=gen)
    model = nn.Linear(d, 1, bias=False)
    lam = 2 * eigs.max()
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / lam)

    def schedule(step: int, o: torch.optim.Optimizer) -> None:
        if step == 200:
            for g in o.param_groups:
                g["lr"] = 2.5 / lam

    def stop(losses: list[float]) -> bool:
        return len(losses) > 200 and losses[-1] > 10 * min(losses)

    return run(
        "linreg_gd_diverging",
        seed,
        "linear",
        "diverging",
        "lr 1/lambda_max",
        model,
        F.mse_loss,
        [(x, y)],
        opt,
        2000,
        200,
        lambda c: set_lr(1.0 / lam),
        schedule=schedule,
        stop=stop,
        checkpoint_at=lambda losses: len(losses) == 200,
    )


def mlp_lr_raised(seed: int) -> Case:
    """MNIST-1D tanh MLP trained with SGD lr 0.05, momentum 0.9; at step 300 the lr is raised to 1.0
    (a schedule bug): the loss explodes. Stopped when it is 3x the loss before the change; the
    checkpoint is the state at the change."""
    seeded(seed)
    x, y = mnist1d(4000, seed)
    model = mlp([40, 100, 100, 10], act=nn.Tanh)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def schedule(step: int, o: torch.optim.Optimizer) -> None:
        if step == 300:
            for g in o.param_groups:
                g["lr"] = 1.0

    def stop(losses: list[float]) -> bool:
        return len(losses) > 300 and (
            losses[-1] > 3 * float(np.mean(losses[290:300])) or not math.isfinite(losses[-1])
        )

    return run(
        "mlp_tanh_lr_raised_diverging",
        seed,
        "mlp",
        "diverging",
        "restore the checkpoint, lr 0.05",
        model,
        F.cross_entropy,
        partition(x, y, 100),
        opt,
        700,
        200,
        lambda c: restore(c["checkpoint"], 0.05),
        schedule=schedule,
        stop=stop,
        checkpoint_at=lambda losses: len(losses) == 300,
    )


FAMILIES: dict[str, Callable[[int], Case]] = {
    "ls_valley_k9000": ls_valley,
    "logreg_unscaled": logreg_unscaled,
    "mlp_dead_relu_lr": mlp_dead_lr,
    "cnn1d_dead_adam": cnn1d_dead_adam,
    "mlp_momentum_099": mlp_momentum,
    "softmax_momentum_099": softmax_momentum,
    "bncnn_momentum_099": bncnn_momentum,
    "mlp_adamw_wd": mlp_adamw_wd,
    "transformer_adamw_wd": transformer_adamw_wd,
    "digits_softmax_sgd_l2": digits_softmax_l2,
    "transformer_adamw_lr_high": transformer_lr_high,
    "mlp_tanh_adam_lr_high": mlp_adam_lr_high,
    "mlp_adam_healthy": mlp_healthy,
    "bncnn_sgd_healthy": bncnn_healthy,
    "gru_adam_healthy": gru_healthy,
    "transformer_adamw_healthy": transformer_healthy,
    "cnn1d_sgd_healthy": cnn1d_healthy,
    "linreg_gd_converged": linreg_converged,
    "softmax_lbfgs_gd_converged": softmax_converged,
    "mlp_regression_converged": mlp_regression_converged,
    "tanh_zero_init_saddle": tanh_zero_saddle,
    "deep_linear_small_init_saddle": deep_linear_saddle,
    "tanh_deep_zero_degenerate": tanh_deep_zero_degenerate,
    "sigmoid_deep_vanishing": sigmoid_deep,
    "linreg_sgd_noise_floor": linreg_noise,
    "softmax_sgd_noise_floor": softmax_noise,
    "sigmoid_mse_saturated": sigmoid_mse_saturated,
    "mlp_softmax_mse_saturated": softmax_mse_saturated,
    "mlp_sum_lr_small": mlp_sum_lr_small,
    "transformer_adamw_lr_small": transformer_lr_small,
    "logreg_bce_lr_small": logreg_bce_lr_small,
    "bncnn_sgd_lr_small": bncnn_lr_small,
    "lstm_sgd_lr_small": lstm_lr_small,
    "linreg_gd_diverging": linreg_diverging,
    "mlp_tanh_lr_raised_diverging": mlp_lr_raised,
}

CAUSE_ORDER = [c for c in ld.CAUSES]
NOT_STALLED = ("progressing", "converged")


# ---------------------------------------------------------------------------------------------
# the runner
# ---------------------------------------------------------------------------------------------
def ground_truth_evidence(case: Case) -> dict[str, Any]:
    """Independent numbers behind the label (``--validate``): dead ReLU fraction per layer, the
    first/last layer's relative gradient, the full-data gradient norm and, for small models at
    critical points, the Hessian's extreme eigenvalues by power iteration."""
    model, out = copy.deepcopy(case.model), {}
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if relus:
        peaks: dict[int, torch.Tensor] = {}

        def hook(i):
            def f(mod, inp, o):
                per_unit = o.transpose(0, 1).reshape(o.shape[1], -1).amax(1)
                peaks[i] = per_unit if i not in peaks else torch.maximum(peaks[i], per_unit)

            return f

        hs = [m.register_forward_hook(hook(i)) for i, m in enumerate(relus)]
        with torch.no_grad():
            for x, _ in case.batches:
                model(x)
        for h in hs:
            h.remove()
        out["dead_fraction_per_relu"] = [
            round(float((peaks[i] <= 0).float().mean()), 3) for i in sorted(peaks)
        ]
    ps = [p for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    for x, y in case.batches:
        (case.loss_fn(model(x), y) / len(case.batches)).backward()
    g = [p.grad.detach().clone() for p in ps]
    out["grad_norm"] = float(torch.sqrt(sum((a * a).sum() for a in g)))
    weights = [(p, gp) for p, gp in zip(ps, g) if p.dim() >= 2]
    if len(weights) >= 2:
        rel = [float(gp.norm() / max(float(p.detach().norm()), 1e-30)) for p, gp in weights]
        out["relative_grad_first_last"] = [rel[0], rel[-1]]
    n = sum(p.numel() for p in ps)
    if case.cause in ("saddle_point", "degenerate", "converged") and n <= 5000:

        def hvp(v):
            model.zero_grad()
            acc = [torch.zeros_like(p) for p in ps]
            for x, y in case.batches:
                gr = torch.autograd.grad(
                    case.loss_fn(model(x), y) / len(case.batches), ps, create_graph=True
                )
                hv = torch.autograd.grad(gr, ps, v)
                acc = [a + h for a, h in zip(acc, hv)]
            return acc

        def power(shift: float, iters: int = 150) -> float:
            """The eigenvalue of H farthest from ``shift`` (power iteration on H - shift I)."""
            v = [
                torch.randn(p.shape, generator=torch.Generator().manual_seed(i))
                for i, p in enumerate(ps)
            ]
            lam = 0.0
            for _ in range(iters):
                nv = torch.sqrt(sum((a * a).sum() for a in v))
                if float(nv) == 0.0:
                    return shift
                v = [a / nv for a in v]
                hv = [h - shift * a for h, a in zip(hvp(v), v)]
                lam = float(sum((a * b).sum() for a, b in zip(hv, v))) + shift
                v = hv
            return lam

        top = abs(power(0.0))
        out["hessian_lambda_max"] = power(-1.05 * top)
        out["hessian_lambda_min"] = power(1.05 * top)
    return out


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def branch(case: Case, snap: tuple, apply: Callable | None) -> tuple[float, list[float], str]:
    """Continue from the exact snapshot for the horizon over the same batch order."""
    model, opt = copy.deepcopy(snap)
    torch.manual_seed(case.seed + 7919)
    note = ""
    if apply is not None:
        try:
            opt = apply(model, opt)
        except ld.NeedsCodeChange:
            note = "needs a code change: continued unchanged"
        except Exception as e:  # noqa: BLE001 - an apply() that crashes is a finding, recorded
            note = f"apply raised {type(e).__name__}: {e}"
    curve = train(model, opt, case.loss_fn, case.batches, case.continue_order)
    end = (
        full_loss(model, case.loss_fn, case.batches)
        if all(math.isfinite(v) for v in curve)
        else float("nan")
    )
    return end, curve, note


def _state_equal(a: dict, b: dict) -> bool:
    if a.keys() != b.keys():
        return False
    return all(
        torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k] for k in a
    )


def _opt_state_equal(a: dict, b: dict) -> bool:
    if a["param_groups"] != b["param_groups"] or a["state"].keys() != b["state"].keys():
        return False
    for k in a["state"]:
        sa, sb = a["state"][k], b["state"][k]
        if sa.keys() != sb.keys():
            return False
        for n in sa:
            x, y = sa[n], sb[n]
            if isinstance(x, torch.Tensor):
                if not torch.equal(x, y):
                    return False
            elif x != y:
                return False
    return True


def relative_drop(history: list[float]) -> float:
    """(mean of the first tenth - mean of the last tenth) / mean of the first tenth, over the history."""
    h = np.asarray(history[-HISTORY:], dtype=float)
    k = max(len(h) // 10, 1)
    a, b = h[:k].mean(), h[-k:].mean()
    return float((a - b) / abs(a)) if a else 0.0


def evaluate(case: Case, with_doctor: bool = True) -> dict[str, Any]:
    model, opt = case.model, case.optimizer
    hist = case.history[-HISTORY:]
    snap = copy.deepcopy((model, opt))
    loss0 = full_loss(model, case.loss_fn, case.batches)
    rec: dict[str, Any] = {
        "family": case.family,
        "seed": case.seed,
        "arch": case.arch,
        "cause": case.cause,
        "remedy": case.remedy_text,
        "horizon": case.horizon,
        "steps_trained": case.info["steps"],
        "loss_at_stall": loss0,
        "history_last": hist[-1] if hist else None,
        "history_relative_drop": relative_drop(hist),
    }
    if not with_doctor:
        rec["evidence"] = ground_truth_evidence(case)
    if has_batchnorm(model):
        m = copy.deepcopy(model).eval()
        rec["eval_mode_loss"] = full_loss(m, case.loss_fn, case.batches)
    if with_doctor:
        state = copy.deepcopy(model.state_dict())
        ostate = copy.deepcopy(opt.state_dict())
        rng = torch.get_rng_state()
        start = time.perf_counter()
        try:
            d = ld.diagnose(
                model,
                case.loss_fn,
                case.batches,
                history=hist,
                optimizer=opt,
                checkpoint=case.checkpoint,
            )
            err = None
        except Exception as e:  # noqa: BLE001 - a crash is a finding
            d, err = None, f"{type(e).__name__}: {e}"
        rec["seconds"] = time.perf_counter() - start
        rec["model_untouched"] = _state_equal(state, model.state_dict())
        rec["optimizer_untouched"] = _opt_state_equal(ostate, opt.state_dict())
        rec["rng_untouched"] = torch.equal(rng, torch.get_rng_state())
        rec["mode_untouched"] = model.training == snap[0].training
        if d is None:
            rec.update(
                predicted="ERROR",
                error=err,
                stalled=None,
                summary=err,
                top_text=None,
                top_action=None,
            )
            apply = None
        else:
            top = d.prescriptions[0] if d.prescriptions else None
            rec.update(
                predicted=d.cause,
                stalled=bool(d.stalled),
                summary=d.summary,
                verified=d.verified,
                top_text=None if top is None else top.text,
                top_action=None
                if top is None
                else ld.doctor.prescriptions.Prescription.to_dict(top)["action"],
                top_applicable=None if top is None else top.applicable,
                prescriptions=[p.text for p in d.prescriptions],
                cost=dict(d.cost),
            )
            apply = None if top is None else top.apply
    u, ucurve, _ = branch(case, snap, None)
    r, rcurve, _ = branch(case, snap, case.remedy)
    rec.update(unchanged=u, remedy_loss=r)
    stalled_truth = case.cause not in NOT_STALLED
    u_ref = u if _finite(u) else loss0
    if stalled_truth:
        rec["gt_valid"] = _finite(r) and r < 0.95 * u_ref
    elif case.cause == "progressing":
        rec["gt_valid"] = _finite(u) and u < 0.95 * loss0
    else:
        rec["gt_valid"] = _finite(u) and abs(u - loss0) <= 1e-3 * abs(loss0) + 1e-9
    if with_doctor:
        if apply is not None:
            p, pcurve, note = branch(case, snap, apply)
        else:
            p, note = u, "no prescription (doctor failed): continued unchanged"
        rec.update(prescribed_loss=p, apply_note=note)
        rec["harmful"] = (not _finite(p)) or (_finite(u) and p > u * (1 + HARM_TOL) + 1e-12)
        if stalled_truth:
            gap = u_ref - r
            rec["fixed"] = _finite(p) and gap > 0 and p <= u_ref - 0.5 * gap
            rec["gap_closed"] = (u_ref - p) / gap if (_finite(p) and gap > 0) else None
        if case.cause == "progressing":
            rec["false_alarm"] = bool(rec["stalled"])
        if case.cause in NOT_STALLED:
            ta = rec.get("top_action")
            rec["top_no_change"] = ta is not None and (not ta or ta == {"stop": True})
    return rec


def _f(x: Any, d: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        return f"{x:.{d}g}"
    return str(x)


def report(recs: list[dict[str, Any]], with_doctor: bool) -> str:
    out: list[str] = []
    w = out.append
    w(
        f"{'family':30s} {'seed':>4s} {'arch':11s} {'truth':19s} {'predicted':19s} {'ok':2s} {'sec':>6s} "
        f"{'L_stall':>9s} {'unchanged':>9s} {'remedy':>9s} {'prescr':>9s} {'fix':>4s} {'harm':>4s}  top action"
    )
    for r in recs:
        ok = "" if not with_doctor else ("Y" if r["predicted"] == r["cause"] else "n")
        fix = "-" if "fixed" not in r else ("Y" if r["fixed"] else "n")
        harm = "-" if "harmful" not in r else ("H" if r["harmful"] else ".")
        gt = "" if r["gt_valid"] else "  [GROUND TRUTH NOT CONFIRMED]"
        w(
            f"{r['family']:30s} {r['seed']:4d} {r['arch']:11s} {r['cause']:19s} {r.get('predicted', '-'):19s} {ok:2s} "
            f"{_f(r.get('seconds'), 3):>6s} {_f(r['loss_at_stall']):>9s} {_f(r['unchanged']):>9s} "
            f"{_f(r['remedy_loss']):>9s} {_f(r.get('prescribed_loss')):>9s} {fix:>4s} {harm:>4s}  "
            f"{json.dumps(r.get('top_action')) if with_doctor else ''}{gt}"
        )
    w("")
    valid = sum(r["gt_valid"] for r in recs)
    w(
        f"ground truth confirmed (remedy >= 5% below unchanged / healthy falls >= 5% / converged moves < 0.1%): "
        f"{valid}/{len(recs)}"
    )
    if not with_doctor:
        return "\n".join(out)
    n = len(recs)
    right = sum(r["predicted"] == r["cause"] for r in recs)
    truths = [c for c in CAUSE_ORDER if any(r["cause"] == c for r in recs)]
    preds = [c for c in CAUSE_ORDER + ["ERROR"] if any(r["predicted"] == c for r in recs)]
    abbrev = {c: c[:6] for c in preds}
    w("")
    w("confusion matrix (rows: truth, columns: predicted)")
    w(f"{'':20s}" + "".join(f"{abbrev[c]:>7s}" for c in preds) + "   right")
    for t in truths:
        row = [r for r in recs if r["cause"] == t]
        cnt = Counter(r["predicted"] for r in row)
        w(f"{t:20s}" + "".join(f"{(cnt[c] or '.'):>7}" for c in preds) + f"   {cnt[t]}/{len(row)}")
    w("columns: " + ", ".join(f"{abbrev[c]}={c}" for c in preds))
    w("")
    stalled = [r for r in recs if r["cause"] not in NOT_STALLED]
    fixed = sum(bool(r.get("fixed")) for r in stalled)
    harmful = [r for r in recs if r.get("harmful")]
    healthy = [r for r in recs if r["cause"] == "progressing"]
    alarms = sum(bool(r.get("false_alarm")) for r in healthy)
    nochange = sum(bool(r.get("top_no_change")) for r in healthy)
    conv = [r for r in recs if r["cause"] == "converged"]
    conv_nochange = sum(bool(r.get("top_no_change")) for r in conv)
    codechange = sum("code change" in (r.get("apply_note") or "") for r in stalled)
    w(f"cause accuracy:                 {right}/{n} = {right / n:.1%}")
    w(
        f"  on stalled runs:              {sum(r['predicted'] == r['cause'] for r in stalled)}/{len(stalled)}"
    )
    w(
        f"fix rate (stalled runs):        {fixed}/{len(stalled)} = {fixed / max(len(stalled), 1):.1%}"
        f"   (top prescription needed a code change, counted unchanged: {codechange})"
    )
    sv = [r for r in stalled if r["gt_valid"]]
    w(f"  on ground-truth-confirmed:    {sum(bool(r.get('fixed')) for r in sv)}/{len(sv)}")
    w(
        f"harmful top prescriptions:      {len(harmful)}/{n}  (NaN/Inf: "
        f"{sum(not _finite(r.get('prescribed_loss')) for r in harmful)})"
    )
    w(
        f"healthy runs called stalled:    {alarms}/{len(healthy)} = {alarms / max(len(healthy), 1):.1%}"
    )
    w(f"healthy runs, top 'no change':  {nochange}/{len(healthy)}")
    w(f"converged runs, top no change/stop: {conv_nochange}/{len(conv)}")
    w(
        f"diagnose left model/optimizer/RNG/mode untouched: "
        f"{sum(bool(r.get('model_untouched')) for r in recs)}/{n}, {sum(bool(r.get('optimizer_untouched')) for r in recs)}/{n}, "
        f"{sum(bool(r.get('rng_untouched')) for r in recs)}/{n}, {sum(bool(r.get('mode_untouched')) for r in recs)}/{n}"
    )
    w("")
    w("diagnose seconds per architecture (mean, max, runs)")
    by = defaultdict(list)
    for r in recs:
        by[r["arch"]].append(r["seconds"])
    for a, s in sorted(by.items()):
        w(f"  {a:12s} {np.mean(s):7.2f} {np.max(s):7.2f} {len(s):4d}")
    w("")
    w("by family: right / fixed / harmful")
    fams = list(dict.fromkeys(r["family"] for r in recs))
    for fam in fams:
        rows = [r for r in recs if r["family"] == fam]
        fx = (
            "-"
            if rows[0]["cause"] in NOT_STALLED
            else f"{sum(bool(r.get('fixed')) for r in rows)}/{len(rows)}"
        )
        w(
            f"  {fam:30s} {rows[0]['cause']:19s} {sum(r['predicted'] == r['cause'] for r in rows)}/{len(rows)}  "
            f"{fx:>4s}  {sum(bool(r.get('harmful')) for r in rows)}  predicted: "
            f"{', '.join(r['predicted'] for r in rows)}"
        )
    w("")
    w("misses (truth -> predicted: the doctor's summary; top prescription)")
    for r in recs:
        if r["predicted"] != r["cause"]:
            w(f"  {r['family']} seed {r['seed']}: {r['cause']} -> {r['predicted']}: {r['summary']}")
            w(f"      top: {r.get('top_text')}")
    harm_lines = [r for r in recs if r.get("harmful")]
    if harm_lines:
        w("")
        w("harmful top prescriptions")
        for r in harm_lines:
            w(
                f"  {r['family']} seed {r['seed']}: {r.get('top_text')} -> {_f(r.get('prescribed_loss'))} "
                f"vs unchanged {_f(r['unchanged'])}"
            )
    notes = [r for r in recs if r.get("apply_note") and "code change" not in r["apply_note"]]
    bad = [
        r
        for r in recs
        if not (
            r.get("model_untouched")
            and r.get("optimizer_untouched")
            and r.get("rng_untouched")
            and r.get("mode_untouched")
        )
    ]
    if notes or bad:
        w("")
        w("possible bugs")
        for r in notes:
            w(f"  {r['family']} seed {r['seed']}: {r['apply_note']}")
        for r in bad:
            w(
                f"  {r['family']} seed {r['seed']}: diagnose changed model={not r['model_untouched']} "
                f"optimizer={not r['optimizer_untouched']} rng={not r['rng_untouched']} mode={not r['mode_untouched']}"
            )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--families", default="", help="comma-separated substrings of family keys")
    ap.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    ap.add_argument("--validate", action="store_true", help="ground truth only (no doctor)")
    ap.add_argument("--json", default=None, help="write every record here")
    ap.add_argument("--list", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.list:
        for k, f in FAMILIES.items():
            print(f"{k:32s} {(f.__doc__ or '').strip().splitlines()[0] if f.__doc__ else ''}")
        return
    subs = [s for s in args.families.split(",") if s]
    fams = [k for k in FAMILIES if not subs or any(s in k for s in subs)]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    recs = []
    started = time.perf_counter()
    for fam in fams:
        for seed in seeds:
            t0 = time.perf_counter()
            case = FAMILIES[fam](seed)
            t_build = time.perf_counter() - t0
            rec = evaluate(case, with_doctor=not args.validate)
            rec["build_seconds"] = t_build
            recs.append(rec)
            pred = rec.get("predicted", "-")
            print(
                f"[{time.perf_counter() - started:7.1f}s] {fam} {seed}: truth {case.cause}, predicted {pred}, "
                f"loss {_f(rec['loss_at_stall'])} -> unchanged {_f(rec['unchanged'])} / remedy "
                f"{_f(rec['remedy_loss'])} / prescribed {_f(rec.get('prescribed_loss'))}; "
                f"drop {rec['history_relative_drop']:+.3f}; gt {'ok' if rec['gt_valid'] else 'NOT CONFIRMED'}"
                + (f"; {rec['seconds']:.1f}s; {rec.get('top_text')}" if "seconds" in rec else "")
                + (f"; evidence {json.dumps(rec['evidence'])}" if "evidence" in rec else ""),
                flush=True,
            )
    print()
    print(report(recs, with_doctor=not args.validate))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(recs, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
