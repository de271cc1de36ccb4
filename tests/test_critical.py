"""classify_critical_point against closed forms (the lecture's toy, quadratics with a chosen
spectrum, a known local maximum) and against dense Hessians computed without lossdoctor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

import lossdoctor as ld
from lossdoctor.zoo.lecture import lecture_saddle


# -- closed-form models ------------------------------------------------------------------------
class Quadratic(nn.Module):
    """Outputs ½ (θ-c)ᵀ A (θ-c) for every input row: with a mean loss the Hessian is A."""

    def __init__(self, spectrum, seed: int = 0, at=None, dtype=torch.float64):
        super().__init__()
        n = len(spectrum)
        g = torch.Generator().manual_seed(seed)
        Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
        self.register_buffer(
            "A", (Q @ torch.diag(torch.tensor(spectrum, dtype=torch.float64)) @ Q.T).to(dtype)
        )
        self.register_buffer("Q", Q.to(dtype))
        self.theta = nn.Parameter(
            torch.zeros(n, dtype=dtype) if at is None else torch.tensor(at, dtype=dtype)
        )

    def forward(self, x):
        value = 0.5 * self.theta @ self.A @ self.theta
        return value.expand(x.shape[0])


class Bumps(nn.Module):
    """cos(w1) + cos(2 w2): a local maximum at the origin with Hessian diag(-1, -4)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    def forward(self, x):
        return (torch.cos(self.w[0]) + torch.cos(2 * self.w[1])).expand(x.shape[0])


def mean_output(out, target):
    return out.mean()


ONE = (torch.zeros(1, 1), torch.zeros(1))


def classify(model, **kw):
    return ld.classify_critical_point(model, mean_output, ONE, **kw)


# -- the lecture's toy -----------------------------------------------------------------------------
@pytest.mark.parametrize("dense", [True, False])
def test_lecture_toy_is_a_saddle_with_eigenvalues_plus_minus_two(dense):
    p = lecture_saddle()
    point = ld.classify_critical_point(p.model, p.loss_fn, p.train_data, dense=dense, k=1)
    assert point.kind == "saddle_point"
    assert point.grad_norm == 0.0
    assert point.loss == pytest.approx(1.0)
    assert point.max_eigenvalue == pytest.approx(2.0, abs=1e-5)
    assert point.min_eigenvalue == pytest.approx(-2.0, abs=1e-5)
    u = point.escape_direction.cpu().numpy()
    assert np.allclose(
        u, np.array([1.0, 1.0]) / math.sqrt(2), atol=1e-5
    )  # sign fixed: largest entry positive
    assert point.minimum_ratio == pytest.approx(0.5, abs=0.0 if dense else 0.3)
    assert "saddle" in point.evidence and "-2" in point.evidence
    if dense:
        assert (point.num_positive, point.num_negative, point.num_zero) == (1, 1, 0)
    H = ld.dense_hessian(p.model, p.loss_fn, p.train_data)
    assert torch.allclose(H, torch.tensor([[0.0, -2.0], [-2.0, 0.0]]))
    by_param = point.escape_direction_by_parameter()
    assert set(by_param) == {"w1", "w2"} and by_param["w1"].shape == ()


def test_lecture_toy_away_from_the_saddle_is_not_critical():
    p = lecture_saddle(0.5, 0.5)  # gradient -2(1 - 0.25)(0.5, 0.5), norm 1.06
    point = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
    assert point.kind == "not_critical"
    assert point.grad_norm == pytest.approx(0.75 * math.sqrt(2), rel=1e-5)
    assert not point.is_critical
    assert "not a critical point" in point.evidence


def test_lecture_toy_on_the_minimum_valley_is_degenerate():
    # On w1*w2 = 1 the loss is 0 and the valley is flat along the hyperbola: one zero eigenvalue.
    p = lecture_saddle(1.0, 1.0)
    point = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
    assert point.kind == "degenerate"
    assert point.num_zero == 1 and point.num_positive == 1 and point.num_negative == 0
    assert point.max_eigenvalue == pytest.approx(4.0, abs=1e-5)
    assert point.escape_direction is None


