"""Regression: checking that ``data`` was re-iterable called ``iter(data)``, which on a shuffling
DataLoader draws its base seed from the global RNG (and starts worker processes), so every
analysis given a DataLoader changed the user's RNG state. Found by the CUDA test run."""

from __future__ import annotations

import pytest
import torch

import lossdoctor as ld
from cases import mlp_tanh_mse


def test_shuffling_dataloader_leaves_the_global_rng_alone():
    model, loss_fn, loader = mlp_tanh_mse("loader")
    assert isinstance(loader, torch.utils.data.DataLoader)
    state = torch.get_rng_state().clone()
    ld.Problem(model, loss_fn, loader)
    op = ld.hessian(model, loss_fn, loader)
    op @ torch.ones(op.num_params)
    ld.trace(op, matvecs=6)
    ld.eigenpairs(op, k=1, tol=1e-3)
    assert torch.equal(torch.get_rng_state(), state)


def test_one_shot_iterators_are_still_refused():
    model, loss_fn, batches = mlp_tanh_mse("batches")
    for one_shot in (iter(batches), (b for b in batches)):
        with pytest.raises(TypeError, match="one-shot iterator"):
            ld.hessian(model, loss_fn, one_shot)
