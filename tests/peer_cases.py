"""The peers' own test problems, rebuilt at tiny sizes in float64 (our code, their shapes).

curvlinops' ``test/cases.py``: two-layer ReLU MLPs on ``rand`` inputs with cross-entropy, BCE
with soft labels and MSE, each with mean and sum reduction, in unequal batches (3 + 4 samples;
MSE: 2 + 6); the sequence variants (an extra weight-sharing dimension of 5 in inputs and
outputs); a LeNet-like CNN with max pooling; dropout and BatchNorm models; a loader with
``drop_last``; a parameter subset. hessian-eigenthings' tests: a linear least-squares model
(its Hessian is ``2 X^T X / n`` in closed form) and a small MLP. PyHessian's examples: a
ResNet with BatchNorm on image data (a ResNet-8 at 8x8 here).

Every case returns ``(model, loss_fn, data)`` in float64, built from a fixed seed; the dense
reference Hessian comes from :func:`cases.reference_hessian` (torch.autograd.functional on the
concatenated data; no lossdoctor code).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

DT = torch.float64


def _seeded(seed: int) -> None:
    torch.manual_seed(seed)


def _two_layer(inputs: int, outputs: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inputs, 5), nn.ReLU(), nn.Linear(5, outputs)).to(DT)


def _batches(*parts: tuple[torch.Tensor, torch.Tensor]) -> list:
    return list(parts)


def ce(reduction: str = "mean"):
    _seeded(0)
    model = _two_layer(10, 3)
    data = _batches(
        (torch.rand(3, 10, dtype=DT), torch.randint(0, 3, (3,))),
        (torch.rand(4, 10, dtype=DT), torch.randint(0, 3, (4,))),
    )
    return model, nn.CrossEntropyLoss(reduction=reduction), data


def bce(reduction: str = "mean", outputs: int = 2):
    _seeded(0)
    model = _two_layer(10, outputs)
    data = _batches(
        (torch.rand(3, 10, dtype=DT), torch.rand(3, outputs, dtype=DT)),
        (torch.rand(4, 10, dtype=DT), torch.rand(4, outputs, dtype=DT)),
    )
    return model, nn.BCEWithLogitsLoss(reduction=reduction), data


def mse(reduction: str = "mean", dtype: torch.dtype = DT):
    """curvlinops' MSE case: an 8-5-3 ReLU MLP, batches of 2 and 6. Its Hessian (63 parameters)
    has rank ~25: few samples, many parameters."""
    _seeded(0)
    model = _two_layer(8, 3).to(dtype)
    data = _batches(
        (torch.rand(2, 8, dtype=dtype), torch.rand(2, 3, dtype=dtype)),
        (torch.rand(6, 8, dtype=dtype), torch.rand(6, 3, dtype=dtype)),
    )
    return model, nn.MSELoss(reduction=reduction), data


class _TokenCE(nn.Module):
    """Cross-entropy over every position of ``(batch, length, classes)`` logits."""

    def __init__(self, reduction: str = "mean") -> None:
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(
            logits.flatten(0, 1), targets.flatten(), reduction=self.reduction
        )


def sequence_ce(reduction: str = "mean"):
    """The weight-sharing case: the same MLP applied at 5 positions of every sample."""
    _seeded(0)
    model = _two_layer(10, 3)
    data = _batches(
        (torch.rand(3, 5, 10, dtype=DT), torch.randint(0, 3, (3, 5))),
        (torch.rand(4, 5, 10, dtype=DT), torch.randint(0, 3, (4, 5))),
    )
    return model, _TokenCE(reduction), data


def sequence_mse(reduction: str = "mean"):
    _seeded(0)
    model = _two_layer(8, 3)
    data = _batches(
        (torch.rand(2, 5, 8, dtype=DT), torch.rand(2, 5, 3, dtype=DT)),
        (torch.rand(6, 5, 8, dtype=DT), torch.rand(6, 5, 3, dtype=DT)),
    )
    return model, nn.MSELoss(reduction=reduction), data


def lenet():
    """curvlinops' CNN case, at 12x12 inputs (conv 5, pool, conv 3, pool, linear)."""
    _seeded(0)
    model = nn.Sequential(
        nn.Conv2d(1, 3, 5),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(3, 4, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4, 10),
    ).to(DT)
    data = _batches(
        (torch.rand(5, 1, 12, 12, dtype=DT), torch.randint(0, 10, (5,))),
        (torch.rand(5, 1, 12, 12, dtype=DT), torch.randint(0, 10, (5,))),
    )
    return model, nn.CrossEntropyLoss(), data


def dropout():
    """Dropout in the model: the Hessian is that of eval mode (dropout off)."""
    _seeded(0)
    model = nn.Sequential(nn.Linear(10, 5), nn.Dropout(), nn.ReLU(), nn.Linear(5, 2)).to(DT)
    x, y = torch.rand(12, 10, dtype=DT), torch.randint(0, 2, (12,))
    return model, nn.CrossEntropyLoss(), DataLoader(TensorDataset(x, y), batch_size=3)