# -- quadratics with a chosen spectrum --------------------------------------------------------------
@pytest.mark.parametrize(
    "spectrum, kind, ratio",
    [
        ([5.0, 3.0, 2.0, 1.0, 0.5], "local_minimum", 1.0),
        ([5.0, 3.0, -2.0, 1.0, -0.5], "saddle_point", 0.6),
        ([-5.0, -3.0, -2.0, -1.0, -0.5], "local_maximum", 0.0),
    ],
)
@pytest.mark.parametrize("dense", [True, False])
def test_quadratic_with_a_chosen_spectrum(spectrum, kind, ratio, dense):
    model = Quadratic(spectrum)
    point = classify(model, dense=dense, k=2)
    assert point.kind == kind
    assert point.min_eigenvalue == pytest.approx(min(spectrum), abs=1e-6)
    assert point.max_eigenvalue == pytest.approx(max(spectrum), abs=1e-6)
    if dense:
        assert point.minimum_ratio == ratio
        assert point.ratio_method == "dense"
    else:
        assert point.ratio_method == "slq"
        assert abs(point.minimum_ratio - ratio) <= 3 * point.minimum_ratio_error + 0.15
    if min(spectrum) < 0:
        # The escape direction is the eigenvector of the smallest eigenvalue: u^T A u = lambda_min.
        u = point.escape_direction.to(torch.float64)
        assert float(u @ model.A @ u) == pytest.approx(min(spectrum), abs=1e-6)
        assert float(u.norm()) == pytest.approx(1.0)
    else:
        assert point.escape_direction is None


def test_scaling_the_loss_keeps_the_verdict():
    # Loss 1 + ½θᵀAθ a hair (1e-7) from the saddle: critical at every scale of the loss.
    spectrum = [4.0, 1.0, -1e-2, 0.0]
    verdicts = []
    for scale in (1e-3, 1.0, 1e3):
        model = Quadratic(spectrum, at=[1e-7, 0, 0, 0])
        point = ld.classify_critical_point(model, lambda out, y, s=scale: s * (1 + out.mean()), ONE)
        verdicts.append((point.kind, point.num_positive, point.num_negative, point.num_zero))
    assert verdicts[0] == verdicts[1] == verdicts[2] == ("saddle_point", 2, 1, 1)


def test_known_local_maximum():
    point = classify(Bumps())
    assert point.kind == "local_maximum"
    assert np.allclose(sorted(point.eigenvalues), [-4.0, -1.0], atol=1e-9)
    assert point.minimum_ratio == 0.0
    assert point.loss == pytest.approx(2.0)


# -- degenerate points: zero eigenvalues are zero, not signs from rounding -------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_zero_eigenvalues_are_degenerate_not_rounding_signs(dtype):
    # A rotated spectrum with exact zeros: in float the computed zeros come out as +-1e-8 noise.
    model = Quadratic([3.0, 1.0, 0.0, 0.0, 0.0], seed=3, dtype=dtype)
    point = classify(model)
    assert point.kind == "degenerate"
    assert (point.num_positive, point.num_negative, point.num_zero) == (2, 0, 3)
    assert point.minimum_ratio == pytest.approx(0.4)
    assert point.escape_direction is None
    assert "flat" in point.evidence


def test_degenerate_with_a_negative_direction_still_offers_an_escape():
    model = Quadratic([0.0, 0.0, -1.0])
    point = classify(model)
    assert point.kind == "degenerate"
    assert point.escape_direction is not None
    assert point.min_eigenvalue == pytest.approx(-1.0)


def test_all_zero_hessian_is_degenerate():
    model = Quadratic([0.0, 0.0])
    point = classify(model)
    assert point.kind == "degenerate" and point.num_zero == 2


def test_explicit_tolerances_are_absolute():
    model = Quadratic([2.0, 0.05, -0.05])
    assert classify(model).kind == "saddle_point"
    assert classify(model, eig_tol=0.1).kind == "degenerate"
    shifted = Quadratic([2.0, 1.0], at=[1e-3, 0.0])
    # The default gradient scale sqrt(2 |L| Λ) is ~ the gradient itself here (the loss is 0 at the
    # minimum): an explicit absolute grad_tol decides.
    assert classify(shifted, grad_tol=1e-2).kind == "local_minimum"
    assert classify(shifted, grad_tol=1e-6).kind == "not_critical"


# -- real networks against an independent dense Hessian ------------------------------------------
def reference_eigenvalues(model, loss_fn, x, y):
    names = [n for n, p in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    sizes = [p.numel() for p in model.parameters()]
    flat0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()]).double()

    def f(flat):
        params = {
            n: t.reshape(s) for n, t, s in zip(names, torch.split(flat, sizes), shapes, strict=True)
        }
        return loss_fn(functional_call(model, params, (x,)), y)

    model = model.double()
    H = torch.autograd.functional.hessian(f, flat0)
    return np.linalg.eigvalsh(H.numpy())


