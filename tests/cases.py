"""Models, losses and data every curvature test runs over, and ground truth computed without
the engine.

Each :class:`Case` builds a fresh, seeded ``(model, loss_fn, data)``; all models are tiny (tens
to a few hundred parameters) so dense Hessians are cheap. The reference Hessian is
``torch.autograd.functional.hessian`` of the loss as a function of the flat trainable
parameters (``torch.func.functional_call`` on a copy of the model), evaluated on the
*concatenated* data in eval mode: the mean over all samples by definition, whatever the
batching. It shares no code with ``lossdoctor``.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import DataLoader, TensorDataset

# ---------------------------------------------------------------------------------------------
# models


class TinyCNN1d(nn.Sequential):
    def __init__(self, length: int = 8, classes: int = 3):
        super().__init__(
            nn.Unflatten(1, (1, length)),
            nn.Conv1d(1, 3, 3, padding=1),
            nn.Tanh(),
            nn.Conv1d(3, 2, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * ((length - 3) // 2 + 1), classes),
        )


class TinyCNN2d(nn.Sequential):
    def __init__(self, classes: int = 3):
        super().__init__(
            nn.Conv2d(1, 2, 3),
            nn.Tanh(),
            nn.Conv2d(2, 2, 2),
            nn.Flatten(),
            nn.Linear(2 * 3 * 3, classes),
        )


class BatchNormCNN(nn.Sequential):
    """Conv -> BatchNorm -> tanh -> linear (plus optional dropout, to test modes)."""

    def __init__(self, classes: int = 3, dropout: float = 0.0):
        layers: list[nn.Module] = [nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Tanh(), nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(3 * 4 * 4, classes))
        super().__init__(*layers)


class RecurrentNet(nn.Module):
    """A GRU or LSTM over short sequences; the last hidden state feeds a linear head."""

    def __init__(self, cell: str = "gru", features: int = 3, hidden: int = 5, outputs: int = 2):
        super().__init__()
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(features, hidden, batch_first=True)
        self.head = nn.Linear(hidden, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(torch.tanh(out[:, -1]))


class TinyTransformer(nn.Module):
    """Token embedding, one self-attention block, output projection tied to the embedding."""

    def __init__(self, vocab: int = 7, dim: int = 6, heads: int = 2, length: int = 5):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.position = nn.Parameter(0.1 * torch.randn(length, dim))
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.embed.weight  # tied input/output embedding

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens) + self.position[: tokens.shape[1]]
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.out(self.norm(h + a))


def token_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over every token of ``(batch, length, vocab)`` logits."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def mlp(inputs: int, hidden: int, outputs: int, act: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, hidden), act(), nn.Linear(hidden, outputs))


# ---------------------------------------------------------------------------------------------
# data

BATCH_SIZES = (5, 3, 8)  # deliberately unequal


def split(x: torch.Tensor, y: torch.Tensor, sizes: tuple[int, ...] = BATCH_SIZES) -> list:
    out, start = [], 0
    for s in sizes:
        out.append((x[start : start + s], y[start : start + s]))
        start += s
    return out


def package(x: torch.Tensor, y: torch.Tensor, kind: str) -> Any:
    """The same samples as one pair, a list of unequal batches, or a DataLoader (6, 6, 4)."""
    if kind == "pair":
        return (x, y)
    if kind == "batches":
        return split(x, y)
    if kind == "loader":
        return DataLoader(TensorDataset(x, y), batch_size=6, shuffle=False)
    raise ValueError(kind)


def concatenated(data: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """All samples of ``data`` as one pair (independent of lossdoctor.data)."""
    if isinstance(data, tuple) and isinstance(data[1], torch.Tensor):
        return data
    xs, ys = zip(*list(data), strict=True)
    return torch.cat(xs), torch.cat(ys)


# ---------------------------------------------------------------------------------------------
# cases


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[str], tuple[nn.Module, Any, Any]]  # build(data_kind) -> (model, loss_fn, data)
    data_kind: str = "batches"
    mode: str = "eval"
    float64: bool = False

    def make(self) -> tuple[nn.Module, Any, Any]:
        return self.build(self.data_kind)

    @property
    def id(self) -> str:
        return f"{self.name}-{self.data_kind}-{self.mode}"


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _regression(kind: str, act=nn.Tanh, dtype=torch.float32, loss=F.mse_loss):
    torch.manual_seed(1)
    model = mlp(4, 6, 2, act).to(dtype)
    g = _gen(2)
    x = torch.randn(16, 4, generator=g, dtype=dtype)
    y = torch.randn(16, 2, generator=g, dtype=dtype)
    return model, loss, package(x, y, kind)


def _classification(
    kind: str, model: nn.Module, x: torch.Tensor, classes: int, loss=F.cross_entropy
):
    y = torch.randint(0, classes, (x.shape[0],), generator=_gen(3))
    return model, loss, package(x, y, kind)


def mlp_tanh_mse(kind: str):
    return _regression(kind)


def mlp_tanh_mse_float64(kind: str):
    return _regression(kind, dtype=torch.float64)


def mlp_tanh_sum_loss(kind: str):
    return _regression(kind, loss=nn.MSELoss(reduction="sum"))


def mlp_relu_ce_functional(kind: str):
    torch.manual_seed(4)
    return _classification(kind, mlp(5, 8, 3, nn.ReLU), torch.randn(16, 5, generator=_gen(5)), 3)


def mlp_relu_ce_module(kind: str):
    torch.manual_seed(4)
    return _classification(
        kind,
        mlp(5, 8, 3, nn.ReLU),
        torch.randn(16, 5, generator=_gen(5)),
        3,
        loss=nn.CrossEntropyLoss(),
    )


def mlp_frozen(kind: str):
    torch.manual_seed(6)
    model = mlp(4, 6, 3, nn.Tanh)
    model[0].bias.requires_grad_(False)
    model[2].weight.requires_grad_(False)
    return _classification(kind, model, torch.randn(16, 4, generator=_gen(7)), 3)


def cnn1d(kind: str):
    torch.manual_seed(8)
    return _classification(kind, TinyCNN1d(), torch.randn(16, 8, generator=_gen(9)), 3)


def cnn2d(kind: str):
    torch.manual_seed(10)
    return _classification(kind, TinyCNN2d(), torch.randn(16, 1, 6, 6, generator=_gen(11)), 3)


def batchnorm_cnn(kind: str, dropout: float = 0.0):
    torch.manual_seed(12)
    model = BatchNormCNN(dropout=dropout)
    x = torch.randn(16, 1, 6, 6, generator=_gen(13))
    with torch.no_grad():  # running statistics that differ from any batch's statistics
        bn = model[1]
        bn.running_mean.copy_(torch.tensor([0.3, -0.2, 0.1]))
        bn.running_var.copy_(torch.tensor([0.5, 2.0, 1.3]))
        bn.weight.copy_(torch.tensor([1.2, 0.8, -0.7]))
        bn.bias.copy_(torch.tensor([0.1, -0.3, 0.2]))
        bn.num_batches_tracked.fill_(7)
    return _classification(kind, model, x, 3)


def gru_regression(kind: str):
    torch.manual_seed(14)
    g = _gen(15)
    x, y = torch.randn(16, 4, 3, generator=g), torch.randn(16, 2, generator=g)
    return RecurrentNet("gru"), F.mse_loss, package(x, y, kind)


def lstm_classification(kind: str):
    torch.manual_seed(16)
    return _classification(
        kind, RecurrentNet("lstm", outputs=3), torch.randn(16, 3, 3, generator=_gen(17)), 3
    )


def transformer_tokens(kind: str):
    torch.manual_seed(18)
    g = _gen(19)
    x = torch.randint(0, 7, (16, 5), generator=g)
    y = torch.randint(0, 7, (16, 5), generator=g)
    return TinyTransformer(), token_cross_entropy, package(x, y, kind)


CASES: list[Case] = [
    Case("mlp-tanh-mse", mlp_tanh_mse, "pair"),
    Case("mlp-tanh-mse", mlp_tanh_mse, "batches"),
    Case("mlp-tanh-mse", mlp_tanh_mse, "loader"),
    Case("mlp-tanh-mse-f64", mlp_tanh_mse_float64, "batches", float64=True),
    Case("mlp-tanh-sum-loss", mlp_tanh_sum_loss, "batches"),
    Case("mlp-relu-ce-functional", mlp_relu_ce_functional, "batches"),
    Case("mlp-relu-ce-module", mlp_relu_ce_module, "loader"),
    Case("mlp-frozen", mlp_frozen, "batches"),
    Case("cnn1d", cnn1d, "batches"),
    Case("cnn2d", cnn2d, "loader"),
    Case("batchnorm-cnn", batchnorm_cnn, "batches"),
    Case("batchnorm-cnn", batchnorm_cnn, "batches", mode="train"),
    Case("gru", gru_regression, "batches"),
    Case("lstm", lstm_classification, "pair"),
    Case("transformer-tied", transformer_tokens, "batches"),
]
CASE_IDS = [c.id for c in CASES]
BY_ID = {c.id: c for c in CASES}


def full_batch_losses(
    model: nn.Module, loss_fn: Any, x: torch.Tensor, y: torch.Tensor, opt: Any, steps: int
) -> list[float]:
    """Train ``steps`` full-batch steps in place; the loss before each step."""
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


# ---------------------------------------------------------------------------------------------
# ground truth, independent of lossdoctor


def trainable(model: nn.Module) -> tuple[list[str], list[torch.Tensor]]:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [p for _, p in named]


def flat_parameters(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in trainable(model)[1]])


def loss_of_flat(model: nn.Module, loss_fn: Any, data: Any, mode: str = "eval") -> Callable:
    """``f(theta)``: the mean loss over all samples as a function of the flat trainable
    parameters, on a private copy of ``model``.

    Eval mode evaluates the concatenated data at once. Train mode (BatchNorm uses each batch's
    statistics) is the size-weighted mean of the per-batch losses, each batch as given.
    A loss with ``reduction='sum'`` is divided by the number of samples.
    """
    model = copy.deepcopy(model)
    model.train(mode == "train")
    names, params = trainable(model)
    shapes = [p.shape for p in params]
    numels = [p.numel() for p in params]
    per_sample_sum = getattr(loss_fn, "reduction", "mean") == "sum"
    if mode == "eval":
        batches = [concatenated(data)]
    else:
        batches = [data] if isinstance(data, tuple) else list(data)
    total = sum(int(y.shape[0]) for _, y in batches)

    @sdpa_kernel(SDPBackend.MATH)  # fused attention kernels have no double backward
    def f(theta: torch.Tensor) -> torch.Tensor:
        parts = torch.split(theta, numels)
        values = {n: t.reshape(s) for n, t, s in zip(names, parts, shapes, strict=True)}
        loss = theta.new_zeros(())
        for x, y in batches:
            out = torch.func.functional_call(model, values, (x,))
            weight = 1.0 if per_sample_sum else float(y.shape[0])
            loss = loss + weight * loss_fn(out, y)
        return loss / total

    return f


def reference_hessian(
    model: nn.Module, loss_fn: Any, data: Any, mode: str = "eval"
) -> torch.Tensor:
    theta = flat_parameters(model)
    f = loss_of_flat(model, loss_fn, data, mode)
    # Not torch.func.hessian: its forward-over-reverse gets tied weights wrong (the transformer
    # case, off by 35% against finite differences in torch 2.13).
    try:  # vmap over reverse-over-reverse: fast, but some modules (LSTM, BatchNorm) lack rules
        H = torch.autograd.functional.hessian(f, theta, vectorize=True)
    except RuntimeError:
        H = torch.autograd.functional.hessian(f, theta)
    return 0.5 * (H + H.T)


@functools.cache
def case_reference(case_id: str) -> torch.Tensor:
    """The reference Hessian (float64) of a case, computed once per test session."""
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    return reference_hessian(model, loss_fn, data, case.mode).double()


def reference_gradient(
    model: nn.Module, loss_fn: Any, data: Any, mode: str = "eval", theta: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(mean loss, flat gradient)`` at ``theta`` (default: the model's parameters)."""
    f = loss_of_flat(model, loss_fn, data, mode)
    theta = (flat_parameters(model) if theta is None else theta).detach().requires_grad_(True)
    loss = f(theta)
    (grad,) = torch.autograd.grad(loss, theta)
    return loss.detach(), grad


