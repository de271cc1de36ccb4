"""Stalled (and healthy) training runs whose cause is known by construction.

The cases the stall doctor is tuned and validated on.

Each :class:`StallFamily` builds, for a seed, a real training run stopped where it stalls: the
model, its loss, the training batches in the order they were used, the optimizer with its state,
the per-step loss history, the full training set (for the full training loss) and the *known
remedy* (what an expert would change, applied to the model and optimizer), with a horizon over
which a fix is judged. A fix is judged as the benchmark does: continue ``horizon`` steps over the
same batches (1) unchanged, (2) with the known remedy, (3) with the doctor's prescription, and
compare the full training losses.

Families cover every cause the doctor names, on linear models, MLPs, a CNN with BatchNorm and a
small transformer trained with AdamW. Seeds are split by the caller (see
``studies.doctor_validation``): tuning seeds shape the decision rules, held-out seeds only
measure them.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..zoo.lecture import ProductNet
from ..zoo.mnist1d import mnist1d_arrays

Batches = list[tuple[torch.Tensor, torch.Tensor]]
Remedy = Callable[[nn.Module, torch.optim.Optimizer], torch.optim.Optimizer]


@dataclass
class Stall:
    """A training run stopped where it stands, with everything needed to continue it."""

    model: nn.Module
    loss_fn: Callable
    data: Batches  # the training batches, in the order training cycles over them
    optimizer: torch.optim.Optimizer
    losses: list[float]  # the per-step training loss of every step so far
    steps: int  # steps done; the next batch is data[steps % len(data)]
    full_data: tuple[torch.Tensor, torch.Tensor]  # the whole training set, for the full loss
    remedy: Remedy  # the known remedy: changes model/optimizer in place, returns the optimizer
    horizon: int  # steps over which a fix is judged
    checkpoint: dict[str, Any] | None = None  # the last finite parameters (diverging runs)
    notes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StallFamily:
    """One scenario family: a cause on one architecture, built for any seed."""

    key: str
    cause: str
    architecture: str
    description: str
    build: Callable[[int], Stall]


# -- training --------------------------------------------------------------------------------------
def train_steps(
    model: nn.Module,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    data: Batches,
    start: int,
    steps: int,
    *,
    stop_on_nan: bool = True,
) -> list[float]:
    """``steps`` optimizer steps over ``data`` (cycled from batch ``start % len(data)``), in train mode; returns the per-step losses (stops after the first non-finite one)."""
    model.train()
    losses = []
    for k in range(start, start + steps):
        x, y = data[k % len(data)]
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if stop_on_nan and not math.isfinite(losses[-1]):
            break
    return losses


@torch.no_grad()
def full_loss(model: nn.Module, loss_fn: Callable, full_data: tuple, mode: str = "train") -> float:
    """The mean loss over the whole training set, in ``mode`` (BatchNorm: batch statistics of the whole set in train mode); the model's modes and buffers are restored."""
    was = [m.training for m in model.modules()]
    buffers = [b.clone() for b in model.buffers()]
    try:
        model.train(mode == "train")
        for m in model.modules():  # dropout off either way: the loss is deterministic
            if isinstance(m, nn.modules.dropout._DropoutNd):
                m.eval()
        value = float(loss_fn(model(full_data[0]), full_data[1]))
    finally:
        for m, t in zip(model.modules(), was):
            m.training = t
        for b, v in zip(model.buffers(), buffers):
            b.copy_(v)
    return value


def _run(
    model: nn.Module,
    loss_fn: Callable,
    optimizer: torch.optim.Optimizer,
    data: Batches,
    full_data: tuple,
    steps: int,
    remedy: Remedy,
    horizon: int,
    **kw: Any,
) -> Stall:
    losses = train_steps(model, loss_fn, optimizer, data, 0, steps)
    return Stall(
        model=model,
        loss_fn=loss_fn,
        data=data,
        optimizer=optimizer,
        losses=losses,
        steps=len(losses),
        full_data=full_data,
        remedy=remedy,
        horizon=horizon,
        **kw,
    )


def batches_of(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epochs: int = 1
) -> Batches:
    """``epochs`` shuffled passes over (x, y) in batches of ``batch_size`` (a fixed order)."""
    gen = torch.Generator().manual_seed(10_000 + seed)
    out = []
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        out += [
            (x[perm[i : i + batch_size]], y[perm[i : i + batch_size]])
            for i in range(0, len(x) - batch_size + 1, batch_size)
        ]
    return out