def trained_mlp(seed: int, steps: int):
    torch.manual_seed(seed)
    x = torch.randn(48, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (48,))
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    opt_params = list(model.parameters())
    for _ in range(steps):  # plain full-batch gradient descent, no optimizer import needed
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, opt_params)
        with torch.no_grad():
            for p, g in zip(opt_params, grads, strict=True):
                p -= 0.5 * g
    return model, x, y


@pytest.mark.parametrize("seed, steps", [(0, 0), (1, 200)])
def test_small_network_matches_dense_ground_truth(seed, steps):
    model, x, y = trained_mlp(seed, steps)
    ref = reference_eigenvalues(model, F.cross_entropy, x, y)
    loader = DataLoader(TensorDataset(x, y), batch_size=20)  # unequal batches: 20, 20, 8
    dense = ld.classify_critical_point(
        model, F.cross_entropy, loader, grad_tol=1e9
    )  # force a verdict
    assert dense.min_eigenvalue == pytest.approx(ref[0], abs=1e-8)
    assert dense.max_eigenvalue == pytest.approx(ref[-1], abs=1e-8)
    tol = dense.eig_tol
    assert dense.num_positive == int((ref > tol).sum())
    assert dense.num_negative == int((ref < -tol).sum())
    assert dense.minimum_ratio == pytest.approx(float((ref > tol).mean()))
    matrix_free = ld.classify_critical_point(
        model, F.cross_entropy, loader, grad_tol=1e9, dense=False, k=3, num_probes=8
    )
    assert matrix_free.min_eigenvalue == pytest.approx(ref[0], abs=1e-6 * abs(ref).max())
    assert matrix_free.max_eigenvalue == pytest.approx(ref[-1], rel=1e-6)
    assert matrix_free.kind == dense.kind
    assert (
        abs(matrix_free.minimum_ratio - dense.minimum_ratio)
        <= 3 * matrix_free.minimum_ratio_error + 0.1
    )


def test_result_is_json_safe_and_readable():
    import json

    p = lecture_saddle()
    point = ld.classify_critical_point(p.model, p.loss_fn, p.train_data)
    d = point.to_dict()
    json.dumps(d)
    assert d["kind"] == "saddle_point" and "escape_direction" not in d
    text = str(point)
    assert "verdict: saddle point" in text and "minimum ratio" in text


# -- the user's model is left exactly as it was ---------------------------------------------------
def snapshot(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        [p.requires_grad for p in model.parameters()],
        [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        torch.get_rng_state(),
    )


def assert_same(model, snap):
    state, modes, flags, grads, rng = snap
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == modes
    assert [p.requires_grad for p in model.parameters()] == flags
    for p, g in zip(model.parameters(), grads, strict=True):
        assert (p.grad is None) == (g is None) and (g is None or torch.equal(p.grad, g))
    assert torch.equal(torch.get_rng_state(), rng)


@pytest.mark.parametrize("dense", [True, False])
def test_model_unchanged(dense):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Dropout(0.2), nn.Linear(4, 2)
    )
    model.train()
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    F.cross_entropy(model(x), y).backward()  # leave .grad populated
    model[0].bias.requires_grad_(False)
    snap = snapshot(model)
    ld.classify_critical_point(
        model, F.cross_entropy, (x, y), dense=dense, k=2, num_probes=3, lanczos_steps=10
    )
    assert_same(model, snap)


# -- bad input ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"grad_tol": -1.0}, "grad_tol"),
        ({"eig_tol": float("nan")}, "eig_tol"),
        ({"k": 0}, "k "),
        ({"dense": True, "dense_max_params": 1}, "dense_max_params"),
        ({"mode": "test"}, "mode"),
    ],
)
def test_bad_options_are_named(kwargs, match):
    p = lecture_saddle()
    snap = snapshot(p.model)
    with pytest.raises(ValueError, match=match):
        ld.classify_critical_point(p.model, p.loss_fn, p.train_data, **kwargs)
    assert_same(p.model, snap)


def test_bad_model_loss_and_data():
    p = lecture_saddle()
    with pytest.raises(TypeError, match="nn.Module"):
        ld.classify_critical_point(lambda x: x, p.loss_fn, p.train_data)
    with pytest.raises(TypeError, match="loss_fn must be callable"):
        ld.classify_critical_point(p.model, "mse", p.train_data)
    with pytest.raises(ValueError, match="data is None"):
        ld.classify_critical_point(p.model, p.loss_fn, None)
    with pytest.raises(TypeError, match="one-shot iterator"):
        ld.classify_critical_point(p.model, p.loss_fn, iter([p.train_data]))


