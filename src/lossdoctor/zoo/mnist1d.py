"""MNIST-1D (Greydanus, 2020): generated procedurally, offline, in seconds; 40 features, 10 classes.

Generated sets are cached as ``.npz`` files so repeated runs start at once."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .._extras import require
from .._files import atomic_write
from ..problem import Problem


def cache_dir() -> Path:
    """Where generated data sets are cached: ``$LOSSDOCTOR_CACHE``, else ``$XDG_CACHE_HOME/lossdoctor`` (``~/.cache``)."""
    root = os.environ.get("LOSSDOCTOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lossdoctor"
    )
    return Path(root)


def mnist1d_arrays(
    num_train: int = 4000, num_test: int = 1000, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """MNIST-1D generated offline (the ``mnist1d`` package) and cached under :func:`cache_dir`.

    Args:
        num_train: training samples.
        num_test: test samples.
        seed: the generator's seed.

    Returns:
        ``(x_train, y_train, x_test, y_test)`` as float32 / int64 arrays (40 features, 10 classes).
    """
    if num_train < 1 or num_test < 0:
        raise ValueError("num_train must be >= 1 and num_test >= 0.")
    path = cache_dir() / f"mnist1d-{num_train}-{num_test}-{seed}.npz"
    if path.is_file():
        with np.load(path) as f:
            return f["x"], f["y"], f["x_test"], f["y_test"]
    mnist1d_data = require("mnist1d.data", "generating MNIST-1D (the built-in mnist1d problems)")
    get_dataset_args, make_dataset = mnist1d_data.get_dataset_args, mnist1d_data.make_dataset
    args = get_dataset_args()
    args.num_samples = num_train + num_test
    args.train_split = num_train / (num_train + num_test)
    args.seed = seed
    d = make_dataset(args)
    x, y = d["x"].astype(np.float32), d["y"].astype(np.int64)
    x_test, y_test = d["x_test"].astype(np.float32), d["y_test"].astype(np.int64)
    # make_dataset rounds the split; trim to exactly what was asked.
    x, y, x_test, y_test = x[:num_train], y[:num_train], x_test[:num_test], y_test[:num_test]
    with contextlib.suppress(OSError):  # a read-only cache only costs regeneration time
        atomic_write(
            path.parent,
            path.name,
            lambda stream: np.savez(stream, x=x, y=y, x_test=x_test, y_test=y_test),
        )
    return x, y, x_test, y_test


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Cut numpy arrays into a list of ``(inputs, targets)`` tensor batches of ``batch_size``."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    return [(xt[i : i + batch_size], yt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]


class MLP(nn.Sequential):
    """A ReLU MLP for MNIST-1D: ``depth`` hidden layers of ``hidden`` units."""

    def __init__(self, hidden: int = 100, depth: int = 2, in_features: int = 40, classes: int = 10):
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        layers.append(nn.Linear(width, classes))
        super().__init__(*layers)


class CNN1d(nn.Sequential):
    """A small 1-D convnet for 40-sample signals (about 94k parameters with the defaults)."""

    def __init__(self, channels: int = 16, hidden: int = 140, classes: int = 10, length: int = 40):
        super().__init__(
            nn.Unflatten(1, (1, length)),
            nn.Conv1d(1, channels, 5, padding=2),
            nn.ReLU(),
            nn.Conv1d(channels, 2 * channels, 5, padding=2, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(2 * channels * (length // 2), hidden),
            nn.ReLU(),
            nn.Linear(hidden, classes),
        )


def _problem(
    name: str, model: nn.Module, num_train: int, num_test: int, batch_size: int, data_seed: int
) -> Problem:
    x, y, xt, yt = mnist1d_arrays(num_train, num_test, data_seed)
    return Problem(
        model=model,
        loss_fn=F.cross_entropy,
        train_data=batches(x, y, batch_size),
        test_data=batches(xt, yt, max(batch_size, len(xt))) if len(xt) else None,
        name=name,
        description=f"MNIST-1D, {num_train} train / {num_test} test samples, cross-entropy",
        info={
            "num_train": num_train,
            "num_test": num_test,
            "batch_size": batch_size,
            "data_seed": data_seed,
        },
    )


def mnist1d_mlp(
    num_train: int = 4000,
    num_test: int = 1000,
    batch_size: int = 1000,
    seed: int = 0,
    data_seed: int = 42,
    hidden: int = 100,
    depth: int = 2,
) -> Problem:
    """MNIST-1D (generated offline, cached) with an MLP: the tour's standard problem.

    Args:
        num_train: training samples.
        num_test: test samples.
        batch_size: samples per training batch (the test data is one batch).
        seed: the seed of the initial weights.
        data_seed: the seed of the generated data.
        hidden: units per hidden layer.
        depth: hidden layers.

    Returns:
        The problem (cross-entropy; train and test data as lists of batches).
    """
    torch.manual_seed(seed)
    return _problem("mnist1d-mlp", MLP(hidden, depth), num_train, num_test, batch_size, data_seed)


def mnist1d_cnn(
    num_train: int = 4000,
    num_test: int = 1000,
    batch_size: int = 1000,
    seed: int = 0,
    data_seed: int = 42,
    channels: int = 16,
    hidden: int = 140,
) -> Problem:
    """MNIST-1D (generated offline, cached) with a 1-D CNN: the data as for :func:`mnist1d_mlp`.

    Args:
        num_train: as for :func:`mnist1d_mlp`.
        num_test: as for :func:`mnist1d_mlp`.
        batch_size: as for :func:`mnist1d_mlp`.
        seed: as for :func:`mnist1d_mlp`.
        data_seed: as for :func:`mnist1d_mlp`.
        channels: convolution channels.
        hidden: units of the hidden dense layer.

    Returns:
        The problem, as for :func:`mnist1d_mlp`.
    """
    torch.manual_seed(seed)
    return _problem(
        "mnist1d-cnn", CNN1d(channels, hidden), num_train, num_test, batch_size, data_seed
    )
