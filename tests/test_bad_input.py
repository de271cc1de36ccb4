"""Bad input gets a clear ValueError/TypeError that names the problem, never a torch traceback."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import BatchNormCNN, ModelSnapshot, mlp, mlp_tanh_mse


def setup():
    return mlp_tanh_mse("batches")


def test_non_scalar_loss():
    model, _, data = setup()
    with pytest.raises(ValueError, match="reduction='none'"):
        ld.hessian(model, nn.MSELoss(reduction="none"), data)
    with pytest.raises(ValueError, match=r"shape \(5, 2\).*scalar"):
        ld.hessian(model, lambda out, y: (out - y) ** 2, data)
    with pytest.raises(TypeError, match="loss_fn returned float"):
        ld.hessian(model, lambda out, y: 1.0, data)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ld.hessian(model, "mse", data)


def test_no_trainable_parameters():
    model, loss_fn, data = setup()
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        ld.hessian(model, loss_fn, data)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        ld.hessian(lambda x: x, loss_fn, data)


def test_empty_data():
    model, loss_fn, _ = setup()
    for empty in (
        [],
        torch.utils.data.DataLoader(
            torch.utils.data.TensorDataset(torch.zeros(0, 4), torch.zeros(0, 2))
        ),
    ):
        with pytest.raises(ValueError, match="data is empty"):
            ld.hessian(model, loss_fn, empty)
    with pytest.raises(ValueError, match="data is None"):
        ld.hessian(model, loss_fn, None)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss(bad):
    model, loss_fn, data = setup()
    x, y = data[1]
    y = y.clone()
    y[0, 0] = bad
    data[1] = (x, y)
    with pytest.raises(ValueError, match=r"(nan|inf) on batch 1.*NaN/Inf"):
        ld.hessian(model, loss_fn, data)
    model, loss_fn, data = setup()
    with torch.no_grad():
        model[2].bias[0] = bad
    with pytest.raises(ValueError, match="non-finite loss"):
        ld.hessian(model, loss_fn, data)


def test_data_on_another_device():
    model, loss_fn, data = setup()
    meta = [(x.to("meta"), y.to("meta")) for x, y in data]
    with pytest.raises(ValueError, match="inputs are on meta but the model is on cpu"):
        ld.hessian(model, loss_fn, meta)
    targets_only = [(x, y.to("meta")) for x, y in data]
    with pytest.raises(ValueError, match="targets are on meta"):
        ld.hessian(model, loss_fn, targets_only)


def test_parameters_on_several_devices():
    model, loss_fn, data = setup()
    model[2].to("meta")
    with pytest.raises(ValueError, match="several devices"):
        ld.hessian(model, loss_fn, data)


def test_generator_and_other_one_shot_or_odd_data():
    model, loss_fn, data = setup()
    with pytest.raises(TypeError, match="generator.*list of batches or a DataLoader"):
        ld.hessian(model, loss_fn, (b for b in data))
    with pytest.raises(TypeError, match="single tensor"):
        ld.hessian(model, loss_fn, data[0][0])
    with pytest.raises(TypeError, match="not iterable"):
        ld.hessian(model, loss_fn, 3)
    with pytest.raises(
        TypeError, match=r"batch 2 is a Tensor, expected an \(inputs, targets\) pair"
    ):
        ld.hessian(model, loss_fn, [data[0], data[1], data[2][0]])
    with pytest.raises(TypeError, match="targets a tensor"):
        ld.hessian(model, loss_fn, [(data[0][0], [1, 2])])


def test_model_fails_on_the_data():
    model, loss_fn, _ = setup()
    with pytest.raises(ValueError, match="the model failed on batch 0"):
        ld.hessian(model, loss_fn, (torch.randn(3, 7), torch.randn(3, 2)))


def test_wrong_vector_for_matmul():
    model, loss_fn, data = setup()
    op = ld.hessian(model, loss_fn, data)
    n = op.num_params
    with pytest.raises(ValueError, match=f"length {n}.*shape \\({n + 1},\\)"):
        op @ torch.zeros(n + 1)
    with pytest.raises(ValueError, match=f"{n} rows"):
        op @ torch.zeros(n, 2, 2)
    with pytest.raises(TypeError, match="torch.Tensor or numpy array, got list"):
        op @ ([0.0] * n)


def test_train_mode_with_dropout_is_refused_and_model_untouched():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Dropout(0.2), nn.Linear(5, 2))
    _, loss_fn, data = setup()
    before = ModelSnapshot.take(model)
    with pytest.raises(ValueError, match=r"mode='train'.*Dropout.*mode='eval'"):
        ld.hessian(model, loss_fn, data, mode="train")
    before.assert_same(model)
    with pytest.raises(ValueError, match="mode must be one of"):
        ld.hessian(model, loss_fn, data, mode="training")
    # dropout with p=0 is deterministic: train mode is fine
    model[1].p = 0.0
    ld.hessian(model, loss_fn, data, mode="train")


def test_train_mode_batchnorm_is_allowed():
    model = BatchNormCNN()
    x, y = torch.randn(6, 1, 6, 6), torch.randint(0, 3, (6,))
    assert ld.hessian(model, F.cross_entropy, (x, y), mode="train").mode == "train"


def test_bad_eigen_arguments():
    A = torch.eye(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="which must be one of"):
        ld.eigenpairs(A, which="top")
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        ld.eigenpairs(A, k=0)
    with pytest.raises(ValueError, match="tol must be a finite number > 0, got -1"):
        ld.eigenpairs(A, tol=-1)
    with pytest.raises(ValueError, match="num_probes must be an integer >= 1, got 0"):
        ld.spectral_density(A, num_probes=0)


def test_mixed_dtypes_refused():
    model = mlp(4, 6, 2, nn.Tanh)
    model[2].double()
    _, loss_fn, data = setup()
    with pytest.raises(TypeError, match="one floating dtype"):
        ld.hessian(model, loss_fn, data)
