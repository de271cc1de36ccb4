"""A held-out validation set for the stall doctor: real training runs, stopped where they stall.

Each scenario family trains a real model (MLPs, a 1-D CNN and a GRU on MNIST-1D, a BatchNorm CNN
and a residual BatchNorm CNN on scikit-learn's digits, a 2-layer causal transformer with AdamW on a
synthetic token task, linear/logistic regression, an Elman RNN) with a common optimizer setting
(SGD with and without momentum/Nesterov, Adam, AdamW, RMSprop, Adagrad) until it stalls for a
known reason, and records the ground-truth cause, the remedy an expert would apply, and a horizon.
It was built independently of the doctor's own scenarios, rules and thresholds.

For every case the runner

1. calls ``ld.diagnose(model, loss_fn, data, history=last 240 losses, optimizer=opt,
   checkpoint=...)`` with its defaults, and checks that it left the parameters, buffers, the
   optimizer state, the global RNG and every module's train/eval mode exactly as they were;
2. continues training from the stalled state for the horizon over the same batch order, three
   times, restoring the exact state (model, optimizer, global RNG) before each: (a) unchanged,
   (b) with the known remedy, (c) with ``d.prescriptions[0].apply(model, opt)`` (a
   ``NeedsCodeChange`` continues unchanged);
3. scores the cause (right/wrong); *fixed*: the prescription closes >= half of the gap between
   unchanged and the remedy; *harmful*: it ends worse than unchanged by > 0.1% or non-finite;
   on healthy runs a false alarm is ``d.stalled`` and the first prescription should be "no
   change" (``not action``).

"Full training loss" is the mean loss over every training sample in the mode the model trains in
(BatchNorm on batch statistics over the training batches, running statistics untouched; dropout
off), and a branch's end value is the mean of that loss at steps H - 2s, H - s and H (s = H // 20).
When continuing unchanged goes non-finite (a diverged run), the unchanged value is the full loss at
the checkpoint the run kept (or at the stall when there is none).

``--validate`` checks the ground truth WITHOUT the doctor: the remedy beats continuing unchanged
by >= 5%, healthy runs keep falling (>= 5% over the horizon), converged runs do not move
(< 0.1%), plus per-cause measurements made here (gradient norms per layer, dead fractions,
saturation, gradient noise, curvature by power iteration, same-batch uphill steps).

Usage::

    python benchmarks/doctor_unseen2.py --validate               # ground truth only, no doctor
    python benchmarks/doctor_unseen2.py --json out.json          # the doctor, scored
    python benchmarks/doctor_unseen2.py --families tf_ --seeds 200
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

torch.set_num_threads(1)

SEEDS = (200, 201, 202)
HISTORY = 240
FIX_SHARE = 0.5  # "fixed": closes at least this share of the unchanged -> remedy gap
HARM_TOL = 1e-3  # "harmful": worse than unchanged by more than 0.1%
REMEDY_MARGIN = 0.05  # the known remedy must beat unchanged by >= 5% (validation)

Remedy = Callable[[nn.Module, torch.optim.Optimizer], torch.optim.Optimizer]


# ------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------
_CACHE: dict[str, Any] = {}


def mnist1d(n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    if "m1d" not in _CACHE:
        from lossdoctor.zoo.mnist1d import mnist1d_arrays

        x, y, _, _ = mnist1d_arrays()
        _CACHE["m1d"] = (torch.from_numpy(x), torch.from_numpy(y))
    x, y = _CACHE["m1d"]
    return x[:n], y[:n]


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits: pixel values 0..16 (raw), integer labels."""
    if "digits" not in _CACHE:
        from sklearn.datasets import load_digits

        d = load_digits()
        _CACHE["digits"] = (
            torch.tensor(d.data, dtype=torch.float32),
            torch.tensor(d.target, dtype=torch.int64),
        )
    return _CACHE["digits"]


def standardize(x: torch.Tensor) -> torch.Tensor:
    return (x - x.mean(0)) / (x.std(0) + 1e-3)


