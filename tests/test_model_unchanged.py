"""Every public curvature call leaves the user's model exactly as it was: state_dict (parameters
and buffers such as BatchNorm running statistics), every module's mode, requires_grad, .grad
and the global RNG state."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import lossdoctor as ld
from cases import BatchNormCNN, ModelSnapshot, batchnorm_cnn


def model_in_a_mixed_state(dropout: float) -> tuple[nn.Module, object, object]:
    _, loss_fn, data = batchnorm_cnn("batches")
    torch.manual_seed(12)
    model = BatchNormCNN(dropout=dropout)
    model.train()
    model[1].eval()  # modes differ between modules: each must come back as it was
    model[0].bias.requires_grad_(False)  # a frozen parameter stays frozen
    model(data[0][0]).sum().backward()  # existing .grad tensors must survive
    return model, loss_fn, data


def call_public(name: str, model: nn.Module, loss_fn, data, mode: str) -> None:
    def op(**kwargs):
        return ld.hessian(model, loss_fn, data, mode=mode, **kwargs)

    if name == "hessian":
        op()
    elif name == "matvec":
        H = op()
        H @ torch.ones(H.num_params)
    elif name == "matmat":
        H = op(max_block=2)
        H @ torch.ones(H.num_params, 5)
    elif name == "gradient":
        op().gradient()
    elif name == "eigenpairs":
        ld.eigenpairs(op(), k=1, which="both", max_matvecs=12)
    elif name == "trace":
        ld.trace(op(), matvecs=6)
    elif name == "spectral_density":
        ld.spectral_density(op(), num_probes=2, lanczos_steps=3)
    elif name == "dense_hessian":
        ld.dense_hessian(model, loss_fn, data, mode=mode)
    else:
        raise AssertionError(name)


CALLS = [
    "hessian",
    "matvec",
    "matmat",
    "gradient",
    "eigenpairs",
    "trace",
    "spectral_density",
    "dense_hessian",
]


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("call", CALLS)
def test_model_is_unchanged(call, mode):
    # train mode is refused with active dropout (tested in test_bad_input); use p=0 there
    model, loss_fn, data = model_in_a_mixed_state(dropout=0.3 if mode == "eval" else 0.0)
    torch.manual_seed(123)
    before = ModelSnapshot.take(model)
    call_public(call, model, loss_fn, data, mode)
    before.assert_same(model, f"{call} in {mode} mode")


def test_snapshot_detects_changes():
    """The checker itself can fail: each kind of change is caught."""
    model, loss_fn, data = model_in_a_mixed_state(dropout=0.0)
    changes = [
        lambda: model[1].running_mean.add_(1e-6),
        lambda: model[1].num_batches_tracked.add_(1),
        lambda: model.train(),
        lambda: model[0].bias.requires_grad_(True),
        lambda: setattr(model[0].weight, "grad", None),
        lambda: torch.rand(1),
        lambda: model[4].weight.data.mul_(1.0 + 1e-7),
    ]
    for change in changes:
        model, loss_fn, data = model_in_a_mixed_state(dropout=0.0)
        before = ModelSnapshot.take(model)
        change()
        with pytest.raises(AssertionError):
            before.assert_same(model)
