"""HessianOperator against ground truth: a dense Hessian computed without the engine, and
central finite differences of float64 gradients, on every model in ``cases``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from cases import (
    BY_ID,
    CASE_IDS,
    CASES,
    ModelSnapshot,
    case_reference,
    concatenated,
    finite_difference_hvp,
    flat_parameters,
    mlp_tanh_mse,
    reference_gradient,
    reference_hessian,
    split,
    trainable,
)


def tolerance(op: ld.HessianOperator) -> float:
    """Relative accuracy to expect from the operator's arithmetic."""
    return 1e-10 if op.dtype == torch.float64 else 2e-5


def close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> bool:
    actual, expected = torch.as_tensor(actual).double(), torch.as_tensor(expected).double()
    return float((actual - expected).norm()) <= rtol * max(float(expected.norm()), 1e-12)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_products_match_reference_hessian(case_id):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data, mode=case.mode)
    H = case_reference(case_id)
    n = H.shape[0]
    assert op.shape == (n, n) and op.num_params == n == flat_parameters(model).numel()
    assert op.mode == case.mode and op.num_samples == 16
    g = torch.Generator().manual_seed(0)
    V = torch.randn(n, 3, generator=g, dtype=torch.float64)
    tol = tolerance(op)
    # vector, torch matrix of columns, numpy matrix
    Hv = op @ V[:, 0].to(op.dtype)
    assert Hv.shape == (n,) and Hv.dtype == op.dtype
    assert close(Hv, H @ V[:, 0], tol)
    HV = op @ V
    assert HV.shape == (n, 3) and HV.dtype == torch.float64  # output follows the input's dtype
    assert close(HV, H @ V, tol)
    HV_np = op @ V.numpy()
    assert isinstance(HV_np, np.ndarray) and HV_np.shape == (n, 3)
    assert close(torch.from_numpy(HV_np), H @ V, tol)


@pytest.mark.parametrize("cache", [True, False, "auto"])
@pytest.mark.parametrize("case_id", CASE_IDS)
def test_products_from_kept_graphs_match_reference(case_id, cache):
    # The first product builds (or not) the kept graphs, the second and third use them.
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data, mode=case.mode, cache=cache)
    H = case_reference(case_id)
    V = torch.randn(H.shape[0], 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    if cache is True and case.mode == "train" and "batchnorm" in case_id:
        with pytest.raises(ValueError, match="changes its buffers in place"):
            op @ V[:, 0]
        return
    first = op @ V[:, 0]
    # These graphs are far below the "auto" budget; BatchNorm in train mode updates its running
    # statistics in every forward, so its graphs cannot be kept.
    keeps = cache is not False and not (case.mode == "train" and "batchnorm" in case_id)
    assert op.cached == keeps
    assert close(first, H @ V[:, 0], tolerance(op))
    assert close(op @ V[:, 1:], H @ V[:, 1:], tolerance(op))
    assert torch.equal(op @ V[:, 0], first)


def test_kept_graphs_follow_parameter_changes_and_clear():
    model, loss_fn, data = mlp_tanh_mse("batches")
    op = ld.hessian(model, loss_fn, data)
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(2))
    before = op @ v
    assert op.cached
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    assert not op.cached  # the graphs are of the old parameters
    after = op @ v
    fresh = ld.hessian(model, loss_fn, data, cache=False) @ v
    assert torch.allclose(after, fresh, rtol=1e-6, atol=1e-7) and not torch.allclose(after, before)
    op.clear_cache()
    assert not op.cached


def test_auto_cache_keeps_nothing_below_one_batch(monkeypatch):
    import lossdoctor.curvature.operator as operator

    monkeypatch.setattr(operator, "cache_budget_bytes", lambda device: 1)
    model, loss_fn, data = mlp_tanh_mse("batches")
    op = ld.hessian(model, loss_fn, data)
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(3))
    H = reference_hessian(model, loss_fn, data)
    for _ in range(2):
        assert close(op @ v, H.double() @ v.double(), tolerance(op))
        assert not op.cached and op.cached_batches == 0 and op.cached_bytes == 0


