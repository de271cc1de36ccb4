"""Memory that scales: the Lanczos basis and the trace block sized to the memory available, stated
in the results, overridable, refused clearly when nothing fits; a float32 or host-held basis gives
pairs as accurate as their flags say (dense float64 spectra) and leaves the model untouched."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch

import lossdoctor as ld
from cases import BY_ID, ModelSnapshot, case_reference
from lossdoctor.curvature import memory
from lossdoctor.curvature.memory import plan_basis, plan_block

GB = 10**9


# -- the plan, from given amounts of memory --------------------------------------------------------
def test_plan_prefers_float64_then_float32_then_fewer_vectors():
    n = 124_000_000  # GPT-2 small
    roomy = plan_basis(n, ncv=24, min_ncv=5, op_device="cpu", available={"cpu": 200 * GB})
    assert (roomy.dtype, roomy.ncv, roomy.fallback) == (torch.float64, 24, "")
    assert (
        not roomy.keep_products and roomy.bytes == 25 * n * 8
    )  # products only while small (1 GiB)
    small_model = plan_basis(
        100_000, ncv=24, min_ncv=5, op_device="cpu", available={"cpu": 20 * GB}
    )
    assert small_model.keep_products and small_model.bytes == 2 * 25 * 100_000 * 8
    # float64 needs 24.8 GB, 40% of 40 GB is 16 GB: float32 (12.4 GB) fits
    mid = plan_basis(n, ncv=24, min_ncv=5, op_device="cpu", available={"cpu": 40 * GB})
    assert (mid.dtype, mid.ncv, mid.keep_products) == (torch.float32, 24, False)
    assert mid.bytes == 25 * n * 4 and "float64" in mid.fallback
    # 20 GB: 8 GB for the basis = 16 float32 vectors (15 + the residual row)
    small = plan_basis(n, ncv=24, min_ncv=5, op_device="cpu", available={"cpu": 20 * GB})
    assert small.dtype == torch.float32 and small.ncv == int(0.4 * 20 * GB // (4 * n)) - 1
    assert (small.ncv + 1) * n * 4 <= 0.4 * 20 * GB < (small.ncv + 2) * n * 4
    # what is held beside the basis (the pairs) comes off its share
    held = plan_basis(
        n, ncv=24, min_ncv=5, op_device="cpu", available={"cpu": 20 * GB}, held=4 * GB
    )
    assert held.ncv < small.ncv


def test_plan_puts_the_basis_on_the_host_when_the_gpu_is_short():
    n = 124_000_000
    plan = plan_basis(
        n, ncv=24, min_ncv=5, op_device="cuda:0", available={"cuda:0": 4 * GB, "cpu": 100 * GB}
    )
    assert plan.device == torch.device("cpu") and plan.dtype == torch.float64 and plan.ncv == 24
    # float32 on the GPU is preferred to float64 on the host
    plan = plan_basis(
        n, ncv=24, min_ncv=5, op_device="cuda:0", available={"cuda:0": 40 * GB, "cpu": 100 * GB}
    )
    assert plan.device == torch.device("cuda:0") and plan.dtype == torch.float32


def test_plan_overrides_and_clear_errors():
    n = 124_000_000
    forced = plan_basis(
        n, ncv=24, min_ncv=5, op_device="cpu", dtype="float32", available={"cpu": 200 * GB}
    )
    assert forced.dtype == torch.float32 and forced.fallback == "chosen by the caller"
    with pytest.raises(MemoryError, match=r"does not fit.*float32.*available on cpu"):
        plan_basis(n, ncv=24, min_ncv=5, op_device="cpu", available={"cpu": 2 * GB})
    with pytest.raises(MemoryError, match="smaller ncv"):  # a given ncv is not silently lowered
        plan_basis(
            n, ncv=24, min_ncv=5, op_device="cpu", ncv_given=True, available={"cpu": 20 * GB}
        )
    with pytest.raises(ValueError, match="basis_dtype must be"):
        plan_basis(10, ncv=5, min_ncv=3, op_device="cpu", dtype="float16")
    with pytest.raises(ValueError, match="basis_device must be"):
        plan_basis(10, ncv=5, min_ncv=3, op_device="cpu", device="nowhere")


def test_trace_block_from_the_memory_available():
    # 11.2M parameters (ResNet-18) at 36 bytes per probe and parameter, 1 GiB cap: 2 probes
    assert plan_block(11_181_642, block=None, max_block=16, device="cpu", available=20 * GB) == 2
    assert plan_block(100_000, block=None, max_block=16, device="cpu", available=20 * GB) == 16
    assert plan_block(124_000_000, block=None, max_block=16, device="cpu", available=2 * GB) == 1
    assert plan_block(124_000_000, block=7, max_block=16, device="cpu", available=2 * GB) == 7


# -- the analyses under little memory -----------------------------------------------------------
def short_of_memory(monkeypatch, free: int) -> None:
    monkeypatch.setattr(memory, "available_bytes", lambda device: free)


@pytest.mark.parametrize("which", ["largest", "both"])
def test_float32_basis_pairs_within_their_bounds_on_a_float64_model(monkeypatch, which):
    case = BY_ID["mlp-tanh-mse-f64-batches-eval"]
    model, loss_fn, data = case.make()
    H = case_reference(case.id)
    lam = torch.linalg.eigvalsh(H).numpy()[::-1]
    n = H.shape[0]
    expected = lam[:3] if which == "largest" else np.concatenate([lam[:3], lam[-3:]])
    # float64 would need (ncv + 1) * n * 8 bytes; leave room for float32 only
    short_of_memory(monkeypatch, int((25 * n * 8 + 6 * n * 8) / memory.BASIS_SHARE * 0.6))
    before = ModelSnapshot.take(model)
    op = ld.hessian(model, loss_fn, data)
    for tol in (1e-6, 1e-10, 1e-13):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = ld.eigenpairs(op, k=3, which=which, tol=tol, progress=False)
        assert res.basis_dtype == "float32" and res.basis_device == "cpu"
        hnorm = float(np.abs(lam).max())
        err = np.abs(res.eigenvalues - expected)
        # every pair within its own error bound (a rounding margin of the dense reference)
        assert np.all(err <= res.error_bounds + 1e-13 * hnorm), (tol, err, res.error_bounds)
        # and a pair flagged converged is converged at this tol
        scale = np.maximum(np.abs(res.eigenvalues), 1e-3 * hnorm)
        assert np.all(~res.converged | (err <= tol * scale + 1e-13 * hnorm)), (tol, err)
        # the vectors are float64 and orthonormal, the residuals true
        V = res.eigenvectors
        assert V.dtype == torch.float64
        np.testing.assert_allclose((V.T @ V).numpy(), np.eye(V.shape[1]), atol=1e-12)
        true_res = (H @ V - V * torch.as_tensor(res.eigenvalues)).norm(dim=0).numpy()
        np.testing.assert_allclose(res.residual_norms, true_res, rtol=1e-6, atol=1e-12 * hnorm)
    before.assert_same(model, "eigenpairs with a float32 basis")


def test_float32_basis_does_not_flag_a_cluster_it_cannot_resolve():
    # eigenvalues 5 and 5 - 1e-6: a float32 basis gives residuals ~1e-7, so r^2/gap ~1e-8 cannot
    # certify tol=1e-12; the pairs are accurate but must not be flagged converged
    gen = torch.Generator().manual_seed(4)
    d = torch.tensor(
        [5.0, 5.0 - 1e-6, 3.0, 2.0] + np.linspace(0, 0.5, 40).tolist(), dtype=torch.float64
    )
    Q = torch.linalg.qr(torch.randn(len(d), len(d), dtype=torch.float64, generator=gen))[0]
    A = Q @ torch.diag(d) @ Q.T
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        f32 = ld.eigenpairs(A, k=3, tol=1e-12, basis_dtype="float32", progress=False)
        f64 = ld.eigenpairs(A, k=3, tol=1e-12, basis_dtype="float64", progress=False)
    err = np.abs(f32.eigenvalues - d[:3].numpy())
    assert np.all(err <= f32.error_bounds + 1e-14)
    scale = np.maximum(np.abs(f32.eigenvalues), 1e-3 * 5.0)
    assert np.all(~f32.converged | (f32.error_bounds <= 1e-12 * scale))
    assert not f32.converged[:2].any()  # the cluster: not certified
    assert f64.all_converged and f64.basis_dtype == "float64"


def test_basis_on_the_host_and_forced_choices_agree_with_the_default():
    case = BY_ID["cnn2d-loader-eval"]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data)
    default = ld.eigenpairs(op, k=3, tol=1e-4, progress=False)
    forced = ld.eigenpairs(
        op, k=3, tol=1e-4, basis_dtype="float32", basis_device="cpu", ncv=8, progress=False
    )
    assert (default.basis_dtype, forced.basis_dtype, forced.ncv) == ("float64", "float32", 8)
    lam = torch.linalg.eigvalsh(case_reference(case.id).double()).numpy()[::-1][:3]
    for res in (default, forced):
        assert res.all_converged
        np.testing.assert_allclose(res.eigenvalues, lam, rtol=1e-3)
    assert "Lanczos basis: 8 x float32 on cpu" in str(forced)
    assert (
        forced.to_dict()["basis_dtype"] == "float32"
        and forced.to_dict()["memory_estimate_bytes"] > 0
    )


def test_nothing_fits_is_refused_before_any_work(monkeypatch):
    case = BY_ID["mlp-tanh-mse-batches-eval"]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data)
    before = ModelSnapshot.take(model)
    short_of_memory(monkeypatch, 100)
    done = op.num_matvecs
    with pytest.raises(MemoryError, match="Lanczos basis does not fit"):
        ld.eigenpairs(op, k=3, progress=False)
    with pytest.raises(MemoryError, match="method='hutchinson'"):
        ld.trace(op, matvecs=30, progress=False)
    assert op.num_matvecs == done  # refused up front
    before.assert_same(model, "refused for memory")
    # Hutchinson holds one block: it runs
    assert ld.trace(op, matvecs=6, method="hutchinson", progress=False).block == 1


def test_trace_is_the_same_whatever_the_block(monkeypatch):
    case = BY_ID["mlp-tanh-mse-f64-batches-eval"]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data)
    wide = ld.trace(op, matvecs=30, progress=False)
    assert wide.block == op.max_block
    short_of_memory(monkeypatch, 20_000)  # the sketch (3.5 kB) fits, a second probe does not
    narrow = ld.trace(op, matvecs=30, progress=False)
    assert narrow.block == 1 and "1 probes per block" in str(narrow)
    # the probes are drawn from one stream in order, whatever the block: the same estimate
    assert narrow.estimate == pytest.approx(wide.estimate, rel=1e-12)
    assert narrow.standard_error == pytest.approx(wide.standard_error, rel=1e-9)
    exact = float(torch.trace(case_reference(case.id)))
    assert abs(narrow.estimate - exact) <= 3 * narrow.standard_error


def test_a_long_or_shrunk_call_states_its_plan(monkeypatch):
    case = BY_ID["mlp-tanh-mse-f64-batches-eval"]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data)
    n = op.num_params
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    ld.eigenpairs(op, k=2, tol=1e-4, progress=lambda done, total: None)
    assert err.getvalue() == ""  # short and at float64: nothing to say
    short_of_memory(monkeypatch, int((25 * n * 8 + 2 * n * 8) / memory.BASIS_SHARE * 0.6))
    ld.eigenpairs(op, k=2, tol=1e-4, progress=lambda done, total: None)
    line = err.getvalue().strip()
    assert (
        line.count("\n") == 0
        and "Lanczos basis 24 x float32 on cpu" in line
        and "s per product" in line
    )
    err.truncate(0)
    err.seek(0)
    ld.eigenpairs(op, k=2, tol=1e-4, progress=None)  # no progress wanted: no notice
    assert err.getvalue() == ""
    monkeypatch.setattr(memory, "NOTICE_SECONDS", 0.0)
    ld.trace(op, matvecs=9, progress=lambda done, total: None)
    assert "trace:" in err.getvalue() and "probes per block" in err.getvalue()


def test_slq_that_cannot_fit_is_refused_up_front(monkeypatch):
    case = BY_ID["mlp-tanh-mse-batches-eval"]
    model, loss_fn, data = case.make()
    op = ld.hessian(model, loss_fn, data)
    done = op.num_matvecs
    # 2 probes x 20 steps x 44 parameters: 14 kB in float64, 7 kB in float32; allow 5 kB
    short_of_memory(monkeypatch, int(5_000 / memory.BASIS_SHARE))
    with pytest.raises(MemoryError, match=r"at most 14 lanczos_steps"):
        ld.spectral_density(op, num_probes=2, lanczos_steps=20, progress=False)
    assert op.num_matvecs == done
    # 8 steps fit in float32 only (2.8 kB; 5.6 kB in float64): the same density as in float64
    small = ld.spectral_density(op, num_probes=2, lanczos_steps=8, progress=False)
    monkeypatch.undo()
    roomy = ld.spectral_density(op, num_probes=2, lanczos_steps=8, progress=False)
    assert small.lanczos_steps == 8
    for a, b in zip(small.nodes, roomy.nodes):
        np.testing.assert_allclose(
            np.sort(np.asarray(a)), np.sort(np.asarray(b)), rtol=1e-4, atol=1e-6
        )