def batchnorm():
    _seeded(0)
    bn = nn.BatchNorm1d(5)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(5))
        bn.bias.copy_(torch.rand(5))
        bn.running_mean.copy_(0.1 * torch.randn(5))
        bn.running_var.copy_(0.5 + torch.rand(5))
    model = nn.Sequential(nn.Linear(10, 5), bn, nn.ReLU(), nn.Linear(5, 2)).to(DT)
    x, y = torch.rand(12, 10, dtype=DT), torch.randint(0, 2, (12,))
    return model, nn.CrossEntropyLoss(), DataLoader(TensorDataset(x, y), batch_size=3)


def drop_last():
    """A loader that drops its last, incomplete batch: the Hessian of the samples it yields."""
    _seeded(0)
    model = _two_layer(10, 2)
    x, y = torch.rand(12, 10, dtype=DT), torch.randint(0, 2, (12,))
    return (
        model,
        nn.CrossEntropyLoss(),
        DataLoader(TensorDataset(x, y), batch_size=5, drop_last=True),
    )


def subset():
    """A parameter subset: the first layer frozen, the Hessian of the rest."""
    model, loss_fn, data = ce()
    model[0].requires_grad_(False)
    return model, loss_fn, data


def last_layer():
    """Only the last layer trainable, with MSE: the Hessian is ``I_outputs (x) (A^T A / n)``
    (up to the 2/outputs factor), so every eigenvalue is repeated ``outputs`` times."""
    _seeded(0)
    model = _two_layer(6, 3)
    model[0].requires_grad_(False)
    x, y = torch.rand(20, 6, dtype=DT), torch.rand(20, 3, dtype=DT)
    return model, nn.MSELoss(), (x, y)


def least_squares():
    """hessian-eigenthings' closed-form test: a linear model with MSE, H = 2 X^T X / (n d)."""
    _seeded(1)
    model = nn.Linear(12, 1, bias=False).to(DT)
    x, y = torch.randn(30, 12, dtype=DT), torch.randn(30, 1, dtype=DT)
    return model, nn.MSELoss(), (x, y)


def eigenthings_mlp():
    _seeded(2)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 2)).to(DT)
    x, y = torch.randn(24, 6, dtype=DT), torch.randn(24, 2, dtype=DT)
    return model, nn.MSELoss(), [(x[:8], y[:8]), (x[8:], y[8:])]


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.skip(x))


class ResNet8(nn.Module):
    """PyHessian's example network family (ResNet with BatchNorm), 3 stages of one block each,
    2-4 channels, on 8x8 inputs: about 600 parameters."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(1, 2, 3, 1, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU()
        )
        self.stages = nn.Sequential(_Block(2, 2, 1), _Block(2, 3, 2), _Block(3, 4, 2))
        self.head = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)).mean((2, 3)))


def resnet8():
    _seeded(3)
    model = ResNet8().to(DT)
    with torch.no_grad():  # statistics as after some training, not the identity
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(0.1 * torch.randn(m.num_features))
                m.running_var.copy_(0.5 + torch.rand(m.num_features))
    x, y = torch.randn(16, 1, 8, 8, dtype=DT), torch.randint(0, 3, (16,))
    return model, nn.CrossEntropyLoss(), [(x[:8], y[:8]), (x[8:], y[8:])]


@dataclass(frozen=True)
class PeerCase:
    name: str
    build: Callable[[], tuple[nn.Module, Any, Any]]
    peer: str


PEER_CASES = [
    PeerCase("ce-mean", ce, "curvlinops"),
    PeerCase("ce-sum", lambda: ce("sum"), "curvlinops"),
    PeerCase("bce1-mean", lambda: bce("mean", 1), "curvlinops"),
    PeerCase("bce-mean", bce, "curvlinops"),
    PeerCase("bce-sum", lambda: bce("sum"), "curvlinops"),
    PeerCase("mse-mean", mse, "curvlinops"),
    PeerCase("mse-sum", lambda: mse("sum"), "curvlinops"),
    PeerCase("seq-ce-mean", sequence_ce, "curvlinops"),
    PeerCase("seq-ce-sum", lambda: sequence_ce("sum"), "curvlinops"),
    PeerCase("seq-mse-mean", sequence_mse, "curvlinops"),
    PeerCase("seq-mse-sum", lambda: sequence_mse("sum"), "curvlinops"),
    PeerCase("lenet", lenet, "curvlinops"),
    PeerCase("dropout", dropout, "curvlinops"),
    PeerCase("batchnorm", batchnorm, "curvlinops"),
    PeerCase("drop-last", drop_last, "curvlinops"),
    PeerCase("subset", subset, "curvlinops"),
    PeerCase("last-layer", last_layer, "hessian-eigenthings"),
    PeerCase("least-squares", least_squares, "hessian-eigenthings"),
    PeerCase("mlp", eigenthings_mlp, "hessian-eigenthings"),
    PeerCase("resnet8", resnet8, "PyHessian"),
]
PEER_IDS = [c.name for c in PEER_CASES]
BY_NAME = {c.name: c for c in PEER_CASES}