# -- remedies --------------------------------------------------------------------------------------
def set_lr(lr: float) -> Remedy:
    """A remedy that sets every group's lr to ``lr``."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for g in opt.param_groups:
            g["lr"] = lr
        return opt

    return remedy


def scale_lr(factor: float) -> Remedy:
    """A remedy that multiplies every group's lr by ``factor``."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for g in opt.param_groups:
            g["lr"] = g["lr"] * factor
        return opt

    return remedy


def set_group(key: str, value: Any) -> Remedy:
    """A remedy that sets ``key`` of every parameter group to ``value``."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        for g in opt.param_groups:
            g[key] = value
        return opt

    return remedy


def switch_to_adam(lr: float, weight_decay: float = 0.0) -> Remedy:
    """A remedy that switches to Adam at ``lr`` (with ``weight_decay``)."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [p for g in opt.param_groups for p in g["params"]], lr=lr, weight_decay=weight_decay
        )

    return remedy


def restore(state: dict[str, torch.Tensor], then: Remedy) -> Remedy:
    """A remedy that restores ``state`` and then applies ``then``."""

    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        model.load_state_dict(state)
        opt.state.clear()
        return then(model, opt)

    return remedy


# -- data ------------------------------------------------------------------------------------------
def mnist(seed: int, n: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` MNIST-1D training samples drawn with the seed from a 4,000-sample set."""
    x, y, _, _ = mnist1d_arrays(4000, 1000, 42)
    idx = np.random.default_rng(1000 + seed).choice(len(x), n, replace=False)
    return torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def markov_tokens(
    seed: int, n: int = 512, length: int = 16, vocab: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences from a random sparse Markov chain: inputs are tokens 0..L-1, targets tokens 1..L."""
    rng = np.random.default_rng(500 + seed)
    trans = rng.dirichlet(np.full(vocab, 0.2), size=vocab)
    seqs = np.zeros((n, length + 1), dtype=np.int64)
    seqs[:, 0] = rng.integers(0, vocab, n)
    for t in range(length):
        cum = trans[seqs[:, t]].cumsum(1)
        seqs[:, t + 1] = (rng.random((n, 1)) < cum).argmax(1)
    s = torch.from_numpy(seqs)
    return s[:, :-1], s[:, 1:]


def least_squares_data(
    seed: int, scales: torch.Tensor, n: int = 64, noise: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Least-squares data whose features are scaled by ``scales`` (``n`` samples, optional noise)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, len(scales), generator=gen, dtype=torch.float64) * scales
    w = torch.randn(len(scales), 1, generator=gen, dtype=torch.float64)
    y = x @ w + noise * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    return x, y, w


def ls_hessian(x: torch.Tensor) -> torch.Tensor:
    """The Hessian of mse_loss(x @ w, y): 2·mean(x xᵀ)."""
    return 2 * x.T @ x / len(x)


# -- models ----------------------------------------------------------------------------------------
def mlp(
    seed: int,
    hidden: int = 64,
    depth: int = 1,
    act: type[nn.Module] = nn.ReLU,
    inp: int = 40,
    out: int = 10,
) -> nn.Sequential:
    """An MLP initialized from ``seed``."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    width = inp
    for _ in range(depth):
        layers += [nn.Linear(width, hidden), act()]
        width = hidden
    layers.append(nn.Linear(width, out))
    return nn.Sequential(*layers)


def _linear_at(model: nn.Sequential, index: int) -> nn.Linear:
    """``model[index]``, a linear layer (indexing a Sequential gives a plain Module)."""
    layer = model[index]
    if not isinstance(layer, nn.Linear):
        raise TypeError(f"layer {index} of the model is a {type(layer).__name__}, not a Linear.")
    return layer


class BNConvNet(nn.Sequential):
    """A 1-D convnet with BatchNorm for MNIST-1D signals (about 4k parameters)."""

    def __init__(self, channels: int = 8, classes: int = 10, length: int = 40):
        super().__init__(
            nn.Unflatten(1, (1, length)),
            nn.Conv1d(1, channels, 5, padding=2),
            nn.BatchNorm1d(channels),
            nn.ReLU(),
            nn.Conv1d(channels, 2 * channels, 5, padding=2, stride=2),
            nn.BatchNorm1d(2 * channels),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (length // 2), classes),
        )


class TinyLM(nn.Module):
    """A 2-layer pre-norm causal transformer with tied input/output embeddings (about 26k parameters): logits (batch, length, vocab)."""

    mask: torch.Tensor  # a registered buffer, declared for the type checker

    def __init__(
        self, vocab: int = 12, dim: int = 32, heads: int = 4, layers: int = 2, length: int = 16
    ):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.02 * torch.randn(length, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.register_buffer(
            "mask", nn.Transformer.generate_square_subsequent_mask(length), persistent=False
        )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Logits for every position of ``tokens``."""
        t = tokens.shape[1]
        h = self.embed(tokens) + self.position[:t]
        h = self.blocks(h, mask=self.mask[:t, :t], is_causal=True)
        return self.norm(h) @ self.embed.weight.T


def token_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every token."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def onehot_mse(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """MSE between the softmax outputs and the one-hot targets (the lecture's flat loss)."""
    return F.mse_loss(out, F.one_hot(t, out.shape[-1]).to(out.dtype))


def _lm(seed: int) -> TinyLM:
    torch.manual_seed(seed)
    return TinyLM()


def _lam_ls(x: torch.Tensor) -> float:
    return float(torch.linalg.eigvalsh(ls_hessian(x))[-1])


# -- families: progressing -----------------------------------------------------------------------------
def _top_eigenvalue(model: nn.Module, data: tuple) -> float:
    """λ_max of the cross-entropy Hessian to 1e-3, to set a scenario's lr (a loose pair is fine here)."""
    import warnings

    from ..curvature import eigenpairs, hessian

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(
            eigenpairs(
                hessian(model, F.cross_entropy, data), k=1, which="largest", tol=1e-3
            ).eigenvalues[0]
        )


def healthy_mlp_adam(seed: int) -> Stall:
    """A healthy run: an MLP with Adam."""
    x, y = mnist(seed)
    model = mlp(seed, 64)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    data = batches_of(x, y, 64, seed, epochs=4)
    return _run(model, F.cross_entropy, opt, data, (x, y), 120, set_lr(2e-3), 200)


def healthy_cnn_bn_sgd(seed: int) -> Stall:
    """A healthy run: a CNN with BatchNorm and SGD."""
    x, y = mnist(seed)
    torch.manual_seed(seed)
    model = BNConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    data = batches_of(x, y, 64, seed, epochs=4)
    return _run(model, F.cross_entropy, opt, data, (x, y), 100, set_lr(0.05), 200)


def healthy_lm_adamw(seed: int) -> Stall:
    """A healthy run: a small language model with AdamW."""
    x, y = markov_tokens(seed)
    model = _lm(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.01)
    data = batches_of(x, y, 32, seed, epochs=4)
    return _run(model, token_loss, opt, data, (x, y), 100, set_lr(3e-3), 200)


def healthy_least_squares(seed: int) -> Stall:
    """A healthy run: least squares."""
    x, y, _ = least_squares_data(seed, torch.logspace(-0.3, 0.3, 6, dtype=torch.float64), noise=0.1)
    model = nn.Linear(6, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(
            3
            * torch.randn(1, 6, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        )
    lr = 0.05 / _lam_ls(x)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return _run(model, F.mse_loss, opt, [(x, y)], (x, y), 60, set_lr(lr), 200)


# -- families: diverging -----------------------------------------------------------------------------------
def diverging_least_squares(seed: int) -> Stall:
    """Diverging: least squares at an lr above the stability limit."""
    x, y, _ = least_squares_data(seed, torch.logspace(-0.5, 0.5, 4, dtype=torch.float64))
    model = nn.Linear(4, 1, bias=False).double()
    lam = _lam_ls(x)
    c = 2.2 + np.random.default_rng(seed).random() * 0.6
    opt = torch.optim.SGD(model.parameters(), lr=c / lam)
    return _run(model, F.mse_loss, opt, [(x, y)], (x, y), 30, set_lr(1.0 / lam), 100)


def diverging_mlp_nan(seed: int) -> Stall:
    """SGD with lr far too high on an MSE MLP: the loss grows and the parameters go to NaN.

    The checkpoint is the last finite state a few steps before."""
    x, y = mnist(seed)
    model = mlp(seed, 32)
    data = batches_of(x, y, 64, seed, epochs=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    losses = train_steps(model, onehot_mse, opt, data, 0, 60)
    checkpoint = copy.deepcopy(model.state_dict())
    for g in opt.param_groups:
        g["lr"] = 40.0
    more = train_steps(model, onehot_mse, opt, data, 60, 60)
    return Stall(
        model=model,
        loss_fn=onehot_mse,
        data=data,
        optimizer=opt,
        losses=losses + more,
        steps=len(losses) + len(more),
        full_data=(x, y),
        checkpoint=checkpoint,
        remedy=restore(checkpoint, set_lr(0.05)),
        horizon=100,
    )


# -- families: oscillation (lr too high for the sharpest direction) --------------------------------------
def oscillating_least_squares(seed: int) -> Stall:
    """GD with lr·λ_max in [1.9985, 1.9995], started along the sharpest direction.

    It bounces between the valley walls and the bounce is most of the loss."""
    x, y, _ = least_squares_data(seed, torch.logspace(-0.5, 0.5, 8, dtype=torch.float64))
    lam, vecs = torch.linalg.eigh(ls_hessian(x))
    w_star = torch.linalg.lstsq(x, y).solution.reshape(-1)
    gen = torch.Generator().manual_seed(seed)
    model = nn.Linear(8, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(
            w_star + 2 * vecs[:, -1] + 0.1 * torch.randn(8, generator=gen, dtype=torch.float64)
        )
    c = 1.9985 + 0.001 * np.random.default_rng(seed).random()
    opt = torch.optim.SGD(model.parameters(), lr=c / float(lam[-1]))
    return _run(model, F.mse_loss, opt, [(x, y)], (x, y), 100, set_lr(1.0 / float(lam[-1])), 100)


def oscillating_lm_adam(seed: int) -> Stall:
    """The small transformer at AdamW lr 0.1.

    The preconditioned sharpness far beyond Adam's stability limit, the loss stuck well above what
    lr 3e-3 reaches."""
    x, y = markov_tokens(seed)
    model = _lm(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.01)
    data = batches_of(x, y, 32, seed, epochs=20)
    return _run(model, token_loss, opt, data, (x, y), 300, set_lr(1e-2), 200)


def oscillating_mlp_adam(seed: int) -> Stall:
    """An MLP at Adam lr 0.1: the loss bounces well above what lr 0.01 reaches."""
    x, y = mnist(seed)
    model = mlp(seed, 64)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    data = batches_of(x, y, 64, seed, epochs=30)
    return _run(model, F.cross_entropy, opt, data, (x, y), 1000, set_lr(0.01), 200)


# -- families: momentum too high --------------------------------------------------------------------------
def momentum_mlp(seed: int) -> Stall:
    """Too much momentum: an MLP."""
    x, y = mnist(seed)
    model = mlp(seed, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.995)
    data = batches_of(x, y, 64, seed, epochs=20)
    return _run(model, F.cross_entropy, opt, data, (x, y), 1000, set_group("momentum", 0.9), 200)


def momentum_cnn_bn(seed: int) -> Stall:
    """Too much momentum: a CNN with BatchNorm."""
    x, y = mnist(seed)
    torch.manual_seed(seed)
    model = BNConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.995)
    data = batches_of(x, y, 64, seed, epochs=20)
    return _run(model, F.cross_entropy, opt, data, (x, y), 800, set_group("momentum", 0.9), 200)


# -- families: ill-conditioned valley ---------------------------------------------------------------------
def valley_least_squares(seed: int) -> Stall:
    """The lecture's elongated valley.

    Least squares with condition number ~1e4, GD at lr·λ_max ≈ 1.99 after 1,000 steps: the steep
    direction has settled, the floor crawls."""
    scales = torch.tensor([1.0, 0.01], dtype=torch.float64) * torch.tensor(
        [10.0, 10.0], dtype=torch.float64
    )
    x, y, _ = least_squares_data(seed, scales, n=100)
    model = nn.Linear(2, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[-3.0, -7.0]], dtype=torch.float64))
    lam = _lam_ls(x)
    opt = torch.optim.SGD(model.parameters(), lr=1.99 / lam)
    stall = _run(model, F.mse_loss, opt, [(x, y)], (x, y), 1000, switch_to_adam(0.05), 300)
    return stall


def valley_logistic(seed: int) -> Stall:
    """Logistic regression on MNIST-1D with feature scales spread over 300x (unstandardized inputs), full-batch GD at lr 1/λ_max."""
    x, y = mnist(seed)
    scales = (
        torch.logspace(-1.25, 1.25, 40, generator=None)
        if False
        else torch.logspace(-1.25, 1.25, 40)
    )
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(seed))
    xs = x * scales[perm]
    torch.manual_seed(seed)
    model = nn.Linear(40, 10)
    lam = _top_eigenvalue(model, (xs, y))
    opt = torch.optim.SGD(model.parameters(), lr=1.0 / lam)
    return _run(model, F.cross_entropy, opt, [(xs, y)], (xs, y), 400, switch_to_adam(1e-2), 300)


# -- families: lr too small ------------------------------------------------------------------------------
def small_lr_mlp(seed: int) -> Stall:
    """The learning rate too small: an MLP."""
    x, y = mnist(seed)
    model = mlp(seed, 64)
    opt = torch.optim.SGD(model.parameters(), lr=2e-4)
    data = batches_of(x, y, 64, seed, epochs=4)
    return _run(model, F.cross_entropy, opt, data, (x, y), 120, set_lr(0.1), 200)


def small_lr_cnn_bn(seed: int) -> Stall:
    """The learning rate too small: a CNN with BatchNorm."""
    x, y = mnist(seed)
    torch.manual_seed(seed)
    model = BNConvNet()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    data = batches_of(x, y, 64, seed, epochs=4)
    return _run(model, F.cross_entropy, opt, data, (x, y), 120, set_lr(0.05), 200)


def small_lr_lm_adamw(seed: int) -> Stall:
    """The learning rate too small: a small language model with AdamW."""
    x, y = markov_tokens(seed)
    model = _lm(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6, weight_decay=0.01)
    data = batches_of(x, y, 32, seed, epochs=4)
    return _run(model, token_loss, opt, data, (x, y), 100, set_lr(3e-3), 200)


# -- families: minibatch gradient noise floor --------------------------------------------------------------
def noise_floor_mlp(seed: int) -> Stall:
    """SGD at batch 8 with lr 0.5 for 3,000 steps.

    The loss hovers at the noise floor (stable along λ_max, but the minibatch gradient is mostly
    noise); lr/10 goes lower at once."""
    x, y = mnist(seed, 4000)
    model = mlp(seed, 16)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    data = batches_of(x, y, 8, seed, epochs=1)
    return _run(model, F.cross_entropy, opt, data, (x, y), 3000, scale_lr(0.1), 300)


def noise_floor_least_squares(seed: int) -> Stall:
    """Noisy least squares with SGD at batch 2.

    The iterates bounce around the optimum at a level set by the lr and the label noise."""
    x, y, _ = least_squares_data(
        seed, torch.logspace(-0.3, 0.3, 10, dtype=torch.float64), n=256, noise=1.0
    )
    model = nn.Linear(10, 1, bias=False).double()
    data = batches_of(x, y, 2, seed, epochs=4)
    lr = 0.5 / _lam_ls(x)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    return _run(model, F.mse_loss, opt, data, (x, y), 400, set_lr(lr / 10), 300)


# -- families: flat plateau (saturated outputs) ------------------------------------------------------------
def plateau_sigmoid_mlp(seed: int) -> Stall:
    """A flat plateau: a sigmoid MLP."""
    x, y = mnist(seed, 512)
    body = mlp(seed, 16, act=nn.Sigmoid)
    with torch.no_grad():
        _linear_at(body, 2).bias.fill_(
            8.0
        )  # every output sigmoid saturated at ~1: confidently wrong
    model = nn.Sequential(body, nn.Sigmoid())
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return _run(model, onehot_mse, opt, [(x, y)], (x, y), 200, switch_to_adam(1e-2), 200)


def plateau_softmax_mse(seed: int) -> Stall:
    """A flat plateau: MSE on softmax outputs."""
    x, y = mnist(seed, 512)
    torch.manual_seed(seed)
    lin = nn.Linear(40, 10)
    with torch.no_grad():
        lin.bias.copy_(torch.linspace(0, 12, 10))  # softmax saturated on the last class

    def softmax_mse(out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(torch.softmax(out, -1), F.one_hot(t, 10).to(out.dtype))

    opt = torch.optim.SGD(lin.parameters(), lr=0.5)
    return _run(lin, softmax_mse, opt, [(x, y)], (x, y), 400, switch_to_adam(1e-2), 200)


# -- families: dead ReLUs ---------------------------------------------------------------------------------
def dead_relu_mlp(seed: int) -> Stall:
    """SGD at lr 4 (far too high) on a ReLU MLP: the ReLUs die, the loss stalls at ~ln 10."""
    x, y = mnist(seed)
    model = mlp(seed, 64, depth=2)
    fresh = copy.deepcopy(model.state_dict())
    data = batches_of(x, y, 64, seed, epochs=8)
    opt = torch.optim.SGD(model.parameters(), lr=4.0)
    return _run(model, F.cross_entropy, opt, data, (x, y), 600, restore(fresh, set_lr(0.1)), 200)


def dead_relu_cnn_bn(seed: int) -> Stall:
    """SGD at lr 2 on the BatchNorm convnet: the last ReLU layer dies whole, loss at ln 10."""
    x, y = mnist(seed)
    torch.manual_seed(seed)
    model = BNConvNet()
    fresh = copy.deepcopy(model.state_dict())
    data = batches_of(x, y, 64, seed, epochs=8)
    opt = torch.optim.SGD(model.parameters(), lr=2.0)
    return _run(model, F.cross_entropy, opt, data, (x, y), 300, restore(fresh, set_lr(0.1)), 200)


def dead_relu_bias(seed: int) -> Stall:
    """ReLU units initialized with large negative biases: most never fire."""
    x, y = mnist(seed)
    model = mlp(seed, 64, depth=2)
    with torch.no_grad():
        _linear_at(model, 0).bias.fill_(-6.0)
        _linear_at(model, 2).bias.fill_(-3.0)
    data = batches_of(x, y, 64, seed, epochs=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    fresh = mlp(seed, 64, depth=2).state_dict()
    return _run(model, F.cross_entropy, opt, data, (x, y), 200, restore(fresh, set_lr(0.05)), 200)


# -- families: vanishing gradients -------------------------------------------------------------------------
def vanishing_sigmoid_deep(seed: int) -> Stall:
    """A 6-layer sigmoid MLP with SGD.

    The hidden layers' gradients are orders of magnitude smaller, relative to their weights, than
    the last layer's; the loss sits at ln 10."""
    x, y = mnist(seed)
    model = mlp(seed, 32, depth=6, act=nn.Sigmoid)
    data = batches_of(x, y, 64, seed, epochs=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _run(model, F.cross_entropy, opt, data, (x, y), 200, switch_to_adam(1e-2), 200)


def vanishing_tanh_small_init(seed: int) -> Stall:
    """Vanishing gradients: a deep tanh MLP with a tiny initialization."""
    x, y = mnist(seed)
    model = mlp(seed, 32, depth=8, act=nn.Tanh)
    with torch.no_grad():
        for m in model:
            if isinstance(m, nn.Linear):
                m.weight.mul_(0.3)
    data = batches_of(x, y, 64, seed, epochs=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _run(model, F.cross_entropy, opt, data, (x, y), 200, switch_to_adam(3e-3), 200)


# -- families: weight decay too strong -----------------------------------------------------------------------
def weight_decay_mlp_adamw(seed: int) -> Stall:
    """Too much weight decay: an MLP with AdamW."""
    x, y = mnist(seed)
    model = mlp(seed, 64)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=3.0)
    data = batches_of(x, y, 64, seed, epochs=16)
    return _run(
        model, F.cross_entropy, opt, data, (x, y), 400, set_group("weight_decay", 0.01), 200
    )


def weight_decay_lm_adamw(seed: int) -> Stall:
    """Too much weight decay: a small language model with AdamW."""
    x, y = markov_tokens(seed)
    model = _lm(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5.0)
    data = batches_of(x, y, 32, seed, epochs=40)
    return _run(model, token_loss, opt, data, (x, y), 600, set_group("weight_decay", 0.01), 200)


def weight_decay_mlp_sgd(seed: int) -> Stall:
    """Too much weight decay: an MLP with SGD."""
    x, y = mnist(seed)
    model = mlp(seed, 64)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=0.3)
    data = batches_of(x, y, 64, seed, epochs=16)
    return _run(
        model, F.cross_entropy, opt, data, (x, y), 400, set_group("weight_decay", 1e-4), 200
    )


# -- families: saddle points -------------------------------------------------------------------------------
def saddle_lecture(seed: int) -> Stall:
    """A saddle point: the lecture's toy."""
    gen = np.random.default_rng(seed)
    model = ProductNet(*(1e-8 * gen.standard_normal(2)))
    data = (torch.ones(1, 1), torch.ones(1, 1))

    def escape(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        with torch.no_grad():
            for w in model.parameters():  # w1 and w2
                w.add_(0.7)
        return opt

    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _run(model, F.mse_loss, opt, [data], data, 100, escape, 100)


def _escape_by_noise(scale: float, seed: int) -> Remedy:
    def remedy(model: nn.Module, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        return opt

    return remedy


def saddle_zero_tanh_mlp(seed: int) -> Stall:
    """A saddle point: a tanh MLP initialized at zero."""
    x, y = mnist(seed, 512)
    model = mlp(seed, 16, act=nn.Tanh)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    return _run(
        model, F.cross_entropy, opt, [(x, y)], (x, y), 100, _escape_by_noise(0.1, seed), 200
    )


def saddle_deep_linear(seed: int) -> Stall:
    """A saddle point: a deep linear network."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen)
    y = x @ torch.randn(6, 3, generator=gen)
    model = nn.Sequential(nn.Linear(6, 4, bias=False), nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _run(model, F.mse_loss, opt, [(x, y)], (x, y), 100, _escape_by_noise(0.1, seed), 200)


# -- families: degenerate critical point ----------------------------------------------------------------
def degenerate_deep_linear(seed: int) -> Stall:
    """A 3-layer linear net at zero: gradient and Hessian both vanish (a higher-order saddle)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 6, generator=gen)
    y = x @ torch.randn(6, 3, generator=gen)
    model = nn.Sequential(
        nn.Linear(6, 4, bias=False), nn.Linear(4, 4, bias=False), nn.Linear(4, 3, bias=False)
    )
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    return _run(model, F.mse_loss, opt, [(x, y)], (x, y), 100, _escape_by_noise(0.3, seed), 300)


# -- families: converged ---------------------------------------------------------------------------------
def converged_least_squares(seed: int) -> Stall:
    """Converged: least squares at its minimum."""
    x, y, _ = least_squares_data(seed, torch.logspace(-0.5, 0.5, 5, dtype=torch.float64), noise=0.5)
    model = nn.Linear(5, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    opt = torch.optim.SGD(model.parameters(), lr=1 / _lam_ls(x))
    return _run(model, F.mse_loss, opt, [(x, y)], (x, y), 100, set_lr(1 / _lam_ls(x)), 100)


def converged_mlp(seed: int) -> Stall:
    """Converged: an MLP trained to a small loss."""
    from ..training.stationary import minimize_full_batch

    x, y = mnist(seed, 128)
    model = mlp(seed, 8, act=nn.Tanh)
    minimize_full_batch(model, F.cross_entropy, (x, y), max_iters=400, target=1e-6)
    lam = _top_eigenvalue(model, (x, y))
    opt = torch.optim.SGD(model.parameters(), lr=0.5 / lam)
    return _run(model, F.cross_entropy, opt, [(x, y)], (x, y), 100, set_lr(0.5 / lam), 100)


FAMILIES: list[StallFamily] = [
    StallFamily(
        "healthy/mlp-adam",
        "progressing",
        "MLP 40-64-10",
        "Adam 2e-3, batch 64, 120 steps in",
        healthy_mlp_adam,
    ),
    StallFamily(
        "healthy/cnn-bn-sgd",
        "progressing",
        "CNN + BatchNorm",
        "SGD 0.05 momentum 0.9, 100 steps in",
        healthy_cnn_bn_sgd,
    ),
    StallFamily(
        "healthy/lm-adamw",
        "progressing",
        "transformer (2 layers)",
        "AdamW 3e-3, 100 steps in",
        healthy_lm_adamw,
    ),
    StallFamily(
        "healthy/least-squares",
        "progressing",
        "least squares",
        "GD at 0.05/λ_max, 60 steps in",
        healthy_least_squares,
    ),
    StallFamily(
        "diverging/least-squares",
        "diverging",
        "least squares",
        "GD at 2.2-2.8/λ_max",
        diverging_least_squares,
    ),
    StallFamily(
        "diverging/mlp-nan",
        "diverging",
        "MLP 40-32-10, MSE",
        "SGD lr 40: NaN parameters",
        diverging_mlp_nan,
    ),
    StallFamily(
        "oscillation/least-squares",
        "oscillation",
        "least squares",
        "GD at 1.99/λ_max on the steep wall",
        oscillating_least_squares,
    ),
    StallFamily(
        "oscillation/lm-adam",
        "oscillation",
        "transformer (2 layers)",
        "AdamW at lr 0.1",
        oscillating_lm_adam,
    ),
    StallFamily(
        "oscillation/mlp-adam",
        "oscillation",
        "MLP 40-64-10",
        "Adam at lr 0.1",
        oscillating_mlp_adam,
    ),
    StallFamily(
        "momentum/mlp",
        "momentum_too_high",
        "MLP 40-64-10",
        "SGD lr 0.05 momentum 0.995",
        momentum_mlp,
    ),
    StallFamily(
        "momentum/cnn-bn",
        "momentum_too_high",
        "CNN + BatchNorm",
        "SGD lr 0.1 momentum 0.995",
        momentum_cnn_bn,
    ),
    StallFamily(
        "ill-conditioned/least-squares",
        "ill_conditioned",
        "least squares",
        "valley with condition number ~1e4, GD at 1.99/λ_max after 1,000 steps",
        valley_least_squares,
    ),
    StallFamily(
        "ill-conditioned/logistic",
        "ill_conditioned",
        "logistic regression",
        "feature scales over 300x, GD at 1/λ_max",
        valley_logistic,
    ),
    StallFamily("lr-too-small/mlp", "lr_too_small", "MLP 40-64-10", "SGD lr 2e-4", small_lr_mlp),
    StallFamily(
        "lr-too-small/cnn-bn",
        "lr_too_small",
        "CNN + BatchNorm",
        "SGD lr 1e-4 momentum 0.9",
        small_lr_cnn_bn,
    ),
    StallFamily(
        "lr-too-small/lm-adamw",
        "lr_too_small",
        "transformer (2 layers)",
        "AdamW lr 1e-6",
        small_lr_lm_adamw,
    ),
    StallFamily(
        "noise/mlp",
        "gradient_noise",
        "MLP 40-16-10",
        "SGD lr 0.5 at batch 8, 3,000 steps",
        noise_floor_mlp,
    ),
    StallFamily(
        "noise/least-squares",
        "gradient_noise",
        "least squares",
        "noisy labels, SGD at batch 2",
        noise_floor_least_squares,
    ),
    StallFamily(
        "plateau/sigmoid-mse",
        "flat_plateau",
        "sigmoid MLP, MSE",
        "saturated sigmoid outputs",
        plateau_sigmoid_mlp,
    ),
    StallFamily(
        "plateau/softmax-mse",
        "flat_plateau",
        "linear softmax, MSE",
        "saturated softmax outputs",
        plateau_softmax_mse,
    ),
    StallFamily(
        "dead/relu-mlp-lr4",
        "dead_units",
        "ReLU MLP 40-64-64-10",
        "SGD at lr 4 killed the ReLUs",
        dead_relu_mlp,
    ),
    StallFamily(
        "dead/cnn-bn-lr2",
        "dead_units",
        "CNN + BatchNorm",
        "SGD at lr 2 killed the last ReLU layer",
        dead_relu_cnn_bn,
    ),
    StallFamily(
        "dead/relu-bias",
        "dead_units",
        "ReLU MLP 40-64-64-10",
        "biases initialized at -6 / -3",
        dead_relu_bias,
    ),
    StallFamily(
        "vanishing/sigmoid-deep",
        "vanishing_gradients",
        "6-layer sigmoid MLP",
        "SGD lr 0.05",
        vanishing_sigmoid_deep,
    ),
    StallFamily(
        "vanishing/tanh-small-init",
        "vanishing_gradients",
        "8-layer tanh MLP",
        "weights 0.3x, SGD",
        vanishing_tanh_small_init,
    ),
    StallFamily(
        "weight-decay/mlp-adamw",
        "weight_decay",
        "MLP 40-64-10",
        "AdamW weight decay 3",
        weight_decay_mlp_adamw,
    ),
    StallFamily(
        "weight-decay/lm-adamw",
        "weight_decay",
        "transformer (2 layers)",
        "AdamW weight decay 5",
        weight_decay_lm_adamw,
    ),
    StallFamily(
        "weight-decay/mlp-sgd",
        "weight_decay",
        "MLP 40-64-10",
        "SGD weight decay 0.3",
        weight_decay_mlp_sgd,
    ),
    StallFamily(
        "saddle/lecture",
        "saddle_point",
        "lecture w1·w2 toy",
        "a hair from the saddle",
        saddle_lecture,
    ),
    StallFamily(
        "saddle/zero-tanh-mlp",
        "saddle_point",
        "tanh MLP 40-16-10",
        "every weight zero",
        saddle_zero_tanh_mlp,
    ),
    StallFamily(
        "saddle/deep-linear",
        "saddle_point",
        "linear 6-4-3",
        "every weight zero",
        saddle_deep_linear,
    ),
    StallFamily(
        "degenerate/deep-linear",
        "degenerate",
        "linear 6-4-4-3",
        "every weight zero",
        degenerate_deep_linear,
    ),
    StallFamily(
        "converged/least-squares",
        "converged",
        "least squares",
        "at the least-squares solution",
        converged_least_squares,
    ),
    StallFamily(
        "converged/mlp", "converged", "tanh MLP 40-8-10", "L-BFGS to a zero gradient", converged_mlp
    ),
]
