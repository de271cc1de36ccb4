"""Held-out evaluation #3 of the stall doctor (``ld.diagnose``), built blind.

Stall families the doctor's authors never saw (architectures, data and optimizers chosen by an
independent evaluator), x seeds 300/301, plus healthy runs for false alarms.

Per run:
 1. train the family's recipe into its stall (the per-step minibatch losses are the history);
 2. VERIFY THE LABEL before the doctor runs: from an exact copy of the state, apply the family's
    canonical remedy for its cause and train ``horizon`` steps; it must reach >= 5% lower final
    full-data training loss than continuing unchanged (same batches), else the run is dropped;
 3. ``ld.diagnose(model, loss_fn, data, history=..., optimizer=opt, verify=True)`` once; record the
    cause (right when in the family's valid set fixed in this file beforehand), the state_dict and
    global RNG before/after, crashes, wall time;
 4. apply the first applicable prescription with ``rx.apply(model, optimizer)`` to a copy of the
    same state, train the same horizon on the same batches: 'fixed' (>= 5% lower than unchanged),
    'harmful' (NaN or > 5% higher).

Healthy runs (still improving, or at a true minimum) are verified the same way before the doctor:
improving = the next horizon lowers the full loss by >= 5%; converged = neither 3x lr, lr/3 nor
Adam(1e-3) lowers it by >= 5%. A false alarm: stalled=True or a cause other than progressing on an
improving run; a cause outside {converged, progressing} on a converged one.

The ``*_late`` families are a secondary set added after the primary run by a rule that does not look
at the doctor's verdicts (stall families whose history still fell >= 10% between the halves of its
last 200 steps on both seeds): the same recipe with 4x the steps before the diagnosis.

Usage (about 4 minutes per seed on one core):
    PYTHONPATH=src python benchmarks/doctor_heldout3.py --seeds 300 --out /tmp/h3_300.json
    PYTHONPATH=src python benchmarks/doctor_heldout3.py --seeds 301 --out /tmp/h3_301.json
    PYTHONPATH=src python benchmarks/doctor_heldout3.py --summarize /tmp/h3_300.json /tmp/h3_301.json \
        --to benchmarks/results/doctor_heldout3.json     # also writes the .txt table
"""

# ruff: noqa: E702 - the scenario builders seed and load data on one line on purpose (compact, one family per block)
from __future__ import annotations

import argparse
import copy
import json
import math
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld

torch.set_num_threads(1)
FIX = 0.05
SKIP_DOCTOR = False  # 5% margin for fixed / harmful / label verified


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------
def digits(n: int = 1200, flat: bool = True):
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data[:n], dtype=torch.float32) / 16.0
    y = torch.tensor(d.target[:n], dtype=torch.long)
    if not flat:
        x = x.view(-1, 1, 8, 8)
    return x, y


def mnist1d(n: int = 1500):
    p = Path.home() / ".cache/lossdoctor/mnist1d-4000-1000-42.npz"
    z = np.load(p)
    x = torch.tensor(z["x"][:n], dtype=torch.float32)
    x = (x - x.mean()) / x.std()
    return x.unsqueeze(1), torch.tensor(z["y"][:n], dtype=torch.long)


def teacher_regression(seed: int, n: int = 800, d: int = 16, out: int = 1, noise: float = 0.05):
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(n, d, generator=g)
    w1 = torch.randn(d, 32, generator=g) / math.sqrt(d)
    w2 = torch.randn(32, out, generator=g) / math.sqrt(32)
    y = torch.tanh(x @ w1) @ w2 + noise * torch.randn(n, out, generator=g)
    return x, y


def token_majority(seed: int, n: int = 600, length: int = 10, vocab: int = 4):
    g = torch.Generator().manual_seed(seed + 11)
    x = torch.randint(vocab, (n, length), generator=g)
    counts = F.one_hot(x, vocab).sum(1).float() + 0.01 * torch.arange(vocab)  # ties -> larger token
    return x, counts.argmax(1)


def adding_sequences(seed: int, n: int = 400, length: int = 25):
    g = torch.Generator().manual_seed(seed + 13)
    x = torch.randn(n, length, 1, generator=g)
    y = x[:, :6, 0].sum(1, keepdim=True) / 2.0  # the first inputs must be carried through time
    return x, y


def recent_sequences(seed: int, n: int = 400, length: int = 20):
    g = torch.Generator().manual_seed(seed + 13)
    x = torch.randn(n, length, 1, generator=g)
    return x, x[:, -4:, 0].sum(1, keepdim=True) / 2.0


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def mlp(sizes, act=nn.ReLU, norm=None, last=None):
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            if norm is not None:
                layers.append(norm(sizes[i + 1]))
            layers.append(act())
    if last is not None:
        layers.append(last)
    return nn.Sequential(*layers)


class CNN2d(nn.Module):
    def __init__(self, bn=False, ch=8):
        super().__init__()
        self.c1 = nn.Conv2d(1, ch, 3, padding=1)
        self.b1 = nn.BatchNorm2d(ch) if bn else nn.Identity()
        self.c2 = nn.Conv2d(ch, ch, 3, padding=1)
        self.b2 = nn.BatchNorm2d(ch) if bn else nn.Identity()
        self.fc = nn.Linear(ch * 4 * 4, 10)

    def forward(self, x):
        x = F.relu(self.b1(self.c1(x)))
        x = F.max_pool2d(F.relu(self.b2(self.c2(x))), 2)
        return self.fc(x.flatten(1))