def test_non_finite_loss_is_refused():
    model = Quadratic([1.0, 2.0], at=[float("nan"), 0.0])
    with pytest.raises(ValueError, match="non-finite|NaN"):
        classify(model)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_saddle_and_escape():
    p = lecture_saddle()
    model = p.model.cuda()
    data = tuple(t.cuda() for t in p.train_data)
    point = ld.classify_critical_point(model, p.loss_fn, data)
    assert point.kind == "saddle_point" and point.min_eigenvalue == pytest.approx(-2.0, abs=1e-5)
    result = ld.escape_saddle(model, p.loss_fn, data, critical=point, apply=True)
    assert result.applied and float((model.w1 * model.w2).detach().cpu()) == pytest.approx(
        1.0, abs=1e-3
    )


# -- issue 18: the gradient decides early, a zero tolerance from rounding, Ctrl-C -----------------
def test_gradient_alone_decides_not_critical_matrix_free():
    """~941 products were spent (249 s on a GPT-2) when the gradient alone said "not critical"."""
    model = Quadratic([4.0, 2.0, 1.0, -0.5, 0.25] * 20, at=[0.3] * 100)
    point = classify(model, dense=False)
    assert point.kind == "not_critical" and point.ratio_method == "none"
    assert 0 < point.matvecs <= 60
    assert math.isnan(point.min_eigenvalue) and "skipped" in point.evidence
    assert point.grad_tol == pytest.approx(1e-2 * math.sqrt(2 * point.loss * 4.0), rel=2e-2)
    absolute = classify(model, dense=False, grad_tol=1e-3)
    assert absolute.kind == "not_critical" and absolute.matvecs == 0
    d = absolute.to_dict()
    assert d["min_eigenvalue"] is None and d["kind"] == "not_critical"
    # a point the gradient does not decide still gets the whole test
    near = classify(Quadratic([4.0, 2.0, 1.0, -0.5, 0.25] * 20), dense=False, k=2)
    assert near.kind == "saddle_point" and near.ratio_method == "slq"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("dense", [True, False])
def test_ill_conditioned_positive_definite_minimum_is_a_minimum(dtype, dense):
    """Condition number 9,000: the smallest eigenvalue is 1.1e-4 of ||H||, far above rounding.
    The old zero tolerance (1e-4 of the spread) called it "degenerate"."""
    spectrum = [9.0, 5.0, 2.0, 1.0, 0.1, 0.01, 0.001]
    point = classify(Quadratic(spectrum, seed=2, dtype=dtype), dense=dense, k=2)
    assert point.kind == "local_minimum", point
    assert point.eig_tol < 0.001 and "eps" in point.eig_tol_basis
    assert point.min_eigenvalue == pytest.approx(0.001, rel=1e-3)


def test_ctrl_c_at_a_strict_saddle_is_undetermined_never_a_verdict():
    """A Ctrl-C during the spectrum at a strict saddle returned "local minimum", unflagged. Here
    the Ctrl-C arrives in the progress callback, i.e. between two Hessian-vector products, at
    moments spread over the whole run (the rough norm, the Lanczos runs, the quadrature)."""

    class Interrupting:
        def __init__(self, stop):
            self.stop, self.calls = stop, 0

        def __call__(self, done, total):
            self.calls += 1
            if self.calls == self.stop:
                raise KeyboardInterrupt

    spectrum = [3.0, 2.0, 1.0, 0.5, 0.2] * 8 + [-0.05]  # the negative one is found last
    counter = Interrupting(None)
    reference = ld.classify_critical_point(
        Quadratic(spectrum, seed=4), mean_output, ONE, dense=False, k=1, progress=counter
    )
    assert reference.kind == "saddle_point"
    kinds = set()
    for stop in list(range(2, counter.calls, max(1, counter.calls // 15))):
        model = Quadratic(spectrum, seed=4)
        before = model.theta.detach().clone()
        try:
            point = ld.classify_critical_point(
                model, mean_output, ONE, dense=False, k=1, progress=Interrupting(stop)
            )
        except KeyboardInterrupt:  # before the gradient finished: nothing to return
            assert torch.equal(model.theta.detach(), before)
            continue
        assert torch.equal(model.theta.detach(), before)
        if point.interrupted:
            assert point.kind == "undetermined" and "INTERRUPTED" in str(point)
            assert point.to_dict()["interrupted"] is True
        else:
            assert point.kind == "saddle_point"
        kinds.add(point.kind)
    assert "undetermined" in kinds