def as_float64(model: nn.Module, data: Any) -> tuple[nn.Module, Any]:
    """A float64 copy of the model and of the data's floating tensors (for finite differences)."""
    model = copy.deepcopy(model).double()

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t.double() if t.is_floating_point() else t

    x, y = concatenated(data)
    return model, (cast(x), cast(y))


def finite_difference_hvp(
    model: nn.Module,
    loss_fn: Any,
    data: Any,
    v: torch.Tensor,
    eps: float = 1e-5,
    mode: str = "eval",
) -> torch.Tensor:
    """Central difference of float64 gradients: (g(theta + eps v) - g(theta - eps v)) / 2 eps."""
    model64, data64 = as_float64(model, data)
    if mode == "train":  # keep the batching: BatchNorm statistics are per batch
        data64 = [as_float64(model, [b])[1] for b in ([data] if isinstance(data, tuple) else data)]
    theta = flat_parameters(model64)
    v = v.to(torch.float64)
    _, g_plus = reference_gradient(model64, loss_fn, data64, mode, theta + eps * v)
    _, g_minus = reference_gradient(model64, loss_fn, data64, mode, theta - eps * v)
    return (g_plus - g_minus) / (2 * eps)


# ---------------------------------------------------------------------------------------------
# snapshots of everything an analysis must leave alone