class CNN1d(nn.Module):
    def __init__(self, ch=12):
        super().__init__()
        self.c1 = nn.Conv1d(1, ch, 5, padding=2, stride=2)
        self.c2 = nn.Conv1d(ch, ch, 3, padding=1, stride=2)
        self.fc = nn.Linear(ch * 10, 10)

    def forward(self, x):
        return self.fc(F.relu(self.c2(F.relu(self.c1(x)))).flatten(1))


class TinyTransformer(nn.Module):
    def __init__(self, vocab=4, d=16, length=10, classes=4):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(0.1 * torch.randn(length, d))
        self.block = nn.TransformerEncoderLayer(d, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        h = self.block(self.emb(x) + self.pos)
        return self.head(h.mean(1))


class RNNReg(nn.Module):
    def __init__(self, hidden=24, gain=1.0, cell="rnn"):
        super().__init__()
        self.rnn = (nn.RNN if cell == "rnn" else nn.GRU)(1, hidden, batch_first=True)
        if gain != 1.0:
            with torch.no_grad():
                self.rnn.weight_hh_l0.mul_(gain)
        self.head = nn.Linear(hidden, 1)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def scale_init(model: nn.Module, factor: float) -> nn.Module:
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(factor)
    return model


# ---------------------------------------------------------------------------------------------
# remedies (the evaluator's canonical fix for each cause, used only to verify labels)
# ---------------------------------------------------------------------------------------------
def r_lr(f):
    def go(st):
        for g in st["opt"].param_groups:
            g["lr"] *= f
        if st["sched"] is not None:
            st["sched"].base_lrs = [b * f for b in st["sched"].base_lrs]

    go.__doc__ = f"lr x{f}"
    return go


def r_momentum(m):
    def go(st):
        for g in st["opt"].param_groups:
            g["momentum"] = m

    go.__doc__ = f"momentum {m}"
    return go


def r_wd(f):
    def go(st):
        for g in st["opt"].param_groups:
            g["weight_decay"] *= f

    go.__doc__ = f"weight decay x{f}"
    return go


def r_adam(lr):
    def go(st):
        st["opt"] = torch.optim.Adam(st["model"].parameters(), lr=lr)
        st["sched"] = None

    go.__doc__ = f"switch to Adam lr={lr}"
    return go


def r_clip(c):
    def go(st):
        st["clip"] = c

    go.__doc__ = f"clip grad norm {c}"
    return go


def r_perturb(std):
    def go(st):
        g = torch.Generator().manual_seed(1234)
        with torch.no_grad():
            for p in st["model"].parameters():
                if p.dim() > 1:
                    p.add_(std * torch.randn(p.shape, generator=g))

    go.__doc__ = f"perturb weights (std {std})"
    return go


def r_reinit_relu_layers(lr_factor=1.0):
    def go(st):
        torch.manual_seed(4321)
        for m in st["model"].modules():
            if isinstance(m, nn.Linear):
                m.reset_parameters()
        for g in st["opt"].param_groups:
            g["lr"] *= lr_factor
        st["opt"].state.clear()

    go.__doc__ = f"re-initialize the layers, lr x{lr_factor}"
    return go


def r_no_warmup(target):
    def go(st):
        st["sched"] = None
        for g in st["opt"].param_groups:
            g["lr"] = target

    go.__doc__ = f"drop the warm-up, lr={target}"
    return go


# ---------------------------------------------------------------------------------------------
# families
# ---------------------------------------------------------------------------------------------
@dataclass
class Family:
    name: str
    label: str  # the evaluator's cause
    valid: tuple  # causes accepted as right (fixed before running the doctor)
    build: Callable  # seed -> dict(model, loss_fn, x, y, bs, opt, sched?, pre, horizon)
    remedy: Callable | None  # canonical remedy (None for healthy)
    healthy: str | None = None  # "improving" | "converged"
    note: str = ""
    secondary: bool = False  # added after the primary run (see LATE)


def _ce(o, y):
    return F.cross_entropy(o, y)


def mse_onehot(o, y):
    return F.mse_loss(o, F.one_hot(y, 10).float())


mse_onehot.__name__ = "mse_onehot"


def fam_list() -> list[Family]:
    L = []

    def add(*a, **k):
        L.append(Family(*a, **k))

    # 1. Adam lr far too high, regression MLP, minibatch
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed)
        m = mlp([16, 128, 64, 1])
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=32,
            opt=torch.optim.Adam(m.parameters(), lr=0.1),
            pre=400,
            horizon=300,
        )

    add(
        "adam_lr_high_regression_mlp",
        "oscillation",
        ("oscillation", "diverging", "gradient_noise"),
        b,
        r_lr(0.1),
    )

    # 2. SGD+momentum lr too high on a 1-D CNN (mnist1d)
    def b(seed):
        torch.manual_seed(seed)
        x, y = mnist1d()
        m = CNN1d()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.SGD(m.parameters(), lr=0.3, momentum=0.9),
            pre=400,
            horizon=300,
        )

    add(
        "sgdm_lr_high_cnn1d",
        "oscillation",
        ("oscillation", "diverging", "gradient_noise"),
        b,
        r_lr(0.1),
    )

    # 2b. full-batch GD at lr 0.5 on a tanh regression MLP (edge of stability)
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed)
        m = mlp([16, 64, 64, 1], act=nn.Tanh)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.5),
            pre=400,
            horizon=300,
        )

    add("gd_eos_tanh_regression", "oscillation", ("oscillation", "diverging"), b, r_lr(0.25))

    # 3. AdamW lr too low, tiny transformer
    def b(seed):
        torch.manual_seed(seed)
        x, y = token_majority(seed)
        m = TinyTransformer()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=32,
            opt=torch.optim.AdamW(m.parameters(), lr=3e-6),
            pre=300,
            horizon=250,
        )

    add("adamw_lr_low_transformer", "lr_too_small", ("lr_too_small",), b, r_lr(300.0))

    # 4. SGD lr too low, 2-D CNN on digits images
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits(flat=False)
        m = CNN2d()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.SGD(m.parameters(), lr=2e-4),
            pre=300,
            horizon=300,
        )

    add("sgd_lr_low_cnn2d_digits", "lr_too_small", ("lr_too_small",), b, r_lr(100.0))

    # 5. heavy-ball momentum 0.995 on a digits softmax regression, full batch
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed)
        m = nn.Linear(16, 1)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.995),
            pre=400,
            horizon=300,
        )

    add(
        "momentum_0995_linreg",
        "momentum_too_high",
        ("momentum_too_high", "oscillation"),
        b,
        r_momentum(0.9),
    )

    # 6. ill-conditioned least squares: features scaled over 3 decades, GD at the steep direction's limit
    def b(seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(500, 10, generator=g) * torch.logspace(0, 1.5, 10)
        y = x @ torch.randn(10, 1, generator=g) / 10 + 0.01 * torch.randn(500, 1, generator=g)
        torch.manual_seed(seed)
        m = nn.Linear(10, 1)
        lam = float(torch.linalg.eigvalsh(2 * x.T @ x / 500).max())
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=1.6 / lam),
            pre=300,
            horizon=300,
        )

    add(
        "ill_conditioned_lstsq_gd",
        "ill_conditioned",
        ("ill_conditioned", "lr_too_small"),
        b,
        r_adam(0.03),
    )

    # 7. deep tanh net from a tiny init: stuck at the saddle at the origin
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed, out=1)
        m = scale_init(mlp([16, 32, 32, 32, 1], act=nn.Tanh), 1e-3)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.05),
            pre=300,
            horizon=300,
        )

    add(
        "tanh_tiny_init_saddle",
        "saddle_point",
        ("saddle_point", "degenerate", "vanishing_gradients", "flat_plateau"),
        b,
        r_perturb(0.3),
    )

    # 8. dead ReLUs: hidden biases pushed to -5 (a bad custom init), Adam
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        m = mlp([64, 64, 64, 10])
        with torch.no_grad():
            m[0].bias.fill_(-6.0)
            m[2].bias.fill_(-6.0)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.Adam(m.parameters(), lr=1e-4),
            pre=200,
            horizon=300,
        )

    add("dead_relu_neg_bias_digits", "dead_units", ("dead_units",), b, r_reinit_relu_layers(1.0))

    # 9. deep sigmoid MLP (8 layers), SGD: vanishing gradients
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        m = mlp([64] + [48] * 6 + [10], act=nn.Sigmoid)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.SGD(m.parameters(), lr=0.05),
            pre=300,
            horizon=300,
        )

    add(
        "deep_sigmoid_vanishing",
        "vanishing_gradients",
        ("vanishing_gradients", "flat_plateau", "saddle_point", "degenerate"),
        b,
        r_adam(1e-2),
    )

    # 10. AdamW with weight_decay=2.0 (decoupled), 1-D CNN on mnist1d
    def b(seed):
        torch.manual_seed(seed)
        x, y = mnist1d()
        m = CNN1d()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=100,
            opt=torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=2.0),
            pre=400,
            horizon=300,
        )

    add("adamw_wd_strong_cnn1d", "weight_decay", ("weight_decay",), b, r_wd(0.01))

    # 11. SGD L2 weight decay 0.3, regression MLP, full batch
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed)
        m = mlp([16, 64, 1])
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9, weight_decay=0.3),
            pre=300,
            horizon=300,
        )

    add("sgd_l2_strong_regression", "weight_decay", ("weight_decay",), b, r_wd(0.01))

    # 12. MSE on softmax outputs (probabilities), SGD
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        m = mlp([64, 64, 10], act=nn.Tanh, last=nn.Softmax(dim=1))
        return dict(
            model=m,
            loss_fn=mse_onehot,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.SGD(m.parameters(), lr=0.05),
            pre=300,
            horizon=300,
        )

    add(
        "mse_on_softmax_digits",
        "flat_plateau",
        ("flat_plateau", "lr_too_small", "vanishing_gradients"),
        b,
        r_adam(3e-3),
    )

    # 13. saturated sigmoid outputs with MSE (last layer init x20)
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        m = mlp([64, 32, 10], act=nn.ReLU, last=nn.Sigmoid())
        with torch.no_grad():
            m[2].weight.mul_(25.0)
            m[2].bias.fill_(4.0)
        return dict(
            model=m,
            loss_fn=mse_onehot,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.1),
            pre=200,
            horizon=300,
        )

    add(
        "saturated_sigmoid_mse",
        "flat_plateau",
        ("flat_plateau", "vanishing_gradients", "lr_too_small", "saddle_point", "degenerate"),
        b,
        r_adam(3e-3),
    )

    # 14. SGD batch 4, lr 0.1 on noisy linear regression: noise floor
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed, noise=0.5)
        m = nn.Linear(16, 1)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=4,
            opt=torch.optim.SGD(m.parameters(), lr=0.1),
            pre=800,
            horizon=400,
        )

    add(
        "sgd_bs4_noise_floor_linreg",
        "gradient_noise",
        ("gradient_noise", "oscillation"),
        b,
        r_lr(0.1),
    )

    # 15. vanilla RNN with recurrent gain 1.8: exploding gradients
    def b(seed):
        torch.manual_seed(seed)
        x, y = adding_sequences(seed)
        m = RNNReg(gain=2.5)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=32,
            opt=torch.optim.SGD(m.parameters(), lr=0.05),
            pre=300,
            horizon=300,
        )

    add("rnn_exploding_gain", "oscillation", ("oscillation", "diverging"), b, r_clip(1.0))

    # 16. LayerNorm MLP, RMSprop lr too high
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed)
        m = mlp([16, 96, 96, 1], norm=nn.LayerNorm)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.RMSprop(m.parameters(), lr=0.1),
            pre=400,
            horizon=300,
        )

    add(
        "rmsprop_lr_high_layernorm",
        "oscillation",
        ("oscillation", "diverging", "gradient_noise"),
        b,
        r_lr(0.05),
    )

    # 17. BatchNorm CNN on digits, SGD lr too small
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits(flat=False)
        m = CNN2d(bn=True)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.SGD(m.parameters(), lr=3e-4, momentum=0.0),
            pre=300,
            horizon=300,
        )

    add("bn_cnn_sgd_lr_low", "lr_too_small", ("lr_too_small",), b, r_lr(100.0))

    # 18. tiny transformer, Adam lr too high
    def b(seed):
        torch.manual_seed(seed)
        x, y = token_majority(seed)
        m = TinyTransformer()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=32,
            opt=torch.optim.Adam(m.parameters(), lr=0.2),
            pre=300,
            horizon=250,
        )

    add(
        "transformer_adam_lr_high",
        "oscillation",
        ("oscillation", "diverging", "gradient_noise"),
        b,
        r_lr(0.03),
    )

    # 19. full-batch GD lr too small on mnist1d softmax regression
    def b(seed):
        torch.manual_seed(seed)
        x, y = mnist1d()
        x = x.flatten(1)
        m = nn.Linear(40, 10)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=1e-3),
            pre=300,
            horizon=300,
        )

    add("gd_lr_low_logreg_mnist1d", "lr_too_small", ("lr_too_small",), b, r_lr(100.0))

    # 20. bad warm-up: linear warm-up over 100k steps, AdamW stuck at a tiny lr (scheduler in the loop)
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        m = mlp([64, 64, 10], norm=nn.LayerNorm)
        opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 100_000))
        return dict(
            model=m, loss_fn=_ce, x=x, y=y, bs=64, opt=opt, sched=sched, pre=300, horizon=300
        )

    add("warmup_too_long_adamw", "lr_too_small", ("lr_too_small",), b, r_no_warmup(1e-3))

    # 21. dead ReLUs after a lr spike: trained MLP, one epoch at lr 3 (SGD), back to lr 0.01
    def b(seed):
        torch.manual_seed(seed)
        x, y = mnist1d()
        x = x.flatten(1)
        m = mlp([40, 64, 64, 10])
        opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=opt,
            pre=300,
            horizon=300,
            spike=(100, 110, 5.0),
        )

    add("dead_relu_after_lr_spike", "dead_units", ("dead_units",), b, r_reinit_relu_layers(1.0))

    # 22. Adam lr 1e-6 on 1-D CNN
    def b(seed):
        torch.manual_seed(seed)
        x, y = mnist1d()
        m = CNN1d()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=100,
            opt=torch.optim.Adam(m.parameters(), lr=1e-6),
            pre=300,
            horizon=300,
        )

    add("adam_lr_1e-6_cnn1d", "lr_too_small", ("lr_too_small",), b, r_lr(1000.0))

    # 23. Adagrad whose accumulator has grown (lr 0.003 at the start): steps shrink to nothing
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed, out=3)
        m = mlp([16, 64, 3], act=nn.GELU)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=32,
            opt=torch.optim.Adagrad(m.parameters(), lr=0.003),
            pre=600,
            horizon=300,
        )

    add("adagrad_decayed_steps", "lr_too_small", ("lr_too_small",), b, r_lr(10.0))

    # 24. unnormalized inputs (raw pixel values 0..16 and a constant-100 feature) with GD
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        x = torch.cat([x * 16.0, torch.full((len(x), 1), 100.0)], 1)
        m = nn.Linear(65, 10)
        lam_est = float(torch.linalg.eigvalsh(x.T @ x / len(x)).max())
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=1.0 / lam_est),
            pre=300,
            horizon=300,
        )

    add(
        "unnormalized_inputs_gd",
        "ill_conditioned",
        ("ill_conditioned", "lr_too_small"),
        b,
        r_adam(0.01),
    )

    # 25. GRU on sequences, SGD lr too small
    def b(seed):
        torch.manual_seed(seed)
        x, y = recent_sequences(seed)
        m = RNNReg(cell="gru", hidden=16)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=32,
            opt=torch.optim.SGD(m.parameters(), lr=1e-3),
            pre=300,
            horizon=300,
        )

    add("gru_sgd_lr_low", "lr_too_small", ("lr_too_small",), b, r_lr(30.0))

    # 26. AdamW lr 0.1 on a LayerNorm+GELU MLP regression
    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed, out=2)
        m = mlp([16, 64, 64, 2], act=nn.GELU, norm=nn.LayerNorm)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.AdamW(m.parameters(), lr=0.1),
            pre=400,
            horizon=300,
        )

    add(
        "adamw_lr_high_ln_regression",
        "oscillation",
        ("oscillation", "diverging", "gradient_noise"),
        b,
        r_lr(0.03),
    )

    # ---- healthy runs ------------------------------------------------------------------------
    def b(seed):
        torch.manual_seed(seed)
        x, y = digits()
        m = mlp([64, 64, 10])
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.Adam(m.parameters(), lr=1e-3),
            pre=60,
            horizon=100,
        )

    add("healthy_adam_mlp_early", "progressing", ("progressing",), b, None, healthy="improving")

    def b(seed):
        torch.manual_seed(seed)
        x, y = digits(flat=False)
        m = CNN2d()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.Adam(m.parameters(), lr=2e-3),
            pre=50,
            horizon=100,
        )

    add("healthy_adam_cnn_early", "progressing", ("progressing",), b, None, healthy="improving")

    def b(seed):
        torch.manual_seed(seed)
        x, y = token_majority(seed)
        m = TinyTransformer()
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.AdamW(m.parameters(), lr=3e-3),
            pre=60,
            horizon=100,
        )

    add("healthy_transformer_early", "progressing", ("progressing",), b, None, healthy="improving")

    def b(seed):  # least squares at its exact minimum, then GD at a sensible lr
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(400, 8, generator=g)
        y = x @ torch.randn(8, 1, generator=g) + 0.3 * torch.randn(400, 1, generator=g)
        m = nn.Linear(8, 1)
        xa = torch.cat([x, torch.ones(400, 1)], 1)
        sol = torch.linalg.lstsq(xa.double(), y.double()).solution.float()
        with torch.no_grad():
            m.weight.copy_(sol[:8].T)
            m.bias.copy_(sol[8])
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.1),
            pre=100,
            horizon=100,
        )

    add(
        "converged_lstsq_exact",
        "converged",
        ("converged", "progressing"),
        b,
        None,
        healthy="converged",
    )

    def b(seed):  # logistic regression with 25% label noise run to convergence (label-noise floor)
        torch.manual_seed(seed)
        x, y = digits()
        g = torch.Generator().manual_seed(seed)
        flip = torch.rand(len(y), generator=g) < 0.25
        y = torch.where(flip, torch.randint(10, y.shape, generator=g), y)
        m = nn.Linear(64, 10)
        lb = torch.optim.LBFGS(
            m.parameters(),
            lr=1,
            max_iter=500,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )
        reg = lambda: F.cross_entropy(m(x), y) + 1e-3 * m.weight.pow(2).sum()  # noqa: E731

        def closure():
            lb.zero_grad()
            l_ = reg()
            l_.backward()
            return l_

        lb.step(closure)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.2, weight_decay=2e-3),
            pre=150,
            horizon=100,
        )

    add(
        "converged_noisy_labels_logreg",
        "converged",
        ("converged", "progressing", "gradient_noise"),
        b,
        None,
        healthy="converged",
    )

    def b(
        seed,
    ):  # softmax regression, 40% label noise, no regularization, run to its minimum by L-BFGS
        torch.manual_seed(seed)
        x, y = mnist1d(1000)
        x = x.flatten(1)
        g = torch.Generator().manual_seed(seed)
        flip = torch.rand(len(y), generator=g) < 0.4
        y = torch.where(flip, torch.randint(10, y.shape, generator=g), y)
        m = nn.Linear(40, 10)
        lb = torch.optim.LBFGS(
            m.parameters(),
            lr=1,
            max_iter=1000,
            tolerance_grad=1e-10,
            tolerance_change=1e-14,
            line_search_fn="strong_wolfe",
        )

        def closure():
            lb.zero_grad()
            l_ = F.cross_entropy(m(x), y)
            l_.backward()
            return l_

        lb.step(closure)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.1),
            pre=150,
            horizon=100,
        )

    add(
        "converged_noisy_labels_nowd",
        "converged",
        ("converged", "progressing", "gradient_noise"),
        b,
        None,
        healthy="converged",
    )

    def b(seed):
        torch.manual_seed(seed)
        x, y = digits(flat=False)
        m = CNN2d(bn=True)
        return dict(
            model=m,
            loss_fn=_ce,
            x=x,
            y=y,
            bs=64,
            opt=torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
            pre=60,
            horizon=150,
        )

    add("healthy_bn_cnn_sgdm_early", "progressing", ("progressing",), b, None, healthy="improving")

    def b(seed):
        torch.manual_seed(seed)
        x, y = teacher_regression(seed)
        m = mlp([16, 64, 1], act=nn.Tanh)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9),
            pre=100,
            horizon=150,
        )

    add(
        "healthy_sgdm_tanh_regression",
        "progressing",
        ("progressing",),
        b,
        None,
        healthy="improving",
    )

    def b(seed):
        torch.manual_seed(seed)
        x, y = adding_sequences(seed)
        m = RNNReg(cell="gru", hidden=16)
        return dict(
            model=m,
            loss_fn=F.mse_loss,
            x=x,
            y=y,
            bs=None,
            opt=torch.optim.Adam(m.parameters(), lr=3e-3),
            pre=60,
            horizon=100,
        )

    add("healthy_gru_adam_early", "progressing", ("progressing",), b, None, healthy="improving")

    # Secondary set, decided after the primary run by an objective rule (the doctor's verdict not
    # consulted): stall families whose recorded history still fell >= 10% between the halves of its
    # last 200 steps on BOTH seeds (not visibly stalled) are rerun with 4x the steps before the diagnosis.
    by_name = {f.name: f for f in L}
    for name in LATE:
        f = by_name[name]

        def late(seed, _b=f.build):
            st = _b(seed)
            st["pre"] *= 4
            return st

        L.append(
            Family(
                name + "_late",
                f.label,
                f.valid,
                late,
                f.remedy,
                secondary=True,
                note="4x the pre-diagnosis steps",
            )
        )
    return L