@pytest.mark.parametrize(
    ("case_id", "micro_batch_size"),
    [
        (c.id, m)
        for c in CASES
        if c.data_kind == "batches"
        for m in ([None, 2] if c.mode == "eval" else [None])
    ],
)
def test_a_byte_budget_keeps_the_first_batches_that_fit(case_id, micro_batch_size):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    whole = ld.hessian(
        model, loss_fn, data, mode=case.mode, micro_batch_size=micro_batch_size, cache="auto"
    )
    v = torch.randn(
        whole.num_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64
    )
    whole @ v
    if case.mode == "train" and "batchnorm" in case_id:
        assert whole.cached_batches == 0  # running statistics change in every forward
        return
    assert whole.cached and whole.cached_batches >= 3 and whole.cached_bytes > 0
    budget = whole.cached_bytes - 1  # everything but the last batch's graph
    op = ld.hessian(
        model, loss_fn, data, mode=case.mode, micro_batch_size=micro_batch_size, cache=budget
    )
    H = case_reference(case_id)
    first = op @ v
    kept = op.cached_batches
    assert 0 < kept == whole.cached_batches - 1 and not op.cached and 0 < op.cached_bytes <= budget
    assert close(first, H @ v, tolerance(op))
    V = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    assert close(op @ V, H @ V, tolerance(op))  # kept graphs and recomputed ones together
    assert torch.equal(op @ v, first) and op.cached_batches == kept
    with torch.no_grad():
        next(model.parameters()).mul_(1.1)
    assert op.cached_batches == 0 and op.cached_bytes == 0  # the graphs are of the old parameters


def test_auto_cache_budget_is_a_share_of_available_memory():
    from lossdoctor.curvature.operator import CACHE_MAX_BYTES, cache_budget_bytes

    budget = cache_budget_bytes(torch.device("cpu"))
    assert 0 < budget <= CACHE_MAX_BYTES


def test_bad_cache_argument():
    model, loss_fn, data = mlp_tanh_mse("batches")
    for bad in ("yes", -1, 1.5, np.array([1, 2])):
        with pytest.raises(
            ValueError, match="cache must be True, False, 'auto' or a number of bytes"
        ):
            ld.hessian(model, loss_fn, data, cache=bad)


@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.data_kind != "loader"])
def test_matvec_matches_finite_differences(case_id):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data, mode=case.mode)
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    fd = finite_difference_hvp(model, loss_fn, data, v, mode=case.mode)
    # central differences in float64 with eps=1e-5 are accurate to ~1e-8 relative
    assert close(op @ v, fd, 1e-4 if op.dtype == torch.float32 else 1e-6)


def test_unequal_batches_are_weighted_by_size():
    model, loss_fn, batches = mlp_tanh_mse("batches")
    sizes = [len(y) for _, y in batches]
    assert len(set(sizes)) > 1
    H = ld.dense_hessian(model, loss_fn, batches, dtype=torch.float64)
    H_all = reference_hessian(model, loss_fn, concatenated(batches)).double()
    # the wrong answer: each batch's Hessian counted equally
    H_equal = sum(reference_hessian(model, loss_fn, b).double() for b in batches) / len(batches)
    wrong_by = float((H_equal - H_all).norm() / H_all.norm())
    assert wrong_by > 1e-2  # the test can tell the two apart...
    assert close(H, H_all, 1e-5)  # ...and the engine gives the mean over all samples
    # the same samples batched differently give the same Hessian
    x, y = concatenated(batches)
    H_other = ld.dense_hessian(model, loss_fn, split(x, y, (1, 11, 4)), dtype=torch.float64)
    assert close(H_other, H, 1e-5)


def test_sum_reduction_is_the_mean_over_samples_of_per_sample_sums():
    model, _, batches = mlp_tanh_mse("batches")
    H_sum = ld.dense_hessian(model, nn.MSELoss(reduction="sum"), batches, dtype=torch.float64)
    H_mean = ld.dense_hessian(model, nn.MSELoss(), batches, dtype=torch.float64)
    outputs = batches[0][1].shape[1]
    # MSE 'mean' also divides by the output dimension; 'sum' over a sample does not
    assert close(H_sum, outputs * H_mean, 1e-5)


def test_functional_and_module_losses_agree():
    model, _, batches = mlp_tanh_mse("batches")
    a = ld.dense_hessian(model, F.mse_loss, batches)
    b = ld.dense_hessian(model, nn.MSELoss(), batches)
    assert torch.allclose(a, b, atol=1e-6)