@dataclass
class ModelSnapshot:
    state: dict[str, torch.Tensor]
    modes: list[bool]
    flags: list[bool]
    grads: list[torch.Tensor | None]
    rng: torch.Tensor

    @classmethod
    def take(cls, model: nn.Module) -> ModelSnapshot:
        return cls(
            state={k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
            modes=[m.training for m in model.modules()],
            flags=[p.requires_grad for p in model.parameters()],
            grads=[None if p.grad is None else p.grad.detach().clone() for p in model.parameters()],
            rng=torch.get_rng_state().clone(),
        )

    def assert_same(self, model: nn.Module, what: str = "") -> None:
        now = ModelSnapshot.take(model)
        assert list(now.state) == list(self.state), f"{what}: state_dict keys changed"
        for k in self.state:
            a, b = self.state[k], now.state[k]
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (
                f"{what}: {k} changed"
            )
        assert now.modes == self.modes, f"{what}: train/eval modes changed"
        assert now.flags == self.flags, f"{what}: requires_grad flags changed"
        assert len(now.grads) == len(self.grads)
        for i, (a, b) in enumerate(zip(self.grads, now.grads, strict=True)):
            assert (a is None) == (b is None), (
                f"{what}: .grad of parameter {i} appeared/disappeared"
            )
            if a is not None:
                assert torch.equal(a, b), f"{what}: .grad of parameter {i} changed"
        assert torch.equal(now.rng, self.rng), f"{what}: the global RNG state changed"


def double_backward_hessian(
    loss_of: Callable[[], torch.Tensor], params: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense Hessian of ``loss_of()`` w.r.t. ``params`` row by row, each row the gradient of
    one entry of the gradient (independent of lossdoctor's blocked products), and that gradient.
    (torch.func's Hessian of GPT-2 through functional_call comes out asymmetric here.)"""
    with sdpa_kernel(SDPBackend.MATH):  # the fused CPU attention kernels have no double backward
        grads = torch.autograd.grad(loss_of(), params, create_graph=True)
        g = torch.cat([t.reshape(-1) for t in grads])
        rows = [
            torch.cat(
                [
                    r.reshape(-1)
                    for r in torch.autograd.grad(
                        g[i], params, retain_graph=True, allow_unused=True, materialize_grads=True
                    )
                ]
            )
            for i in range(len(g))
        ]
    return torch.stack(rows).detach(), g.detach()