LATE = (
    "ill_conditioned_lstsq_gd",
    "saturated_sigmoid_mse",
    "unnormalized_inputs_gd",
    "momentum_0995_linreg",
    "dead_relu_after_lr_spike",
)


# ---------------------------------------------------------------------------------------------
# training machinery (deterministic batches keyed by (seed, step) so every branch sees the same)
# ---------------------------------------------------------------------------------------------
def batch_at(st, step):
    x, y, bs = st["x"], st["y"], st["bs"]
    if bs is None:
        return x, y
    g = torch.Generator().manual_seed(st["seed"] * 1_000_003 + step)
    idx = torch.randint(len(x), (bs,), generator=g)
    return x[idx], y[idx]


def train(st, steps):
    losses = []
    model, loss_fn = st["model"], st["loss_fn"]
    model.train()
    for _ in range(steps):
        s = st["step"]
        spike = st.get("spike")
        if spike is not None and s == spike[0]:
            st["saved_lr"] = [g["lr"] for g in st["opt"].param_groups]
            for g in st["opt"].param_groups:
                g["lr"] = spike[2]
        if spike is not None and s == spike[1]:
            for g, lr in zip(st["opt"].param_groups, st["saved_lr"]):
                g["lr"] = lr
        xb, yb = batch_at(st, s)
        st["opt"].zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        loss.backward()
        if st.get("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), st["clip"])
        st["opt"].step()
        if st.get("sched") is not None:
            st["sched"].step()
        st["step"] = s + 1
        losses.append(float(loss.detach()))
    return losses


@torch.no_grad()
def full_loss(st):
    m = st["model"]
    was = m.training
    m.eval()
    try:
        v = float(st["loss_fn"](m(st["x"]), st["y"]))
    finally:
        m.train(was)
    return v


def clone(st):
    keep = {k: st[k] for k in ("x", "y", "loss_fn")}
    rest = {k: v for k, v in st.items() if k not in keep}
    c = copy.deepcopy(rest)
    c.update(keep)
    return c


def continue_run(st, horizon):
    """Train ``horizon`` steps; the final loss is the mean full-data loss at the last 5 of 10 evenly
    spaced checkpoints in the final 10% (robust to one lucky or unlucky step)."""
    torch.manual_seed(999)
    tail = max(5, horizon // 10)
    train(st, horizon - tail)
    vals = []
    per = max(1, tail // 5)
    done = horizon - tail
    while done < horizon:
        k = min(per, horizon - done)
        train(st, k)
        done += k
        vals.append(full_loss(st))
    vals = vals[-5:]
    return float(np.mean(vals)) if all(math.isfinite(v) for v in vals) else float("nan")


def rng_snapshot():
    return (torch.get_rng_state().clone(), np.random.get_state()[1].copy(), random.getstate())


def rng_same(a, b):
    return bool(torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2])


def state_same(sd_a, sd_b):
    return (
        all(
            torch.equal(sd_a[k], sd_b[k])
            or (
                sd_a[k].is_floating_point()
                and torch.allclose(sd_a[k], sd_b[k], atol=0, rtol=0, equal_nan=True)
            )
            for k in sd_a
        )
        and sd_a.keys() == sd_b.keys()
    )


def verdict(l_new, l_ctrl):
    if not math.isfinite(l_new):
        return "harmful"
    if not math.isfinite(l_ctrl):
        return "fixed"
    if l_new <= (1 - FIX) * l_ctrl:
        return "fixed"
    if l_new > (1 + FIX) * l_ctrl:
        return "harmful"
    return "neutral"


def run_one(fam: Family, seed: int) -> dict:
    t0 = time.perf_counter()
    st = fam.build(seed)
    st.setdefault("sched", None)
    st.update(seed=seed, step=0)
    rec: dict[str, Any] = dict(
        secondary=fam.secondary,
        family=fam.name,
        seed=seed,
        label=fam.label,
        valid=list(fam.valid),
        healthy=fam.healthy,
        bs=st["bs"],
        optimizer=type(st["opt"]).__name__,
        pre=st["pre"],
        horizon=st["horizon"],
    )
    hist = train(st, st["pre"])
    rec["loss_start_full"] = None
    rec["loss_at_diagnosis_full"] = full_loss(st)
    rec["history_first_last"] = [hist[0], hist[-1]]
    h = np.asarray(hist[-200:], dtype=float)
    half = len(h) // 2
    a_, b_ = float(np.mean(h[:half])), float(np.mean(h[half:]))
    rec["history_drop_last_half"] = (
        (a_ - b_) / abs(a_) if a_ else None
    )  # relative drop of the mean, 2nd vs 1st half
    rec["history_cv_last_half"] = float(np.std(h[half:]) / abs(np.mean(h[half:]))) if b_ else None
    H = st["horizon"]
    snap = clone(st)

    # 1) control and label verification, BEFORE the doctor
    ctrl = continue_run(clone(snap), H)
    rec["control_loss"] = ctrl
    if fam.remedy is not None:
        r = clone(snap)
        fam.remedy(r)
        rem = continue_run(r, H)
        rec["remedy"] = fam.remedy.__doc__
        rec["remedy_loss"] = rem
        rec["label_verified"] = verdict(rem, ctrl) == "fixed"
    elif (
        fam.healthy == "improving"
    ):  # still improving: the next horizon lowers the full loss by >= 5%
        rec["label_verified"] = ctrl <= (1 - FIX) * rec["loss_at_diagnosis_full"]
    else:  # converged: neither a 3x lr nor Adam(1e-3) lowers the full loss by >= 5% over the horizon
        outs = []
        for probe in (r_lr(3.0), r_adam(1e-3), r_lr(1 / 3)):
            r = clone(snap)
            probe(r)
            outs.append(continue_run(r, H))
        rec["converged_probe_losses"] = outs
        rec["label_verified"] = all(verdict(o, ctrl) != "fixed" for o in outs)
    rec["setup_seconds"] = time.perf_counter() - t0
    if SKIP_DOCTOR:
        return rec

    # 2) the doctor, once, on the live state
    model, opt = st["model"], st["opt"]
    sd_before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    rng_before = rng_snapshot()
    opt_sd_before = copy.deepcopy(opt.state_dict())
    data = (st["x"], st["y"])
    kw = {} if st["bs"] is None else {"batch": st["bs"]}
    t1 = time.perf_counter()
    try:
        d = ld.diagnose(
            model, st["loss_fn"], data, history=hist[-200:], optimizer=opt, verify=True, **kw
        )
        rec["crash"] = None
    except Exception as e:  # noqa: BLE001
        d = None
        rec["crash"] = f"{type(e).__name__}: {e}"
        rec["traceback"] = traceback.format_exc()[-2000:]
    rec["diagnose_seconds"] = time.perf_counter() - t1
    rec["state_unchanged"] = state_same(sd_before, model.state_dict())
    rec["rng_unchanged"] = rng_same(rng_before, rng_snapshot())
    rec["opt_state_unchanged"] = str(opt_sd_before) == str(opt.state_dict())  # coarse
    rec["training_mode_after"] = model.training
    if d is None:
        return rec
    rec["cause"] = d.cause
    rec["stalled"] = bool(d.stalled)
    rec["cause_right"] = d.cause in fam.valid
    rec["summary"] = d.summary
    rec["evidence"] = list(d.evidence)
    rec["prescriptions"] = [
        dict(
            text=p.text,
            action=_jsonable(p.action),
            applicable=p.applicable,
            trial=(None if p.trial is None else str(p.trial)),
        )
        for p in d.prescriptions
    ]
    rec["doctor_str"] = str(d)
    first = next((p for p in d.prescriptions if p.applicable), None)
    if fam.healthy is not None:
        if fam.healthy == "improving":
            rec["false_alarm"] = bool(d.stalled) or d.cause != "progressing"
        else:
            rec["false_alarm"] = d.cause not in ("converged", "progressing")
    if first is None:
        rec["first_rx"] = None
        rec["rx_outcome"] = "none_applicable"
        return rec
    rec["first_rx"] = dict(text=first.text, action=_jsonable(first.action))
    if first.no_change:
        rec["rx_loss"] = ctrl
        rec["rx_outcome"] = "no_change"
    else:
        c = clone(snap)
        # prescription payloads may reference the live model's tensors; apply to the copy
        try:
            c["opt"] = first.apply(c["model"], c["opt"], scheduler=c["sched"])
            rx = continue_run(c, H)
            rec["rx_loss"] = rx
            rec["rx_outcome"] = verdict(rx, ctrl)
        except Exception as e:  # noqa: BLE001
            rec["rx_loss"] = None
            rec["rx_outcome"] = f"apply_error: {type(e).__name__}: {e}"
    rec["total_seconds"] = time.perf_counter() - t0
    return rec


def _jsonable(a):
    try:
        json.dumps(a)
        return a
    except TypeError:
        return json.loads(json.dumps(a, default=lambda o: repr(o)[:80]))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[300, 301])
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--out", default="benchmarks/results/doctor_heldout3.json")
    ap.add_argument("--skip-doctor", action="store_true", help="only verify the labels")
    a = ap.parse_args(argv)
    global SKIP_DOCTOR
    SKIP_DOCTOR = a.skip_doctor
    fams = [f for f in fam_list() if not a.only or f.name in a.only]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(out.read_text()) if out.exists() else []
    done = {(r["family"], r["seed"]) for r in results}
    for seed in a.seeds:
        for f in fams:
            if (f.name, seed) in done:
                continue
            t = time.perf_counter()
            try:
                r = run_one(f, seed)
            except Exception as e:  # noqa: BLE001
                r = dict(
                    family=f.name,
                    seed=seed,
                    label=f.label,
                    setup_crash=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc()[-2000:],
                )
            results.append(r)
            out.write_text(json.dumps(results, indent=1, default=str))
            print(
                f"{time.strftime('%H:%M:%S')} {f.name:32s} {seed} lbl={f.label:18s} ver={r.get('label_verified')} "
                f"ctrl={r.get('control_loss', float('nan')):.4g} rem={r.get('remedy_loss', float('nan')):.4g} "
                f"cause={r.get('cause')} stalled={r.get('stalled')} rx={(r.get('first_rx') or {}).get('action')} "
                f"-> {r.get('rx_outcome')} rxL={r.get('rx_loss')} "
                f"t_diag={r.get('diagnose_seconds', 0):.1f}s tot={time.perf_counter() - t:.1f}s "
                f"state={r.get('state_unchanged')} rng={r.get('rng_unchanged')} crash={r.get('crash') or r.get('setup_crash')}",
                flush=True,
            )


# ---------------------------------------------------------------------------------------------
# summary (python benchmarks/doctor_heldout3.py --summarize RESULTS.json [...])
# ---------------------------------------------------------------------------------------------
def summarize(results: list[dict]) -> tuple[dict, str]:
    def med(v):
        return float(np.median(v)) if v else None

    lines = []
    rows = sorted(
        results,
        key=lambda r: (
            r.get("secondary", False),
            r.get("healthy") is not None,
            r["family"],
            r["seed"],
        ),
    )
    lines.append(
        f"{'family':34s} seed {'label':19s} ver  {'doctor cause':19s} stl {'first applicable prescription':44s} "
        f"{'outcome':9s} ctrl_loss  rx_loss   remedy_loss hist_drop diag_s"
    )
    for r in rows:
        rx = r.get("first_rx") or {}
        act = json.dumps(rx.get("action")) if rx else "-"
        ok = "" if r.get("cause") is None else ("RIGHT" if r.get("cause_right") else "wrong")
        lines.append(
            f"{r['family'][:34]:34s} {r['seed']} {r['label'][:19]:19s} {str(r.get('label_verified'))[:1]:4s} "
            f"{str(r.get('cause'))[:19]:19s} {str(r.get('stalled'))[:1]:3s} {act[:44]:44s} {str(r.get('rx_outcome'))[:9]:9s} "
            f"{r.get('control_loss', float('nan')):<10.4g} {r.get('rx_loss') or float('nan'):<9.4g} "
            f"{r.get('remedy_loss', float('nan')):<11.4g} {r.get('history_drop_last_half') or 0:+8.3f} "
            f"{r.get('diagnose_seconds', float('nan')):6.1f} {ok}"
        )

    def block(sel, title):
        stalls = [r for r in sel if r.get("healthy") is None]
        ver = [r for r in stalls if r.get("label_verified")]
        dropped = [
            (r["family"], r["seed"], r.get("control_loss"), r.get("remedy_loss"))
            for r in stalls
            if not r.get("label_verified")
        ]
        vis = [r for r in ver if (r.get("history_drop_last_half") or 0) < 0.10]
        healthy = [r for r in sel if r.get("healthy") is not None]
        hver = [r for r in healthy if r.get("label_verified")]
        s = dict(
            stall_runs=len(stalls),
            verified=len(ver),
            label_drops=dropped,
            cause_right=sum(bool(r.get("cause_right")) for r in ver),
            cause_right_visibly_stalled=f"{sum(bool(r.get('cause_right')) for r in vis)}/{len(vis)}",
            said_progressing_on_verified_stall=sum(r.get("cause") == "progressing" for r in ver),
            fixed=sum(r.get("rx_outcome") == "fixed" for r in ver),
            no_change_first=sum(
                r.get("rx_outcome") in ("no_change", "none_applicable") for r in ver
            ),
            neutral=sum(r.get("rx_outcome") == "neutral" for r in ver),
            harmful=sum(
                r.get("rx_outcome") == "harmful"
                or str(r.get("rx_outcome", "")).startswith("apply_error")
                for r in ver
            ),
            fixed_when_cause_right=f"{sum(r.get('rx_outcome') == 'fixed' for r in ver if r.get('cause_right'))}/"
            f"{sum(bool(r.get('cause_right')) for r in ver)}",
            fixed_when_cause_wrong=f"{sum(r.get('rx_outcome') == 'fixed' for r in ver if not r.get('cause_right'))}/"
            f"{sum(not r.get('cause_right') for r in ver)}",
            healthy_runs=len(healthy),
            healthy_verified=len(hver),
            false_alarms=sum(bool(r.get("false_alarm")) for r in hver),
            false_alarm_runs=[
                (r["family"], r["seed"], r.get("cause")) for r in hver if r.get("false_alarm")
            ],
            state_changed=sum(not r.get("state_unchanged", True) for r in sel),
            rng_moved=sum(not r.get("rng_unchanged", True) for r in sel),
            crashes=sum(bool(r.get("crash") or r.get("setup_crash")) for r in sel),
            diagnose_seconds_median=med(
                [r["diagnose_seconds"] for r in sel if "diagnose_seconds" in r]
            ),
            diagnose_seconds_max=max(
                [r["diagnose_seconds"] for r in sel if "diagnose_seconds" in r], default=None
            ),
        )
        out = [
            f"\n== {title} ==",
            f"stall runs {s['stall_runs']}, label verified {s['verified']} (dropped: {s['label_drops']})",
            f"causes right {s['cause_right']}/{s['verified']}  (visibly stalled subset, history drop < 10%: "
            f"{s['cause_right_visibly_stalled']}); 'progressing' on a verified stall: {s['said_progressing_on_verified_stall']}",
            f"first applicable prescription fixed {s['fixed']}/{s['verified']}, neutral {s['neutral']}, "
            f"no change/stop first {s['no_change_first']}, harmful {s['harmful']}; fixed when cause right "
            f"{s['fixed_when_cause_right']}, when wrong {s['fixed_when_cause_wrong']}",
            f"false alarms {s['false_alarms']}/{s['healthy_verified']} verified healthy runs: {s['false_alarm_runs']}",
            f"state_dict changed {s['state_changed']}, RNG moved {s['rng_moved']}, crashes {s['crashes']}, "
            f"diagnose seconds median {s['diagnose_seconds_median']:.2f} max {s['diagnose_seconds_max']:.2f}",
        ]
        return s, out

    prim, o1 = block(
        [r for r in results if not r.get("secondary")], "primary set (pre-registered families)"
    )
    sec, o2 = block(
        [r for r in results if r.get("secondary")], "secondary set (_late: 4x pre-steps)"
    )
    return dict(primary=prim, secondary=sec), "\n".join(lines + o1 + o2)


if __name__ == "__main__":
    if "--summarize" in sys.argv:  # --summarize IN.json [IN2.json ...] --to OUT.json
        args = sys.argv[sys.argv.index("--summarize") + 1 :]
        to = args[args.index("--to") + 1]
        ins = args[: args.index("--to")]
        res = [r for f in ins for r in json.loads(Path(f).read_text())]
        summ, text = summarize(res)
        Path(to).write_text(json.dumps(dict(summary=summ, runs=res), indent=1, default=str))
        Path(to).with_suffix(".txt").write_text(text + "\n")
        print(text)
    else:
        main()