def test_eval_and_train_mode_differ_for_batchnorm():
    model, loss_fn, data = BY_ID["batchnorm-cnn-batches-eval"].make()
    V = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64)
    HV_eval = ld.hessian(model, loss_fn, data, mode="eval") @ V
    HV_train = ld.hessian(model, loss_fn, data, mode="train") @ V
    assert close(HV_eval, case_reference("batchnorm-cnn-batches-eval") @ V, 1e-5)
    assert close(HV_train, case_reference("batchnorm-cnn-batches-train") @ V, 1e-5)
    assert not close(HV_train, HV_eval, 1e-2)  # batch statistics vs running statistics
    # the default is eval mode, whatever mode the model was left in
    model.train()
    op = ld.hessian(model, loss_fn, data)
    assert op.mode == "eval" and "mode='eval'" in repr(op)
    assert close(op @ V, HV_eval, 1e-5)


@pytest.mark.parametrize(
    "case_id",
    [
        "mlp-tanh-mse-loader-eval",
        "mlp-frozen-batches-eval",
        "batchnorm-cnn-batches-train",
        "transformer-tied-batches-eval",
        "mlp-tanh-sum-loss-batches-eval",
    ],
)
def test_gradient_matches_autograd(case_id):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data, mode=case.mode)
    loss, grad = op.gradient()
    ref_loss, ref_grad = reference_gradient(model, loss_fn, data, case.mode)
    assert loss == pytest.approx(float(ref_loss), rel=1e-5)
    assert op.loss == pytest.approx(float(ref_loss), rel=1e-5)
    assert close(grad, ref_grad, 1e-5)


def test_parameter_layout_and_round_trip():
    model, loss_fn, data = BY_ID["transformer-tied-batches-eval"].make()
    op = ld.hessian(model, loss_fn, data)
    names, params = trainable(model)
    assert op.names == names and op.shapes == [tuple(p.shape) for p in params]
    # the tied embedding counts once
    assert op.num_params == sum(p.numel() for p in params)
    assert model.out.weight is model.embed.weight and "out.weight" not in op.names
    v = torch.randn(op.num_params)
    parts = op.unflatten(v)
    assert list(parts) == names
    assert all(parts[k].shape == p.shape for k, p in zip(names, params, strict=True))
    assert torch.equal(op.flatten(parts), v)
    assert torch.equal(op.flatten(list(parts.values())), v)
    assert torch.equal(op.parameter_vector(), flat_parameters(model))
    with pytest.raises(ValueError, match="length"):
        op.unflatten(torch.zeros(op.num_params + 1))


def test_frozen_parameters_are_left_out():
    model, loss_fn, data = BY_ID["mlp-frozen-batches-eval"].make()
    op = ld.hessian(model, loss_fn, data)
    assert "0.bias" not in op.names and "2.weight" not in op.names
    assert op.num_params == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_to_scipy_linear_operator():
    from scipy.sparse.linalg import eigsh

    case_id = "mlp-tanh-mse-pair-eval"
    model, loss_fn, data = BY_ID[case_id].make()
    H = case_reference(case_id)
    lin = ld.hessian(model, loss_fn, data).to_scipy()
    n = H.shape[0]
    assert lin.shape == (n, n) and lin.dtype == np.float64
    X = np.random.default_rng(0).standard_normal((n, 2))
    assert close(torch.from_numpy(lin.matvec(X[:, 0])), H @ torch.from_numpy(X[:, 0]), 2e-5)
    assert close(torch.from_numpy(lin.matmat(X)), H @ torch.from_numpy(X), 2e-5)
    top = eigsh(lin, k=1, which="LA", return_eigenvectors=False)
    assert top[0] == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-4)