def shuffled(x: torch.Tensor, y: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    return x[perm], y[perm]


def as_batches(
    x: torch.Tensor, y: torch.Tensor, size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def token_task(
    seed: int, n: int = 1536, length: int = 12, vocab: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of random tokens; the target at each position is the largest token so far
    (a running max: needs attention over the whole causal prefix)."""
    g = torch.Generator().manual_seed(1000 + seed)
    x = torch.randint(0, vocab, (n, length), generator=g)
    y = torch.cummax(x, dim=1).values
    return x, y


def adding_task(seed: int, n: int = 1024, length: int = 15) -> tuple[torch.Tensor, torch.Tensor]:
    """The adding problem: inputs (value, marker) per step; the target is the sum of the two
    marked values."""
    g = torch.Generator().manual_seed(2000 + seed)
    values = torch.rand(n, length, generator=g)
    marks = torch.zeros(n, length)
    first = torch.randint(0, length // 2, (n,), generator=g)
    second = torch.randint(length // 2, length, (n,), generator=g)
    marks[torch.arange(n), first] = 1.0
    marks[torch.arange(n), second] = 1.0
    x = torch.stack([values, marks], dim=2)
    y = (values * marks).sum(1, keepdim=True)
    return x, y


# ------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------
def mlp(
    sizes: list[int],
    act: type[nn.Module] = nn.ReLU,
    dropout: float = 0.0,
    out_act: nn.Module | None = None,
) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(act())
            if dropout:
                layers.append(nn.Dropout(dropout))
    if out_act is not None:
        layers.append(out_act)
    return nn.Sequential(*layers)


class CNN1d(nn.Module):
    """A 1-D convnet for 40-sample MNIST-1D signals (its own design: 3 conv layers, pooling)."""

    def __init__(self, channels: int = 12, out_act: nn.Module | None = None):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
            nn.Conv1d(c, 2 * c, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool1d(2),
        )
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * c * 10, 64), nn.ReLU(), nn.Linear(64, 10)
        )
        self.out_act = out_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.head(self.features(x.unsqueeze(1)))
        return z if self.out_act is None else self.out_act(z)


class DigitsBNCNN(nn.Module):
    """Small CNN with BatchNorm for 1x8x8 digits."""

    def __init__(self, c: int = 8):
        super().__init__()
        self.net = nn.Sequential(
            nn.Unflatten(1, (1, 8, 8)),
            nn.Conv2d(1, c, 3, padding=1),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            nn.Conv2d(c, 2 * c, 3, padding=1, stride=2),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * c * 16, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.c2, self.b2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b2(self.c2(F.relu(self.b1(self.c1(x))))))


class ResNetDigits(nn.Module):
    """A small ResNet-style net (stem, two residual blocks, global pooling) for 8x8 digits."""

    def __init__(self, c: int = 12):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU()
        )
        self.blocks = nn.Sequential(Block(c), Block(c))
        self.fc = nn.Linear(c, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.stem(x.view(-1, 1, 8, 8)))
        return self.fc(h.mean(dim=(2, 3)))


class TinyTransformer(nn.Module):
    """2-layer pre-norm causal transformer, tied input/output embeddings."""

    def __init__(self, vocab: int = 10, length: int = 12, d: int = 32, heads: int = 2):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.pos = nn.Parameter(torch.randn(length, d) * 0.02)
        self.layers = nn.ModuleList(
            [
                nn.TransformerEncoderLayer(
                    d, heads, dim_feedforward=64, dropout=0.0, batch_first=True, norm_first=True
                )
                for _ in range(2)
            ]
        )
        self.norm = nn.LayerNorm(d)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x) + self.pos[: x.shape[1]]
        for layer in self.layers:
            h = layer(h, src_mask=self.mask[: x.shape[1], : x.shape[1]], is_causal=True)
        return self.norm(h) @ self.embed.weight.t()


class SeqGRU(nn.Module):
    """GRU over an MNIST-1D signal read as 20 steps of 2 samples."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.gru(x.view(x.shape[0], 20, 2))
        return self.fc(out[:, -1])


class ElmanRNN(nn.Module):
    def __init__(self, hidden: int = 24):
        super().__init__()
        self.rnn = nn.RNN(2, hidden, batch_first=True, nonlinearity="tanh")
        self.fc = nn.Linear(hidden, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.fc(out[:, -1])


def seq_ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every position of a (batch, length, vocab) output."""
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), y.reshape(-1))


def onehot_mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Squared error between probabilities and one-hot integer targets (summed over classes)."""
    return ((out - F.one_hot(y, out.shape[-1]).to(out.dtype)) ** 2).sum(-1).mean()


# ------------------------------------------------------------------------------------------------
# Training and evaluation in the training's own mode
# ------------------------------------------------------------------------------------------------
DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


class measuring:
    """Dropout off, buffers (BatchNorm running statistics) saved and restored, modes restored."""

    def __init__(self, model: nn.Module):
        self.model = model

    def __enter__(self) -> nn.Module:
        self.modes = [(m, m.training) for m in self.model.modules()]
        self.buffers = [(b, b.detach().clone()) for b in self.model.buffers()]
        for m in self.model.modules():
            if isinstance(m, DROPOUTS):
                m.eval()
        return self.model

    def __exit__(self, *exc: Any) -> None:
        with torch.no_grad():
            for b, v in self.buffers:
                b.copy_(v)
        for m, t in self.modes:
            m.training = t


def full_loss(model: nn.Module, loss_fn: Callable, batches: list) -> float:
    """Mean loss over every training sample (batch-size weighted), in the training's mode."""
    if any(not torch.isfinite(p).all() for p in model.parameters()):
        return float("nan")
    total, n = 0.0, 0
    with torch.no_grad(), measuring(model):
        for x, y in batches:
            total += float(loss_fn(model(x), y)) * len(x)
            n += len(x)
    return total / n


def batch_stream(data: Any, start: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The batches training sees from step ``start`` on: a list is cycled in order; a DataLoader
    re-iterated epoch by epoch (its shuffling draws from the global RNG)."""
    if isinstance(data, list):
        k = start
        while True:
            yield data[k % len(data)]
            k += 1
    else:
        if start % len(data):
            raise ValueError("DataLoader cases must stall at an epoch boundary")
        while True:
            yield from data


def train_step(
    model: nn.Module, opt: torch.optim.Optimizer, loss_fn: Callable, batch: tuple
) -> float:
    x, y = batch
    opt.zero_grad()
    loss = loss_fn(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.detach())


def train(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    loss_fn: Callable,
    stream: Iterator,
    steps: int,
    losses: list[float],
    stop_on_nan: bool = True,
) -> None:
    for _ in range(steps):
        loss = train_step(model, opt, loss_fn, next(stream))
        losses.append(loss)
        if stop_on_nan and not math.isfinite(loss):
            return


# ------------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------------
@dataclass
class Case:
    family: str
    seed: int
    arch: str
    cause: str
    remedy_text: str
    horizon: int
    model: nn.Module
    optimizer: torch.optim.Optimizer
    make_optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    loss_fn: Callable
    data: Any  # what the user trains on and hands to diagnose: a list of batches or a DataLoader
    full_batches: list  # every training sample, for the full training loss
    history: list[float]
    step: int  # steps trained so far: where the batch order continues
    remedy: Remedy | None  # None: continuing unchanged is the right thing (healthy, converged)
    checkpoint: dict | None = None
    facts: dict = field(default_factory=dict)


@dataclass
class Family:
    key: str
    arch: str
    cause: str
    remedy: str
    horizon: int
    build: Callable[[int], Case]
    note: str = ""


FAMILIES: dict[str, Family] = {}


def family(key: str, arch: str, cause: str, remedy: str, horizon: int, note: str = "") -> Callable:
    def register(build: Callable[[int], Case]) -> Callable[[int], Case]:
        FAMILIES[key] = Family(key, arch, cause, remedy, horizon, build, note)
        return build

    return register


def run_to_stall(
    key: str,
    seed: int,
    model: nn.Module,
    make_opt: Callable,
    loss_fn: Callable,
    data: Any,
    full_batches: list,
    steps: int,
    remedy: Remedy | None,
    *,
    events: dict[int, Callable] | None = None,
    checkpoint_at: int | None = None,
    stop: Callable[[list[float]], bool] | None = None,
    opt: torch.optim.Optimizer | None = None,
    losses: list[float] | None = None,
    start: int = 0,
) -> Case:
    """Train up to ``steps`` steps from step ``start`` and wrap the stalled run as a Case.

    ``events[k](model, opt)`` runs before step k (the loop changing its lr, say); a checkpoint
    (state_dict) is kept at ``checkpoint_at``; training stops early on a non-finite loss or when
    ``stop(losses)`` says so (the user noticing the stall)."""
    fam = FAMILIES[key]
    opt = opt if opt is not None else make_opt(model)
    losses = [] if losses is None else losses
    stream = batch_stream(data, start)
    checkpoint = None
    done = start
    while done < start + steps:
        if checkpoint_at == done:
            checkpoint = copy.deepcopy(model.state_dict())
        if events and done in events:
            events[done](model, opt)
        losses.append(train_step(model, opt, loss_fn, next(stream)))
        done += 1
        if not math.isfinite(losses[-1]) or (stop is not None and stop(losses)):
            break
    return Case(
        family=key,
        seed=seed,
        arch=fam.arch,
        cause=fam.cause,
        remedy_text=fam.remedy,
        horizon=fam.horizon,
        model=model,
        optimizer=opt,
        make_optimizer=make_opt,
        loss_fn=loss_fn,
        data=data,
        full_batches=full_batches,
        history=losses[-HISTORY:],
        step=done,
        remedy=remedy,
        checkpoint=checkpoint,
    )


def set_lr(lr: float) -> Callable:
    def event(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        for g in opt.param_groups:
            g["lr"] = lr

    return event


# -- remedies ------------------------------------------------------------------------------------
def lr_times(f: float) -> Remedy:
    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for g in opt.param_groups:
            g["lr"] *= f
        return opt

    return remedy


def set_momentum(mu: float) -> Remedy:
    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for g in opt.param_groups:
            g["momentum"] = mu
        return opt

    return remedy


def set_weight_decay(wd: float) -> Remedy:
    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for g in opt.param_groups:
            g["weight_decay"] = wd
        return opt

    return remedy


def switch_to(cls: type, **kw: Any) -> Remedy:
    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return cls(model.parameters(), **kw)

    return remedy


def restore_then(state: dict, lr: float) -> Remedy:
    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        model.load_state_dict(state)
        opt.state.clear()
        for g in opt.param_groups:
            g["lr"] = lr
        return opt

    return remedy


def reinitialize(seed: int, then: Remedy | None = None) -> Remedy:
    """Restart from torch's default initialization (every module's reset_parameters)."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            for m in model.modules():
                if hasattr(m, "reset_parameters") and m is not model:
                    m.reset_parameters()
        opt.state.clear()
        return then(model, opt) if then else opt

    return remedy


def dead_relu_rows(model: nn.Module, batches: list) -> dict[str, torch.Tensor]:
    """For each Linear followed by a ReLU in an nn.Sequential: the output units that are <= 0 on
    every training sample (name of the Linear's weight -> bool mask)."""
    seq = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Sequential)]
    found: dict[str, torch.Tensor] = {}
    for name, s in seq:
        mods = list(s.named_children())
        for (ln, lin), (_, act) in zip(mods, mods[1:]):
            if isinstance(lin, nn.Linear) and isinstance(act, nn.ReLU):
                found[(name + "." if name else "") + ln] = None  # type: ignore[assignment]
    if not found:
        return {}
    peaks: dict[str, torch.Tensor] = {}
    hooks = []
    modules = dict(model.named_modules())
    for lname in found:

        def hook(mod: nn.Module, inp: Any, out: torch.Tensor, lname: str = lname) -> None:
            peak = out.detach().reshape(-1, out.shape[-1]).max(0).values
            peaks[lname] = peak if lname not in peaks else torch.maximum(peaks[lname], peak)

        hooks.append(modules[lname].register_forward_hook(hook))
    with torch.no_grad(), measuring(model):
        for x, _ in batches:
            model(x)
    for h in hooks:
        h.remove()
    return {lname + ".weight": peaks[lname] <= 0 for lname in found}


def reinit_dead_units(batches: list, seed: int) -> Remedy:
    """Re-draw the incoming weights of the ReLU units dead on all the data (Kaiming-uniform, as
    torch's Linear default), zero their bias, and drop their optimizer state."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        dead = dead_relu_rows(model, batches)
        params = dict(model.named_parameters())
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for wname, mask in dead.items():
                if not mask.any():
                    continue
                w = params[wname]
                bound = 1 / math.sqrt(w.shape[1])
                w[mask] = (torch.rand(int(mask.sum()), w.shape[1], generator=g) * 2 - 1) * bound
                b = params.get(wname[: -len("weight")] + "bias")
                if b is not None:
                    b[mask] = 0.0
                for p in (w, b):
                    if p is not None:
                        opt.state.pop(p, None)
        return opt

    return remedy


def flat_grad(
    model: nn.Module, loss_fn: Callable, batches: list, create_graph: bool = False
) -> tuple[list[torch.Tensor], torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    n = sum(len(x) for x, _ in batches)
    total = sum(loss_fn(model(x), y) * (len(x) / n) for x, y in batches)
    grads = torch.autograd.grad(total, params, create_graph=create_graph)
    return params, torch.cat([g.reshape(-1) for g in grads])


def hvp_operator(
    model: nn.Module, loss_fn: Callable, batches: list
) -> tuple[Callable, torch.Tensor]:
    """(v -> H v, gradient) of the full loss, in float64 arithmetic on the model as it is (its mode
    kept, dropout off)."""
    params, g = flat_grad(model, loss_fn, batches, create_graph=True)

    def hv(v: torch.Tensor) -> torch.Tensor:
        out = torch.autograd.grad(g, params, grad_outputs=v.to(g.dtype), retain_graph=True)
        return torch.cat([o.reshape(-1) for o in out]).detach()

    return hv, g.detach()


def _unflatten(v: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor]:
    out, i = [], 0
    for p in params:
        out.append(v[i : i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()
    return out


def extreme_eigs(
    model: nn.Module, loss_fn: Callable, batches: list, iters: int = 60, seed: int = 0
) -> tuple[float, float, torch.Tensor]:
    """λ_max and λ_min (with its eigenvector) by Lanczos with full reorthogonalization."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    # the fused CPU attention kernels have no double backward: Hessian products use the math one
    with measuring(model), sdpa_kernel(SDPBackend.MATH):
        hv, g = hvp_operator(model, loss_fn, batches)
        n = g.numel()
        k = min(iters, n)
        gen = torch.Generator().manual_seed(seed)
        q = torch.randn(n, generator=gen)
        q /= q.norm()
        Q = [q]
        alphas, betas = [], []
        for j in range(k):
            w = hv(Q[-1])
            a = float(w @ Q[-1])
            alphas.append(a)
            basis = torch.stack(Q)
            w = w - basis.t() @ (basis @ w)
            w = w - basis.t() @ (basis @ w)
            b = float(w.norm())
            if j == k - 1 or b < 1e-10:
                break
            betas.append(b)
            Q.append(w / b)
        T = torch.diag(torch.tensor(alphas, dtype=torch.float64))
        for i, b in enumerate(betas[: len(alphas) - 1]):
            T[i, i + 1] = T[i + 1, i] = b
        evals, evecs = torch.linalg.eigh(T)
        basis = torch.stack(Q[: len(alphas)]).double()
        vmin = (basis.t() @ evecs[:, 0]).float()
    return float(evals[-1]), float(evals[0]), vmin


def escape_saddle(batches: list, loss_fn: Callable) -> Remedy:
    """The lecture's escape: a step along the Hessian's most negative eigenvector, its sign and
    length chosen by a line search on the full loss."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        _, lam_min, v = extreme_eigs(model, loss_fn, batches, iters=40)
        params = [p for p in model.parameters() if p.requires_grad]
        base = [p.detach().clone() for p in params]
        best = (full_loss(model, loss_fn, batches), 0.0)
        for t in (0.03, 0.1, 0.3, 1.0, 3.0):
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    for p, b, d in zip(params, base, _unflatten(sign * t * v, params)):
                        p.copy_(b + d)
                loss = full_loss(model, loss_fn, batches)
                if loss < best[0]:
                    best = (loss, sign * t)
        with torch.no_grad():
            for p, b, d in zip(params, base, _unflatten(best[1] * v, params)):
                p.copy_(b + d)
        opt.state.clear()
        return opt

    return remedy


# ------------------------------------------------------------------------------------------------
# Scenario families
# ------------------------------------------------------------------------------------------------
def sgd(lr: float, **kw: Any) -> Callable:
    return lambda m: torch.optim.SGD(m.parameters(), lr=lr, **kw)


def adam(lr: float, **kw: Any) -> Callable:
    return lambda m: torch.optim.Adam(m.parameters(), lr=lr, **kw)


def adamw(lr: float, **kw: Any) -> Callable:
    return lambda m: torch.optim.AdamW(m.parameters(), lr=lr, **kw)


def m1d_data(seed: int, batch: int, n: int = 4000) -> tuple[list, list]:
    x, y = shuffled(*mnist1d(n), seed)
    return as_batches(x, y, batch), as_batches(x, y, 500)


def digits_data(seed: int, batch: int, scale: str = "unit") -> tuple[list, list]:
    x, y = digits()
    if scale == "unit":
        x = x / 16.0
    elif scale == "standard":
        x = standardize(x)
    x, y = shuffled(x, y, seed)
    return as_batches(x, y, batch), as_batches(x, y, 600)


# -- healthy: the loss keeps falling ------------------------------------------------------------------
@family("m1d_cnn_adam_progress", "1-D CNN / MNIST-1D", "progressing", "none (keep training)", 200)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 100)
    model = CNN1d(12)
    return run_to_stall(
        "m1d_cnn_adam_progress", seed, model, adam(1e-3), F.cross_entropy, data, full, 160, None
    )


@family(
    "digits_bncnn_nesterov_progress", "BN CNN / digits", "progressing", "none (keep training)", 150
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 64)
    model = DigitsBNCNN(8)
    return run_to_stall(
        "digits_bncnn_nesterov_progress",
        seed,
        model,
        sgd(0.01, momentum=0.9, nesterov=True),
        F.cross_entropy,
        data,
        full,
        60,
        None,
    )


@family(
    "tf_adamw_progress", "transformer / running max", "progressing", "none (keep training)", 200
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = token_task(seed)
    data, full = as_batches(x, y, 64), as_batches(x, y, 512)
    model = TinyTransformer()
    return run_to_stall(
        "tf_adamw_progress",
        seed,
        model,
        adamw(1e-3, weight_decay=0.01),
        seq_ce,
        data,
        full,
        150,
        None,
    )


@family(
    "m1d_dropout_rmsprop_loader_progress",
    "MLP+dropout / MNIST-1D (DataLoader)",
    "progressing",
    "none (keep training)",
    188,
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = mnist1d(3000)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=64, shuffle=True
    )
    full = as_batches(x, y, 500)
    model = mlp([40, 256, 128, 10], dropout=0.3)
    return run_to_stall(
        "m1d_dropout_rmsprop_loader_progress",
        seed,
        model,
        lambda m: torch.optim.RMSprop(m.parameters(), lr=5e-4),
        F.cross_entropy,
        loader,
        full,
        47 * 4,
        None,
    )


@family(
    "resnet_digits_sgd_progress",
    "ResNet-style BN CNN / digits",
    "progressing",
    "none (keep training)",
    150,
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 32)
    model = ResNetDigits(12)
    return run_to_stall(
        "resnet_digits_sgd_progress",
        seed,
        model,
        sgd(0.02, momentum=0.9),
        F.cross_entropy,
        data,
        full,
        60,
        None,
    )


# -- diverging --------------------------------------------------------------------------------------
@family(
    "rnn_adding_lr_spike_nan",
    "Elman RNN / adding problem",
    "diverging",
    "restore the checkpoint, lr 0.03",
    200,
    "SGD+momentum 0.9 at lr 0.1 for 440 steps (length-6 sequences), then the loop raises the lr 15x (a warm-up peak set too "
    "high): Inf/NaN within ~20 steps; the loop kept a checkpoint at the raise",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = adding_task(seed, length=6)
    data = as_batches(x, y, 64)
    model = ElmanRNN(24)
    case = run_to_stall(
        "rnn_adding_lr_spike_nan",
        seed,
        model,
        sgd(0.1, momentum=0.9),
        F.mse_loss,
        data,
        [(x, y)],
        540,
        None,
        checkpoint_at=440,
        events={440: set_lr(1.5)},
    )
    case.remedy = restore_then(case.checkpoint, 0.03)
    return case


def growing(window: int, factor: float) -> Callable[[list[float]], bool]:
    """The user stops when the loss (mean of ``window`` steps) reached ``factor`` x its lowest."""

    def stop(losses: list[float]) -> bool:
        if len(losses) < 2 * window:
            return False
        means = np.convolve(losses, np.ones(window) / window, mode="valid")
        return bool(means[-1] >= factor * means.min())

    return stop


@family(
    "digits_linreg_sgd_growing",
    "linear regression / digits",
    "diverging",
    "lr x0.45",
    100,
    "least squares (standardized pixels -> digit value), full-batch gradient descent at lr = 2.03/λ_max "
    "of the Hessian: the loss falls, then the top direction grows; stopped at 4x its lowest",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = digits()
    x, y = shuffled(standardize(x), (y.float() - 4.5) / 2.9, seed)
    y = y.unsqueeze(1)
    lam = float(torch.linalg.eigvalsh(2 * x.t() @ x / len(x))[-1])
    model = nn.Linear(64, 1)
    return run_to_stall(
        "digits_linreg_sgd_growing",
        seed,
        model,
        sgd(2.03 / lam),
        F.mse_loss,
        [(x, y)],
        [(x, y)],
        1000,
        lr_times(0.45),
        stop=growing(8, 4.0),
    )


@family(
    "m1d_tanh_lr_spike_growing",
    "tanh MLP / MNIST-1D",
    "diverging",
    "restore the checkpoint, lr 0.02",
    200,
    "SGD+momentum 0.9 at lr 0.02 for 300 steps, lr raised 25x; stopped 40 steps later while the loss "
    "still grows; the loop kept a checkpoint at the raise",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 128)
    model = mlp([40, 150, 150, 10], act=nn.Tanh)
    case = run_to_stall(
        "m1d_tanh_lr_spike_growing",
        seed,
        model,
        sgd(0.02, momentum=0.9),
        F.cross_entropy,
        data,
        full,
        340,
        None,
        checkpoint_at=300,
        events={300: set_lr(0.5)},
    )
    case.remedy = restore_then(case.checkpoint, 0.02)
    return case


# -- oscillation ------------------------------------------------------------------------------------
@family(
    "digits_bncnn_adam_osc",
    "BN CNN / digits",
    "oscillation",
    "lr x0.1",
    150,
    "Adam at lr 0.2 on a BatchNorm CNN: the loss bounces between 0.05 and 0.7",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 64)
    model = DigitsBNCNN(8)
    return run_to_stall(
        "digits_bncnn_adam_osc",
        seed,
        model,
        adam(0.2),
        F.cross_entropy,
        data,
        full,
        300,
        lr_times(0.1),
    )


@family(
    "m1d_logreg_sgd_bounce",
    "logistic regression / MNIST-1D",
    "oscillation",
    "lr x0.1",
    200,
    "multinomial logistic regression, SGD (no momentum) at lr 10 on batches of 500: far past 2/λ_max "
    "near the start; cross-entropy's curvature falls with the logits so the loss bounces, not blows up",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 500)
    model = nn.Linear(40, 10)
    return run_to_stall(
        "m1d_logreg_sgd_bounce",
        seed,
        model,
        sgd(10.0),
        F.cross_entropy,
        data,
        full,
        400,
        lr_times(0.1),
    )


@family(
    "m1d_mlp_adam_osc",
    "MLP / MNIST-1D",
    "oscillation",
    "lr x0.1",
    200,
    "Adam at lr 0.03 (beta2 0.99) on a 40-256-256-10 ReLU MLP, batch 256, 1000 steps: the loss bounces around 0.3",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 256)
    model = mlp([40, 256, 256, 10])
    return run_to_stall(
        "m1d_mlp_adam_osc",
        seed,
        model,
        adam(0.03, betas=(0.9, 0.99)),
        F.cross_entropy,
        data,
        full,
        1000,
        lr_times(0.1),
    )


# -- momentum too high ------------------------------------------------------------------------------------
@family(
    "m1d_cnn_sgd_mom995",
    "1-D CNN / MNIST-1D",
    "momentum_too_high",
    "momentum 0.9 (same lr)",
    200,
    "SGD lr 0.01 with heavy-ball momentum 0.995 (effective step 2.0), 800 steps: the loss rings around 0.8",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 100)
    model = CNN1d(12)
    return run_to_stall(
        "m1d_cnn_sgd_mom995",
        seed,
        model,
        sgd(0.01, momentum=0.995),
        F.cross_entropy,
        data,
        full,
        800,
        set_momentum(0.9),
    )


@family(
    "m1d_mlp_nesterov995",
    "MLP / MNIST-1D",
    "momentum_too_high",
    "momentum 0.9 (same lr)",
    200,
    "40-200-200-10 ReLU MLP, SGD lr 0.02 with Nesterov momentum 0.995, batch 128, 600 steps",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 128)
    model = mlp([40, 200, 200, 10])
    return run_to_stall(
        "m1d_mlp_nesterov995",
        seed,
        model,
        sgd(0.02, momentum=0.995, nesterov=True),
        F.cross_entropy,
        data,
        full,
        600,
        set_momentum(0.9),
    )


# -- dead units -------------------------------------------------------------------------------------------
@family(
    "m1d_mlp_adam_spike_dead",
    "MLP / MNIST-1D",
    "dead_units",
    "re-draw the dead units (same lr)",
    200,
    "Adam at lr 0.05 for the first 30 steps (a too-high start), then lr 1e-3 for 370: about half the "
    "ReLUs of the 40-150-150-10 MLP never fire again",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 128)
    model = mlp([40, 150, 150, 10])
    return run_to_stall(
        "m1d_mlp_adam_spike_dead",
        seed,
        model,
        adam(0.05),
        F.cross_entropy,
        data,
        full,
        400,
        reinit_dead_units(full, seed),
        events={30: set_lr(1e-3)},
    )


@family(
    "digits_deep_mlp_adam_spike_dead",
    "4-layer ReLU MLP / digits",
    "dead_units",
    "re-draw the dead units (same lr)",
    200,
    "64-64-64-64-10 ReLU MLP, Adam at lr 0.1 for the first 20 steps, then lr 1e-3 for 780: 70-90% of "
    "the hidden units dead",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 64)
    model = mlp([64, 64, 64, 64, 10])
    return run_to_stall(
        "digits_deep_mlp_adam_spike_dead",
        seed,
        model,
        adam(0.1),
        F.cross_entropy,
        data,
        full,
        800,
        reinit_dead_units(full, seed),
        events={20: set_lr(1e-3)},
    )


# -- weight decay too strong -------------------------------------------------------------------------------
@family(
    "m1d_mlp_adamw_wd",
    "MLP / MNIST-1D",
    "weight_decay",
    "weight decay 0.01",
    200,
    "AdamW lr 3e-3 with weight_decay 10 (decay 3% per step): weights held near zero",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 128)
    model = mlp([40, 128, 128, 10])
    return run_to_stall(
        "m1d_mlp_adamw_wd",
        seed,
        model,
        adamw(3e-3, weight_decay=10.0),
        F.cross_entropy,
        data,
        full,
        500,
        set_weight_decay(0.01),
    )


@family(
    "digits_logreg_sgd_l2",
    "logistic regression / digits",
    "weight_decay",
    "weight decay x0.01",
    200,
    "SGD+momentum 0.9 lr 0.2 with (coupled) weight_decay 0.1 on unit-scaled pixels",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 128)
    model = nn.Linear(64, 10)
    return run_to_stall(
        "digits_logreg_sgd_l2",
        seed,
        model,
        sgd(0.2, momentum=0.9, weight_decay=0.1),
        F.cross_entropy,
        data,
        full,
        400,
        set_weight_decay(1e-3),
    )


@family(
    "tf_adamw_wd",
    "transformer / running max",
    "weight_decay",
    "weight decay 0.01",
    200,
    "AdamW lr 3e-3 with weight_decay 30 on the 2-layer transformer",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = token_task(seed)
    data, full = as_batches(x, y, 64), as_batches(x, y, 512)
    model = TinyTransformer()
    return run_to_stall(
        "tf_adamw_wd",
        seed,
        model,
        adamw(3e-3, weight_decay=30.0),
        seq_ce,
        data,
        full,
        300,
        set_weight_decay(0.01),
    )


# -- vanishing gradients -----------------------------------------------------------------------------------
@family(
    "m1d_deep_sigmoid",
    "5-layer sigmoid MLP / MNIST-1D",
    "vanishing_gradients",
    "Adam lr 3e-3",
    300,
    "SGD+momentum 0.9 lr 0.1 on 5 sigmoid layers of width 64 (default init)",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 128)
    model = mlp([40] + [64] * 5 + [10], act=nn.Sigmoid)
    return run_to_stall(
        "m1d_deep_sigmoid",
        seed,
        model,
        sgd(0.1, momentum=0.9),
        F.cross_entropy,
        data,
        full,
        400,
        switch_to(torch.optim.Adam, lr=3e-3),
    )


@family(
    "digits_deep_tanh_smallinit",
    "12-layer tanh MLP / digits",
    "vanishing_gradients",
    "Adam lr 1e-3",
    200,
    "12 tanh layers of width 48 initialized at std 0.4/sqrt(fan_in) (too small), SGD lr 0.05",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 64, "standard")
    model = mlp([64] + [48] * 12 + [10], act=nn.Tanh)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.4 / math.sqrt(m.in_features))
                m.bias.zero_()
    return run_to_stall(
        "digits_deep_tanh_smallinit",
        seed,
        model,
        sgd(0.05),
        F.cross_entropy,
        data,
        full,
        300,
        switch_to(torch.optim.Adam, lr=1e-3),
    )


# -- saddle point ------------------------------------------------------------------------------------------
def scale_init(model: nn.Module, scale: float, zero_bias: bool = True) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(scale)
                if zero_bias and m.bias is not None:
                    m.bias.zero_()


@family(
    "linnet_saddle",
    "2-layer linear net / synthetic regression",
    "saddle_point",
    "step along the most negative curvature direction (line search)",
    200,
    "Y = A X + noise (A rank 4), a 20-16-10 linear network initialized at scale 1e-5, SGD lr 0.02: the "
    "origin is a strict saddle and the escape takes ~1000 steps",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(3000 + seed)
    u, v = torch.randn(10, 4, generator=g), torch.randn(4, 20, generator=g)
    a = u @ torch.diag(torch.tensor([1.0, 0.7, 0.5, 0.3])) @ v / math.sqrt(20)
    x = torch.randn(800, 20, generator=g)
    y = x @ a.t() + 0.05 * torch.randn(800, 10, generator=g)
    model = nn.Sequential(nn.Linear(20, 16, bias=False), nn.Linear(16, 10, bias=False))
    scale_init(model, 1e-5)
    data = as_batches(x, y, 100)
    return run_to_stall(
        "linnet_saddle",
        seed,
        model,
        sgd(0.02),
        F.mse_loss,
        data,
        [(x, y)],
        300,
        escape_saddle([(x, y)], F.mse_loss),
    )


@family(
    "digits_tanh_saddle",
    "tanh MLP / digits",
    "saddle_point",
    "step along the most negative curvature direction (line search)",
    200,
    "64-32-10 tanh MLP with every weight at 1e-6 x its default init and zero biases, SGD lr 0.02",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 128, "standard")
    model = mlp([64, 32, 10], act=nn.Tanh)
    scale_init(model, 1e-6)
    return run_to_stall(
        "digits_tanh_saddle",
        seed,
        model,
        sgd(0.02),
        F.cross_entropy,
        data,
        full,
        300,
        escape_saddle(full, F.cross_entropy),
    )


# -- degenerate critical point -------------------------------------------------------------------------------
@family(
    "m1d_zero_init_tanh",
    "tanh MLP / MNIST-1D",
    "degenerate",
    "re-initialize (torch defaults)",
    200,
    "40-64-64-10 tanh MLP with every weight and bias zero, SGD+momentum 0.9 lr 0.05",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 128)
    model = mlp([40, 64, 64, 10], act=nn.Tanh)
    scale_init(model, 0.0)
    return run_to_stall(
        "m1d_zero_init_tanh",
        seed,
        model,
        sgd(0.05, momentum=0.9),
        F.cross_entropy,
        data,
        full,
        300,
        reinitialize(seed),
    )


@family(
    "digits_zero_init_relu_adam",
    "ReLU MLP / digits",
    "degenerate",
    "re-initialize (torch defaults)",
    200,
    "64-64-64-10 ReLU MLP with every weight and bias zero, Adam lr 1e-3",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 64)
    model = mlp([64, 64, 64, 10])
    scale_init(model, 0.0)
    return run_to_stall(
        "digits_zero_init_relu_adam",
        seed,
        model,
        adam(1e-3),
        F.cross_entropy,
        data,
        full,
        300,
        reinitialize(seed),
    )


# -- converged ------------------------------------------------------------------------------------------------
def lbfgs_to_minimum(
    model: nn.Module, loss_fn: Callable, x: torch.Tensor, y: torch.Tensor, iters: int = 300
) -> None:
    opt = torch.optim.LBFGS(
        model.parameters(),
        lr=1,
        max_iter=iters,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=50,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    for _ in range(3):
        opt.step(closure)


@family(
    "m1d_logreg_gd_converged",
    "logistic regression / MNIST-1D",
    "converged",
    "none (stop)",
    200,
    "multinomial logistic regression solved by L-BFGS, then full-batch gradient descent at lr 0.5 "
    "(one batch of 4000): at the unique minimum",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = shuffled(*mnist1d(4000), seed)
    model = nn.Linear(40, 10)
    lbfgs_to_minimum(model, F.cross_entropy, x, y)
    return run_to_stall(
        "m1d_logreg_gd_converged",
        seed,
        model,
        sgd(0.5),
        F.cross_entropy,
        [(x, y)],
        [(x, y)],
        300,
        None,
    )


def noisy_curve(seed: int, n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(4000 + seed)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x) + 0.3 * x**2 + 0.2 * torch.randn(n, 1, generator=g)
    return x, y


@family(
    "curve_tanh_converged",
    "tiny tanh MLP / 1-D regression",
    "converged",
    "none (stop)",
    200,
    "1-6-1 tanh net on a noisy curve, L-BFGS to a minimum, then full-batch Adagrad lr 0.01",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = noisy_curve(seed)
    model = mlp([1, 6, 1], act=nn.Tanh)
    lbfgs_to_minimum(model, F.mse_loss, x, y, iters=1000)
    return run_to_stall(
        "curve_tanh_converged",
        seed,
        model,
        lambda m: torch.optim.Adagrad(m.parameters(), lr=0.01),
        F.mse_loss,
        [(x, y)],
        [(x, y)],
        300,
        None,
    )


@family(
    "linreg_adam_converged",
    "linear regression / synthetic",
    "converged",
    "none (stop)",
    200,
    "least squares with noise (n=400, d=20), L-BFGS to the minimum, then full-batch Adam lr 1e-4",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(5000 + seed)
    x = torch.randn(400, 20, generator=g) * torch.linspace(0.5, 2.0, 20)
    y = x @ torch.randn(20, 1, generator=g) + 0.5 * torch.randn(400, 1, generator=g)
    model = nn.Linear(20, 1)
    lbfgs_to_minimum(model, F.mse_loss, x, y)
    return run_to_stall(
        "linreg_adam_converged", seed, model, adam(1e-4), F.mse_loss, [(x, y)], [(x, y)], 300, None
    )


# -- gradient noise ---------------------------------------------------------------------------------------------
@family(
    "m1d_mlp_sgd_bs8_noise",
    "MLP / MNIST-1D",
    "gradient_noise",
    "lr x0.1",
    200,
    "plain SGD lr 0.1, batch 8, 40-128-128-10 ReLU MLP, 1500 steps",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 8)
    model = mlp([40, 128, 128, 10])
    return run_to_stall(
        "m1d_mlp_sgd_bs8_noise",
        seed,
        model,
        sgd(0.1),
        F.cross_entropy,
        data,
        full,
        1500,
        lr_times(0.1),
    )


@family(
    "m1d_cnn_loader_noise",
    "1-D CNN / MNIST-1D (DataLoader)",
    "gradient_noise",
    "lr x0.1",
    188,
    "DataLoader(shuffle=True, batch 16) over 3000 samples, SGD+momentum 0.9 lr 0.05, 4 epochs",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = mnist1d(3000)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=16, shuffle=True
    )
    model = CNN1d(12)
    return run_to_stall(
        "m1d_cnn_loader_noise",
        seed,
        model,
        sgd(0.05, momentum=0.9),
        F.cross_entropy,
        loader,
        as_batches(x, y, 500),
        188 * 4,
        lr_times(0.1),
    )


# -- flat plateau -----------------------------------------------------------------------------------------------
@family(
    "digits_sigmoid_mse_saturated",
    "sigmoid-output MLP / digits",
    "flat_plateau",
    "Adam lr 1e-2",
    200,
    "64-64-10 MLP with sigmoid outputs and squared error to one-hot targets; the output biases start at "
    "+8 so every output sits saturated near 1; SGD lr 0.1",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 64, "standard")
    model = mlp([64, 64, 10], out_act=nn.Sigmoid())
    with torch.no_grad():
        model[2].bias.fill_(8.0)
    return run_to_stall(
        "digits_sigmoid_mse_saturated",
        seed,
        model,
        sgd(0.1),
        onehot_mse,
        data,
        full,
        300,
        switch_to(torch.optim.Adam, lr=1e-2),
    )


@family(
    "m1d_cnn_sigmoid_mse_saturated",
    "1-D CNN (sigmoid outputs) / MNIST-1D",
    "flat_plateau",
    "Adam lr 1e-2",
    200,
    "sigmoid outputs with squared error to one-hot targets, output biases starting at -8 (every "
    "output saturated near 0); SGD+momentum 0.9 lr 0.05",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 100)
    model = CNN1d(12, out_act=nn.Sigmoid())
    with torch.no_grad():
        model.head[3].bias.fill_(-8.0)
    return run_to_stall(
        "m1d_cnn_sigmoid_mse_saturated",
        seed,
        model,
        sgd(0.05, momentum=0.9),
        onehot_mse,
        data,
        full,
        300,
        switch_to(torch.optim.Adam, lr=1e-2),
    )


# -- lr too small -----------------------------------------------------------------------------------------------
@family(
    "tf_adamw_lr_tiny",
    "transformer / running max",
    "lr_too_small",
    "lr x300 (1e-3)",
    200,
    "AdamW lr 3e-6 (weight decay 0.01)",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = token_task(seed)
    data, full = as_batches(x, y, 64), as_batches(x, y, 512)
    model = TinyTransformer()
    return run_to_stall(
        "tf_adamw_lr_tiny",
        seed,
        model,
        adamw(3e-6, weight_decay=0.01),
        seq_ce,
        data,
        full,
        300,
        lr_times(300),
    )


@family(
    "resnet_digits_lr_tiny",
    "ResNet-style BN CNN / digits",
    "lr_too_small",
    "lr x300 (0.015)",
    150,
    "SGD+momentum 0.9 at lr 5e-5, batch 32, train mode",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 32)
    model = ResNetDigits(12)
    return run_to_stall(
        "resnet_digits_lr_tiny",
        seed,
        model,
        sgd(5e-5, momentum=0.9),
        F.cross_entropy,
        data,
        full,
        300,
        lr_times(300),
    )


@family(
    "gru_m1d_rmsprop_lr_tiny",
    "GRU / MNIST-1D",
    "lr_too_small",
    "lr x100 (1e-3)",
    200,
    "GRU(2->32) reading MNIST-1D as 20 steps, RMSprop lr 1e-5, batch 100",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = m1d_data(seed, 100, n=3000)
    model = SeqGRU(32)
    return run_to_stall(
        "gru_m1d_rmsprop_lr_tiny",
        seed,
        model,
        lambda m: torch.optim.RMSprop(m.parameters(), lr=1e-5),
        F.cross_entropy,
        data,
        full,
        300,
        lr_times(100),
    )


# -- ill-conditioned ---------------------------------------------------------------------------------------------
@family(
    "digits_logreg_raw_illcond",
    "logistic regression / digits (raw pixels)",
    "ill_conditioned",
    "Adam lr 0.01",
    200,
    "raw 0..16 pixels (uncentered, unscaled), SGD on batches of 450 at lr 1.5/λ_max(init) for 1300 steps, "
    "then re-tuned to 1.8/λ_max(now) (the largest the curvature allows) for 200: the loss crawls",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    data, full = digits_data(seed, 450, "raw")
    model = nn.Linear(64, 10)
    lam, _, _ = extreme_eigs(model, F.cross_entropy, full, iters=30)

    def retune(model: nn.Module, opt: torch.optim.Optimizer) -> None:
        now, _, _ = extreme_eigs(model, F.cross_entropy, full, iters=30)
        set_lr(1.8 / now)(model, opt)

    return run_to_stall(
        "digits_logreg_raw_illcond",
        seed,
        model,
        sgd(1.5 / lam),
        F.cross_entropy,
        data,
        full,
        3000,
        switch_to(torch.optim.Adam, lr=0.01),
        events={2500: retune},
    )


@family(
    "digits_lsq_raw_gd_illcond",
    "least-squares classifier / digits (raw pixels)",
    "ill_conditioned",
    "Adam lr 3e-3",
    200,
    "linear model, squared error to one-hot targets on raw 0..16 pixels (condition number ~3e9), full-batch "
    "gradient descent at lr 1.9/λ_max, 1000 steps (1.5x that lr diverges)",
)
def _(seed: int) -> Case:
    torch.manual_seed(seed)
    x, y = digits()
    x, y = shuffled(x, y, seed)
    t = F.one_hot(y, 10).float()
    xb = torch.cat([x, torch.ones(len(x), 1)], 1)
    lam = (
        float(torch.linalg.eigvalsh(2 * xb.t() @ xb / len(x))[-1]) / 10
    )  # mse_loss also averages the 10 outputs
    model = nn.Linear(64, 10)
    return run_to_stall(
        "digits_lsq_raw_gd_illcond",
        seed,
        model,
        sgd(1.9 / lam),
        F.mse_loss,
        [(x, t)],
        [(x, t)],
        1000,
        switch_to(torch.optim.Adam, lr=3e-3),
    )


# ------------------------------------------------------------------------------------------------
# Branches from the stalled state
# ------------------------------------------------------------------------------------------------
@dataclass
class Snapshot:
    model: nn.Module
    opt_state: dict
    rng: torch.Tensor


def snapshot(case: Case) -> Snapshot:
    return Snapshot(
        copy.deepcopy(case.model), copy.deepcopy(case.optimizer.state_dict()), torch.get_rng_state()
    )


def eval_steps(horizon: int) -> list[int]:
    s = max(1, horizon // 20)
    return [horizon - 2 * s, horizon - s, horizon]


@dataclass
class Branch:
    final: float  # mean full training loss at eval_steps(horizon) (inf when it went non-finite)
    curve: list[float]  # full loss at 0, H/4, H/2, 3H/4, H
    applied: bool = True  # False: NeedsCodeChange, continued unchanged
    error: str = ""


def run_branch(
    case: Case, snap: Snapshot, modify: Callable | None, horizon: int | None = None
) -> Branch:
    """Continue training from the snapshot (fresh copies of model and optimizer, the global RNG
    restored) for the horizon, after ``modify(model, opt) -> opt``."""
    import lossdoctor as ld

    horizon = horizon or case.horizon
    model = copy.deepcopy(snap.model)
    opt = case.make_optimizer(model)
    opt.load_state_dict(copy.deepcopy(snap.opt_state))
    torch.set_rng_state(snap.rng)
    applied, error = True, ""
    if modify is not None:
        try:
            out = modify(model, opt)
            opt = out if out is not None else opt
        except ld.NeedsCodeChange as e:
            applied, error = False, "NeedsCodeChange: " + str(e)[:100]
        except Exception as e:  # noqa: BLE001 - apply() itself failing is reported, the run continues unchanged
            applied, error = False, f"apply raised {type(e).__name__}: {e}"[:200]
    marks = set(eval_steps(horizon))
    quarter = {round(horizon * q / 4) for q in range(5)}
    curve, finals = [full_loss(model, case.loss_fn, case.full_batches)], []
    stream = batch_stream(case.data, case.step)
    for k in range(1, horizon + 1):
        try:
            loss = train_step(model, opt, case.loss_fn, next(stream))
        except Exception as e:  # noqa: BLE001 - training after the change crashed: scored as non-finite
            torch.set_rng_state(snap.rng)
            return Branch(
                float("inf"),
                curve + [float("nan")],
                applied,
                f"training raised {type(e).__name__}: {e}"[:200],
            )
        if not math.isfinite(loss):
            torch.set_rng_state(snap.rng)
            return Branch(
                float("inf"),
                curve + [float("nan")],
                applied,
                error or f"non-finite loss at step {k}",
            )
        if k in marks:
            finals.append(full_loss(model, case.loss_fn, case.full_batches))
        if k in quarter:
            curve.append(
                finals[-1] if k in marks else full_loss(model, case.loss_fn, case.full_batches)
            )
    torch.set_rng_state(snap.rng)
    final = float(np.mean(finals))
    return Branch(final if math.isfinite(final) else float("inf"), curve, applied, error)


def unchanged_reference(case: Case, unchanged: Branch) -> float:
    """What 'continuing unchanged' is worth: its final loss, or, when it went non-finite, the full
    loss at the checkpoint the loop kept (at the stall if none)."""
    if math.isfinite(unchanged.final):
        return unchanged.final
    if case.checkpoint is not None:
        model = copy.deepcopy(case.model)
        model.load_state_dict(case.checkpoint)
        return full_loss(model, case.loss_fn, case.full_batches)
    return full_loss(case.model, case.loss_fn, case.full_batches)


# ------------------------------------------------------------------------------------------------
# Ground-truth facts, measured here without the doctor
# ------------------------------------------------------------------------------------------------
def layer_grad_norms(model: nn.Module, loss_fn: Callable, batches: list) -> list[float]:
    """Gradient norm of each weight matrix (Linear/Conv/RNN weights), input side first."""
    with measuring(model):
        params, g = flat_grad(model, loss_fn, batches)
    out, i = [], 0
    for p in params:
        if p.dim() >= 2:
            out.append(float(g[i : i + p.numel()].norm()))
        i += p.numel()
    return out


def same_batch_uphill(case: Case, snap: Snapshot, steps: int = 30) -> float:
    """Share of steps (continuing unchanged) after which the loss on the batch just used is higher."""
    model = copy.deepcopy(snap.model)
    opt = case.make_optimizer(model)
    opt.load_state_dict(copy.deepcopy(snap.opt_state))
    torch.set_rng_state(snap.rng)
    stream = batch_stream(case.data, case.step)
    up = 0
    for _ in range(steps):
        batch = next(stream)
        before = train_step(model, opt, case.loss_fn, batch)
        after = full_loss(model, case.loss_fn, [batch])
        up += after > before
    torch.set_rng_state(snap.rng)
    return up / steps


def gradient_noise_ratio(case: Case, batches: int = 16) -> float:
    """E||g_batch - g||^2 / ||g||^2 over training batches (> 1: the noise dominates each step)."""
    model = case.model
    rng = torch.get_rng_state()
    with measuring(model):
        _, g = flat_grad(model, case.loss_fn, case.full_batches)
        stream = batch_stream(case.data, 0)
        dev = []
        for _ in range(batches):
            _, gb = flat_grad(model, case.loss_fn, [next(stream)])
            dev.append(float((gb - g).pow(2).sum()))
    torch.set_rng_state(rng)
    return float(np.mean(dev)) / max(float(g.pow(2).sum()), 1e-30)


def saturation(case: Case) -> float:
    """Share of sigmoid outputs within 1e-3 of 0 or 1."""
    with torch.no_grad(), measuring(case.model):
        out = torch.cat([case.model(x) for x, _ in case.full_batches])
    return float(((out < 1e-3) | (out > 1 - 1e-3)).float().mean())


def dead_fraction(case: Case) -> float:
    dead = dead_relu_rows(case.model, case.full_batches)
    total = sum(m.numel() for m in dead.values())
    return sum(int(m.sum()) for m in dead.values()) / max(total, 1)


def wd_ratio(case: Case) -> float:
    """weight_decay * ||w|| / ||∇L||: the decay's pull against the data gradient."""
    wd = case.optimizer.param_groups[0].get("weight_decay", 0.0)
    with measuring(case.model):
        _, g = flat_grad(case.model, case.loss_fn, case.full_batches)
    w = torch.cat([p.detach().reshape(-1) for p in case.model.parameters()])
    return float(wd * w.norm() / max(float(g.norm()), 1e-30))


def facts(case: Case, snap: Snapshot) -> dict[str, Any]:
    """Cause-specific measurements made without the doctor (ground-truth support)."""
    f: dict[str, Any] = {}
    cause = case.cause
    params_finite = all(bool(torch.isfinite(p).all()) for p in case.model.parameters())
    f["loss_at_stall"] = (
        full_loss(case.model, case.loss_fn, case.full_batches) if params_finite else float("nan")
    )
    h = np.asarray(case.history, dtype=float)
    if np.isfinite(h).all():
        q = max(len(h) // 4, 1)
        f["history_first_quarter"] = float(h[:q].mean())
        f["history_last_quarter"] = float(h[-q:].mean())
    f["history_nonfinite"] = int((~np.isfinite(h)).sum())
    f["lr"] = case.optimizer.param_groups[0]["lr"]
    if not params_finite:
        f["params_nonfinite"] = True
        return f
    with measuring(case.model):
        _, g = flat_grad(case.model, case.loss_fn, case.full_batches)
    f["grad_norm"] = float(g.norm())
    if not math.isfinite(f["grad_norm"]):
        return f
    if cause in ("oscillation", "momentum_too_high", "gradient_noise", "progressing"):
        f["same_batch_uphill"] = same_batch_uphill(case, snap)
    if cause in ("gradient_noise", "progressing", "lr_too_small"):
        f["noise_ratio"] = gradient_noise_ratio(case)
    if cause == "dead_units":
        f["dead_fraction"] = dead_fraction(case)
    if cause == "weight_decay":
        f["wd_over_grad"] = wd_ratio(case)
    if cause == "vanishing_gradients":
        norms = layer_grad_norms(case.model, case.loss_fn, case.full_batches)
        f["first_over_last_grad"] = norms[0] / max(norms[-1], 1e-30)
    if cause == "flat_plateau":
        f["saturated_outputs"] = saturation(case)
    small = sum(p.numel() for p in case.model.parameters()) <= 20000
    if (
        cause
        in (
            "saddle_point",
            "degenerate",
            "converged",
            "ill_conditioned",
            "lr_too_small",
            "oscillation",
            "diverging",
        )
        and small
    ):
        lmax, lmin, _ = extreme_eigs(case.model, case.loss_fn, case.full_batches, iters=80)
        f["lambda_max"], f["lambda_min"] = lmax, lmin
        f["lr_lambda_max"] = f["lr"] * lmax
    return f


def validate(case: Case, extra: bool = True) -> tuple[bool, dict[str, Any]]:
    """The ground truth's checks, without the doctor."""
    snap = snapshot(case)
    unchanged = run_branch(case, snap, None)
    ref = unchanged_reference(case, unchanged)
    row: dict[str, Any] = {
        "family": case.family,
        "seed": case.seed,
        "cause": case.cause,
        "step": case.step,
        "unchanged": unchanged.final,
        "unchanged_reference": ref,
        "unchanged_curve": unchanged.curve,
    }
    ok = True
    if case.remedy is not None:
        remedy = run_branch(case, snap, case.remedy)
        row["remedy"], row["remedy_curve"] = remedy.final, remedy.curve
        row["remedy_gain"] = 1 - remedy.final / ref if math.isfinite(remedy.final) else -math.inf
        ok = row["remedy_gain"] >= REMEDY_MARGIN
        row["check"] = (
            f"remedy beats unchanged by {row['remedy_gain']:.1%} (need >= {REMEDY_MARGIN:.0%})"
        )
    elif case.cause == "progressing":
        row["drop"] = 1 - unchanged.final / unchanged.curve[0]
        ok = row["drop"] >= 0.05 and np.mean(case.history[-20:]) < np.mean(case.history[:20])
        row["check"] = f"keeps falling: {row['drop']:.1%} over the horizon (need >= 5%)"
    elif case.cause == "converged":
        row["move"] = abs(unchanged.final - unchanged.curve[0]) / max(
            abs(unchanged.curve[0]), 1e-12
        )
        ok = row["move"] < 1e-3
        row["check"] = f"does not move: {row['move']:.1e} relative over the horizon (need < 1e-3)"
    if extra and case.cause in (
        "progressing",
        "ill_conditioned",
        "lr_too_small",
        "gradient_noise",
        "dead_units",
    ):
        # how other lr's fare (a healthy run should not gain much; an ill-conditioned one not from the lr)
        for f in (0.3, 3.0):
            b = run_branch(case, snap, lr_times(f))
            row[f"lr_x{f:g}_gain"] = 1 - b.final / ref if math.isfinite(b.final) else -math.inf
    row["facts"] = facts(case, snap)
    row["ok"] = ok
    return ok, row


# ------------------------------------------------------------------------------------------------
# The doctor, scored
# ------------------------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    """Bitwise-equal (NaN-aware) nested state."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return False
        if a.shape != b.shape or a.dtype != b.dtype:
            return False
        if a.is_floating_point():
            return bool(
                torch.equal(torch.isnan(a), torch.isnan(b))
                and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
            )
        return bool(torch.equal(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (
            isinstance(b, (list, tuple))
            and len(a) == len(b)
            and all(_same(x, y) for x, y in zip(a, b))
        )
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _hooks(model: nn.Module, opt: torch.optim.Optimizer) -> tuple:
    per_module = tuple(
        (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
        for m in model.modules()
    )
    return per_module, len(opt._optimizer_step_pre_hooks), len(opt._optimizer_step_post_hooks)


def untouched(case: Case, before: dict) -> list[str]:
    """What diagnose changed (empty: nothing)."""
    changed = []
    if not _same(before["params"], {k: v for k, v in case.model.state_dict().items()}):
        changed.append("model parameters/buffers")
    if not _same(before["opt"], case.optimizer.state_dict()):
        changed.append("optimizer state")
    if not torch.equal(before["rng"], torch.get_rng_state()):
        changed.append("global RNG")
    if before["modes"] != [m.training for m in case.model.modules()]:
        changed.append("train/eval mode")
    if before["hooks"] != _hooks(case.model, case.optimizer):
        changed.append("hooks")
    if any(p.grad is not None for p in case.model.parameters()) != before["grads"]:
        changed.append(".grad")
    return changed


def score_case(case: Case) -> dict[str, Any]:
    import lossdoctor as ld

    snap = snapshot(case)
    before = {
        "params": copy.deepcopy(case.model.state_dict()),
        "opt": copy.deepcopy(case.optimizer.state_dict()),
        "rng": torch.get_rng_state(),
        "modes": [m.training for m in case.model.modules()],
        "hooks": _hooks(case.model, case.optimizer),
        "grads": any(p.grad is not None for p in case.model.parameters()),
    }
    t0 = time.perf_counter()
    error = ""
    try:
        d = ld.diagnose(
            case.model,
            case.loss_fn,
            case.data,
            history=case.history,
            optimizer=case.optimizer,
            checkpoint=case.checkpoint,
        )
    except Exception as e:  # noqa: BLE001 - a crash is scored as a miss and reported
        d, error = None, f"{type(e).__name__}: {e}"[:300]
    seconds = time.perf_counter() - t0
    changed = untouched(case, before)
    row: dict[str, Any] = {
        "family": case.family,
        "seed": case.seed,
        "arch": case.arch,
        "truth": case.cause,
        "diagnose_seconds": seconds,
        "changed_by_diagnose": changed,
        "error": error,
    }
    if d is None:
        row.update(cause="ERROR", stalled=None, summary=error, rx_text="", rx_action=None)
        rx_modify = None
    else:
        top = d.prescriptions[0]
        row.update(
            cause=d.cause,
            stalled=d.stalled,
            summary=d.summary,
            rx_text=top.text,
            rx_action=_json_safe(top.action),
            rx_trial=None if top.trial is None else str(top.trial),
            rx_applicable=top.applicable,
            verified=d.verified,
            cost=_json_safe(d.cost),
            prescriptions=[p.text for p in d.prescriptions],
            evidence=list(d.evidence),
        )
        rx_modify = top.apply
    row["right"] = row["cause"] == case.cause
    unchanged = run_branch(case, snap, None)
    ref = unchanged_reference(case, unchanged)
    rx = run_branch(case, snap, rx_modify) if rx_modify is not None else unchanged
    row.update(
        unchanged=unchanged.final,
        unchanged_reference=ref,
        unchanged_curve=unchanged.curve,
        rx=rx.final,
        rx_curve=rx.curve,
        rx_applied=rx.applied,
        rx_error=rx.error,
    )
    row["harmful"] = (not math.isfinite(rx.final)) or rx.final > ref * (1 + HARM_TOL)
    if case.remedy is not None:
        remedy = run_branch(case, snap, case.remedy)
        gap = ref - remedy.final
        closed = (
            (ref - rx.final) / gap
            if math.isfinite(rx.final) and gap > 0
            else (-math.inf if gap > 0 else None)
        )
        row.update(
            remedy=remedy.final,
            remedy_curve=remedy.curve,
            gap=gap,
            closed=closed,
            fixed=closed is not None and closed >= FIX_SHARE,
        )
    else:
        row.update(remedy=None, gap=None, closed=None, fixed=None)
        if case.cause == "progressing":
            row["false_alarm"] = bool(row["stalled"]) if d is not None else True
            row["no_change"] = d is not None and not d.prescriptions[0].action
    return row


def _json_safe(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return float(x)
    return repr(x)[:80]


def _f(x: Any, digits: int = 4) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if not math.isfinite(x):
            return "NaN/Inf" if math.isnan(x) or x > 0 else "-inf"
        return f"{x:.{digits}g}"
    return str(x)


def report(rows: list[dict[str, Any]], out: Any = sys.stdout) -> dict[str, Any]:
    def p(s: str = "") -> None:
        print(s, file=out, flush=True)

    causes = [c for c in CAUSE_ORDER if any(r["truth"] == c for r in rows)]
    called = [
        c for c in CAUSE_ORDER + ["undetermined", "ERROR"] if any(r["cause"] == c for r in rows)
    ]
    abbrev = {c: c[:8] for c in called}
    p("\nConfusion matrix (rows: ground truth, columns: the doctor's cause)")
    head = f"{'truth':22s}" + "".join(f"{abbrev[c]:>9s}" for c in called) + f"{'right':>8s}"
    p(head)
    for t in causes:
        sub = [r for r in rows if r["truth"] == t]
        cells = "".join(f"{sum(r['cause'] == c for r in sub) or '.':>9}" for c in called)
        p(f"{t:22s}{cells}{sum(r['right'] for r in sub):>5d}/{len(sub)}")
    p("columns: " + ", ".join(f"{abbrev[c]}={c}" for c in called))

    n = len(rows)
    right = sum(r["right"] for r in rows)
    stalled = [r for r in rows if r["remedy"] is not None]
    fixed = sum(bool(r["fixed"]) for r in stalled)
    harmful = [r for r in rows if r["harmful"]]
    healthy = [r for r in rows if r["truth"] == "progressing"]
    alarms = sum(r.get("false_alarm", False) for r in healthy)
    nochange = sum(r.get("no_change", False) for r in healthy)
    changed = [r for r in rows if r["changed_by_diagnose"]]
    p("\nScore")
    p(f"  cause right:             {right}/{n} = {right / n:.1%}")
    p(
        f"  stalled runs fixed:      {fixed}/{len(stalled)} = {fixed / max(len(stalled), 1):.1%}  "
        f"(first prescription closes >= {FIX_SHARE:.0%} of the unchanged -> remedy gap)"
    )
    p(
        f"  harmful first prescr.:   {len(harmful)}/{n}  (ends > {HARM_TOL:.1%} worse than unchanged, or NaN)"
    )
    p(
        f"  healthy false alarms:    {alarms}/{len(healthy)} = {alarms / max(len(healthy), 1):.1%}  (called stalled)"
    )
    p(f"  healthy 'no change':     {nochange}/{len(healthy)}")
    p(
        f"  diagnose changed state:  {len(changed)}/{n}"
        + "".join(
            f"\n      {r['family']} s{r['seed']}: {', '.join(r['changed_by_diagnose'])}"
            for r in changed
        )
    )
    p(f"  diagnose errors:         {sum(bool(r['error']) for r in rows)}/{n}")
    p("\nPer cause (right, fixed/stalled, harmful)")
    for t in causes:
        sub = [r for r in rows if r["truth"] == t]
        fx = [r for r in sub if r["remedy"] is not None]
        p(
            f"  {t:22s} right {sum(r['right'] for r in sub)}/{len(sub)}   fixed "
            f"{sum(bool(r['fixed']) for r in fx)}/{len(fx)}   harmful {sum(r['harmful'] for r in sub)}"
        )
    p("\nDiagnose seconds per architecture (min / median / max over its cases)")
    by_arch: dict[str, list[float]] = {}
    for r in rows:
        by_arch.setdefault(r["arch"], []).append(r["diagnose_seconds"])
    for arch, secs in sorted(by_arch.items()):
        p(
            f"  {arch:46s} n={len(secs):2d}  {min(secs):6.1f} / {float(np.median(secs)):6.1f} / {max(secs):6.1f}"
        )
    return {
        "cases": n,
        "right": right,
        "stalled": len(stalled),
        "fixed": fixed,
        "harmful": len(harmful),
        "healthy": len(healthy),
        "false_alarms": alarms,
        "healthy_no_change": nochange,
        "state_changed": len(changed),
        "errors": sum(bool(r["error"]) for r in rows),
    }


CAUSE_ORDER = [
    "diverging",
    "oscillation",
    "progressing",
    "momentum_too_high",
    "dead_units",
    "weight_decay",
    "vanishing_gradients",
    "saddle_point",
    "degenerate",
    "converged",
    "gradient_noise",
    "flat_plateau",
    "lr_too_small",
    "ill_conditioned",
]


def case_line(r: dict[str, Any]) -> str:
    mark = "ok  " if r["right"] else "MISS"
    if r["remedy"] is not None:
        fix = "FIXED" if r["fixed"] else "not fixed"
        closed = (
            "-"
            if r["closed"] is None
            else ("-inf" if not math.isfinite(r["closed"]) else f"{r['closed']:+.0%}")
        )
        out = (
            f"unchanged {_f(r['unchanged_reference'])} remedy {_f(r['remedy'])} rx {_f(r['rx'])} "
            f"closed {closed} {fix}"
        )
    else:
        extra = ""
        if r["truth"] == "progressing":
            extra = (
                f" {'FALSE ALARM' if r.get('false_alarm') else 'no alarm'}, "
                f"{'no change' if r.get('no_change') else 'CHANGE prescribed'}"
            )
        out = f"unchanged {_f(r['unchanged'])} rx {_f(r['rx'])}{extra}"
    harm = " HARMFUL" if r["harmful"] else ""
    applied = "" if r.get("rx_applied", True) else " (needs code change: continued unchanged)"
    state = (
        f" STATE CHANGED: {', '.join(r['changed_by_diagnose'])}" if r["changed_by_diagnose"] else ""
    )
    return (
        f"{mark} {r['family']:34s} s{r['seed']} truth {r['truth']:19s} doctor {r['cause']:19s} "
        f"[{r['diagnose_seconds']:.1f}s] | rx: {r['rx_text'][:90]}{applied} | {out}{harm}{state}"
    )


def selected(families: str | None) -> list[Family]:
    if not families:
        return list(FAMILIES.values())
    keys = [s.strip() for s in families.split(",") if s.strip()]
    return [f for f in FAMILIES.values() if any(k in f.key for k in keys)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--families", default=None, help="comma-separated substrings of family keys")
    ap.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    ap.add_argument(
        "--validate", action="store_true", help="check the ground truth only; the doctor is not run"
    )
    ap.add_argument("--json", default=None, help="write every row here")
    ap.add_argument("--list", action="store_true", help="print the families and exit")
    args = ap.parse_args(argv)
    fams = selected(args.families)
    import lossdoctor as ld

    print(
        f"lossdoctor {ld.__version__} ({os.path.dirname(ld.__file__)}), torch {torch.__version__}, "
        f"{len(fams)} families x seeds {args.seeds}, threads {torch.get_num_threads()}, load {os.getloadavg()[0]:.2f}"
    )
    if args.list:
        for f in fams:
            print(f"{f.key} | {f.arch} | {f.cause} | {f.remedy} | {f.horizon}")
        return 0
    rows = []
    started = time.perf_counter()
    for fam in fams:
        for seed in args.seeds:
            t0 = time.perf_counter()
            case = fam.build(seed)
            if args.validate:
                ok, row = validate(case)
                gains = " ".join(f"{k}={v:+.1%}" for k, v in row.items() if k.startswith("lr_x"))
                facts_s = ", ".join(f"{k}={_f(v, 3)}" for k, v in row["facts"].items())
                print(
                    f"{'OK ' if ok else 'BAD'} {fam.key:34s} s{seed} step {case.step:5d} | {row.get('check', '')}"
                    f" | unchanged {[_f(v, 3) for v in row['unchanged_curve']]}"
                    f" remedy {[_f(v, 3) for v in row.get('remedy_curve', [])]} {gains} | {facts_s}"
                    f" [{time.perf_counter() - t0:.1f}s]",
                    flush=True,
                )
            else:
                row = score_case(case)
                print(case_line(row), flush=True)
            rows.append(row)
    total = time.perf_counter() - started
    summary: dict[str, Any]
    if args.validate:
        bad = [r for r in rows if not r["ok"]]
        print(
            f"\nground truth: {len(rows) - len(bad)}/{len(rows)} cases pass their checks "
            f"({time.perf_counter() - started:.0f} s)"
        )
        summary = {"cases": len(rows), "passed": len(rows) - len(bad)}
    else:
        summary = report(rows)
        misses = [r for r in rows if not r["right"]]
        if misses:
            print("\nMisses (the doctor's summary)")
            for r in misses:
                print(
                    f"  {r['family']} s{r['seed']} (truth {r['truth']}): {r['cause']}: {r['summary']}"
                )
        print(f"\ntotal {total:.0f} s, load {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {
                    "summary": summary,
                    "families": [
                        {
                            "key": f.key,
                            "arch": f.arch,
                            "cause": f.cause,
                            "remedy": f.remedy,
                            "horizon": f.horizon,
                            "note": f.note,
                        }
                        for f in fams
                    ],
                    "rows": _json_safe(rows),
                },
                fh,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