def test_inputs_as_tuples_and_dicts():
    """Models taking several inputs: batches of ((x1, x2), y) and ({"a": x1, "b": x2}, y)."""

    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(3, 2), nn.Linear(2, 2)

        def forward(self, a, b):
            return torch.tanh(self.a(a)) * self.b(b)

    torch.manual_seed(0)
    model = TwoInputs()
    a, b, y = torch.randn(10, 3), torch.randn(10, 2), torch.randn(10, 2)
    H_tuple = ld.dense_hessian(
        model, F.mse_loss, [((a[:4], b[:4]), y[:4]), ((a[4:], b[4:]), y[4:])]
    )
    H_dict = ld.dense_hessian(model, F.mse_loss, ({"a": a, "b": b}, y))

    def f(theta):
        w1, b1, w2, b2 = torch.split(theta, [6, 2, 4, 2])
        out = torch.tanh(a @ w1.reshape(2, 3).T + b1) * (b @ w2.reshape(2, 2).T + b2)
        return F.mse_loss(out, y)

    H = torch.autograd.functional.hessian(f, flat_parameters(model))
    assert close(H_tuple, H, 1e-5) and close(H_dict, H, 1e-5)


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("case_id", [c.id for c in CASES if c.mode == "eval"])
def test_micro_batches_give_the_same_hessian(case_id, cache):
    # Batches of 5, 3 and 8 (6, 6 and 4 from a loader, or one of 16) cut into micro-batches of 4.
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data, micro_batch_size=4, cache=cache)
    H = case_reference(case_id)
    V = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert op.num_samples == 16 and op.micro_batch_size == 4 and "micro_batch_size=4" in repr(op)
    assert close(op @ V, H @ V, tolerance(op))
    assert close(op @ V, H @ V, tolerance(op))  # from the kept graphs, where kept
    assert op.cached == cache
    loss, grad = op.gradient()
    ref_loss, ref_grad = reference_gradient(model, loss_fn, data)
    assert close(grad, ref_grad, tolerance(op))
    assert abs(loss - float(ref_loss)) <= 1e-5 * abs(float(ref_loss)) and abs(
        op.loss - loss
    ) <= 1e-5 * abs(loss)


def test_micro_batches_are_refused_where_they_change_the_loss():
    # BatchNorm in train mode normalizes with the statistics of the batch it is given.
    model, loss_fn, data = BY_ID["batchnorm-cnn-batches-train"].make()
    before = ModelSnapshot.take(model)
    with pytest.raises(ValueError, match="changes the loss of batch 0.*couples the samples"):
        ld.hessian(model, loss_fn, data, mode="train", micro_batch_size=4)
    before.assert_same(model, "refused micro-batches")  # running statistics restored
    assert (
        ld.hessian(model, loss_fn, data, mode="train", micro_batch_size=8).num_samples == 16
    )  # no cut

    # A loss that is not a per-sample mean: each batch's errors scaled by their own spread.
    model, _, data = mlp_tanh_mse("batches")

    def standardized_mse(out, y):
        err = out - y
        return (err**2).mean() / err.std().detach()

    with pytest.raises(ValueError, match="changes the loss"):
        ld.hessian(model, standardized_mse, data, micro_batch_size=3)


@pytest.mark.parametrize("size", [0, -2, 2.5, True, "4"])
def test_bad_micro_batch_size(size):
    model, loss_fn, data = mlp_tanh_mse("batches")
    with pytest.raises(ValueError, match="micro_batch_size must be a positive integer"):
        ld.hessian(model, loss_fn, data, micro_batch_size=size)


def test_micro_batches_of_tuple_and_dict_inputs_with_a_shared_tensor():
    """Inputs whose first dimension is the batch are cut; a tensor shared by the whole batch
    (here a (2, 2) mixing matrix) goes whole to every micro-batch."""

    class Mixer(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, x, mix):
            return torch.tanh(self.a(x)) @ mix

    torch.manual_seed(0)
    model = Mixer()
    x, y, mix = torch.randn(10, 3), torch.randn(10, 2), torch.randn(2, 2)
    H = ld.dense_hessian(model, F.mse_loss, ((x, mix), y))
    for data in [((x, mix), y), ({"x": x, "mix": mix}, y)]:
        op = ld.hessian(model, F.mse_loss, data, micro_batch_size=3, max_block=64)
        assert close(op @ torch.eye(op.num_params), H, 1e-5)


# --- issue 18: a loss function that sums, without a .reduction to read ------------------------


def test_summing_loss_function_is_refused_unless_reduction_sum_is_given():
    """``lambda o, t: F.mse_loss(o, t, reduction="sum")`` was taken for a mean: a Hessian the
    batch size times too large, without a word. Now the first batch's halves tell."""
    from peer_cases import mse

    model, _, data = mse()
    summing = lambda o, t: F.mse_loss(o, t, reduction="sum")  # noqa: E731
    with pytest.raises(ValueError, match="returns the sum of its samples' losses.*reduction='sum'"):
        ld.hessian(model, summing, data)
    op = ld.hessian(model, summing, data, reduction="sum")
    assert op.reduction == "sum" and op.reduction_verified
    H = op @ torch.eye(op.num_params, dtype=torch.float64)
    H_module = reference_hessian(model, nn.MSELoss(reduction="sum"), data).double()
    assert torch.allclose(H, H_module, rtol=1e-10, atol=1e-12)
    assert torch.allclose(
        ld.dense_hessian(model, summing, data, reduction="sum"), H_module, atol=1e-12
    )
    # a mean declared as a sum, and contradicting the module's own attribute, are refused too
    with pytest.raises(ValueError, match="returns the mean of its samples' losses"):
        ld.hessian(model, F.mse_loss, data, reduction="sum")
    with pytest.raises(ValueError, match="contradicts loss_fn.reduction='mean'"):
        ld.hessian(model, nn.MSELoss(), data, reduction="sum")
    with pytest.raises(ValueError, match="reduction must be 'mean'"):
        ld.hessian(model, F.mse_loss, data, reduction="batchmean")


def test_check_reduction_false_takes_the_batch_loss_as_the_function_returns_it():
    """What the stall doctor measures: the Hessian of ``loss_fn``'s value on each batch (for a
    function that sums, the objective the optimizer steps on), size-weighted over the batches:
    sum_b n_b * n_b * Hbar_b / N, with Hbar_b the per-sample mean Hessian of batch b."""
    from peer_cases import mse

    model, _, data = mse()
    batches = list(data)
    assert len({len(y) for _, y in batches}) > 1  # unequal batches: the weights matter
    summing = lambda o, t: F.mse_loss(o, t, reduction="sum")  # noqa: E731
    op = ld.hessian(model, summing, data, check_reduction=False)
    assert op.reduction == "mean" and not op.reduction_verified
    total = sum(len(y) for _, y in batches)
    truth = (
        sum(
            len(y) ** 2 * reference_hessian(model, nn.MSELoss(reduction="sum"), [(x, y)]).double()
            for x, y in batches
        )
        / total
    )
    H = op @ torch.eye(op.num_params, dtype=torch.float64)
    assert torch.allclose(H, truth, rtol=1e-10, atol=1e-12)
    # a loss module's reduction is not read either: a sum stays a sum
    module = ld.hessian(model, nn.MSELoss(reduction="sum"), data, check_reduction=False)
    H_module = module @ torch.eye(module.num_params, dtype=torch.float64)
    assert module.reduction == "mean" and torch.allclose(H_module, truth, rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="check_reduction must be True or False"):
        ld.hessian(model, summing, data, check_reduction="no")


def test_reduction_check_in_train_mode_and_for_unverifiable_losses():
    """BatchNorm in train mode couples a batch's samples: the check runs in eval mode. A token
    mean over unmasked positions is neither a mean nor a sum of per-sample losses: used as
    declared, not refused."""
    from peer_cases import batchnorm

    model, loss_fn, loader = batchnorm()
    summing = lambda o, t: F.cross_entropy(o, t, reduction="sum")  # noqa: E731
    with pytest.raises(ValueError, match="reduction='sum'"):
        ld.hessian(model, summing, loader, mode="train")
    op = ld.hessian(model, summing, loader, mode="train", reduction="sum")
    ref = ld.hessian(model, nn.CrossEntropyLoss(reduction="sum"), loader, mode="train")
    v = torch.randn(op.num_params, dtype=torch.float64)
    assert torch.allclose(op @ v, ref @ v, atol=1e-12)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 3, (6, 4), generator=g)
    tokens[0, :3] = -100  # sample 0 has one counted token, the others four
    seq_model = nn.Linear(5, 3).double()
    x = torch.randn(6, 4, 5, generator=g, dtype=torch.float64)
    masked = lambda o, t: F.cross_entropy(o.flatten(0, 1), t.flatten(), ignore_index=-100)  # noqa: E731
    op = ld.hessian(seq_model, masked, (x, tokens))
    assert op.reduction == "mean" and not op.reduction_verified
