"""Everything on a GPU: the same ground truth as the CPU tests, with the model on CUDA.

Skipped where PyTorch sees no GPU (CI); run on a CUDA machine with ``pytest tests/test_cuda.py``.
"""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch.nn import functional as F

import lossdoctor as ld
from cases import BY_ID, CASE_IDS, ModelSnapshot, case_reference, mlp_tanh_mse
from lossdoctor.cli import main
from lossdoctor.zoo.lecture import lecture_saddle

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CUDA = torch.device("cuda")


def on_cuda(data):
    """The same data, already on the GPU (a user who moved it there themselves)."""
    if isinstance(data, tuple):
        return tuple(t.to(CUDA) for t in data)
    return [(x.to(CUDA), y.to(CUDA)) for x, y in data]


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double().cpu(), expected.double().cpu()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-12))


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_products_on_cuda_match_reference_hessian(case_id):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    model = model.to(CUDA)
    H = case_reference(case_id)  # iterates a shuffling DataLoader: before the snapshot of the RNG
    before = ModelSnapshot.take(model)
    op = ld.hessian(model, loss_fn, data, mode=case.mode)  # CPU data: moved batch by batch
    assert op.device.type == "cuda"
    V = torch.randn(H.shape[0], 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # full float32 (no TF32) on the GPU: same accuracy as on the CPU
    tol = 1e-10 if case.float64 else 2e-5
    assert relative_error(op @ V, H @ V) <= tol
    assert relative_error(op @ V.to(CUDA), H @ V) <= tol
    before.assert_same(model, f"{case_id} on CUDA")


@pytest.mark.parametrize("data_kind", ["pair", "batches"])
def test_data_already_on_cuda(data_kind):
    model, loss_fn, data = mlp_tanh_mse(data_kind)
    H = ld.dense_hessian(model, loss_fn, data, dtype=torch.float64)
    op = ld.hessian(model.to(CUDA), loss_fn, on_cuda(data))
    v = torch.randn(op.num_params, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    assert relative_error(op @ v, H @ v) <= 2e-5


@pytest.mark.parametrize("cache", [False, True, "all but one"])
@pytest.mark.parametrize(
    "case_id", ["cnn2d-loader-eval", "transformer-tied-batches-eval", "lstm-pair-eval"]
)
def test_micro_batches_on_cuda(case_id, cache):
    case = BY_ID[case_id]
    model, loss_fn, data = case.make()
    H = case_reference(case_id)
    model = model.to(CUDA)
    V = torch.randn(H.shape[0], 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    if cache == "all but one":  # a byte budget one batch short: kept and recomputed graphs mix
        whole = ld.hessian(model, loss_fn, data, micro_batch_size=3, cache=True)
        whole @ V[:, 0]
        cache = whole.cached_bytes - 1
    op = ld.hessian(model, loss_fn, data, micro_batch_size=3, cache=cache)
    assert relative_error(op @ V, H @ V) <= 2e-5
    assert relative_error(op @ V, H @ V) <= 2e-5  # again: from the kept graphs, where kept
    if not isinstance(cache, bool):
        assert op.cached_batches > 0 and not op.cached


def test_eigenpairs_trace_density_and_cache_on_cuda():
    model, loss_fn, data = mlp_tanh_mse("batches")
    eigenvalues = torch.linalg.eigvalsh(ld.dense_hessian(model, loss_fn, data, dtype=torch.float64))
    model = model.to(CUDA)
    before = ModelSnapshot.take(model)
    for cache in (False, True):
        op = ld.hessian(model, loss_fn, data, cache=cache)
        eig = ld.eigenpairs(op, k=3, which="both", tol=1e-6)
        assert all(eig.converged)
        got = torch.tensor(sorted(eig.eigenvalues), dtype=torch.float64)
        want = torch.cat([eigenvalues[:3], eigenvalues[-3:]])
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(eigenvalues.abs().max()))
        assert eig.eigenvectors.shape[0] == op.num_params
        exact_trace = float(eigenvalues.sum())
        tr = ld.trace(op, matvecs=3 * op.num_params, method="hutch++")
        assert tr.estimate == pytest.approx(exact_trace, rel=1e-4, abs=1e-4)
        density = ld.spectral_density(op, num_probes=2, lanczos_steps=20)
        assert 0.0 <= density.negative_fraction <= 1.0
    before.assert_same(model, "spectral analyses on CUDA")


def test_model_on_cpu_with_data_on_cuda_is_refused():
    model, loss_fn, data = mlp_tanh_mse("pair")
    with pytest.raises(ValueError, match="on cuda"):
        ld.hessian(model, loss_fn, on_cuda(data)) @ torch.zeros(
            sum(p.numel() for p in model.parameters())
        )


def test_tf32_setting_of_the_user_is_restored():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    try:
        case = BY_ID["cnn2d-loader-eval"]
        model, loss_fn, data = case.make()
        op = ld.hessian(model.to(CUDA), loss_fn, data)
        H = case_reference(case.id)
        v = torch.randn(H.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(5))
        assert relative_error(op @ v, H @ v) <= 2e-5
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_critical_point_and_escape_on_cuda():
    p = lecture_saddle()
    model = p.model.to(CUDA)
    data = on_cuda(p.train_data)
    point = ld.classify_critical_point(model, p.loss_fn, data)
    assert point.kind == "saddle_point" and point.min_eigenvalue == pytest.approx(-2.0, abs=1e-5)
    result = ld.escape_saddle(model, p.loss_fn, data, critical=point, apply=True)
    assert result.applied and float((model.w1 * model.w2).detach().cpu()) == pytest.approx(
        1.0, abs=1e-3
    )


def test_lr_range_test_on_cuda_leaves_model_and_optimizer_unchanged():
    model, loss_fn, data = mlp_tanh_mse("batches")
    model = model.to(CUDA)
    optimizer = torch.optim.SGD(ld.weight_decay_groups(model, 1e-4), lr=1e-3, momentum=0.9)
    before = ModelSnapshot.take(model)
    result = ld.lr_range_test(model, loss_fn, data, optimizer, start_lr=1e-4, end_lr=10.0, steps=30)
    assert 1e-4 <= result.suggested_lr <= 10.0 and len(result.lrs) > 5
    before.assert_same(model, "lr_range_test on CUDA")
    assert optimizer.param_groups[0]["lr"] == 1e-3 and not optimizer.state


def test_cli_spectrum_runs_on_the_gpu(tmp_path):
    result = CliRunner().invoke(
        main,
        [
            "spectrum",
            "--problem",
            "lecture-saddle",
            "--k",
            "1",
            "--trace-matvecs",
            "4",
            "--no-density",
            "--device",
            "cuda",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["device"].startswith("cuda")
    assert sorted(payload["eigenpairs"]["eigenvalues"]) == pytest.approx([-2.0, 2.0], abs=1e-5)


def test_stall_doctor_on_cuda_gives_the_cpu_verdict_and_bound():
    from test_stall import gd, least_squares, start_on_top_eigenvector

    model, data, lam, _ = least_squares()
    start_on_top_eigenvector(model, data)
    model = model.to(CUDA)
    data = on_cuda(data)
    losses, opt = gd(model, F.mse_loss, data, 1.998 / lam, 120)
    before = ModelSnapshot.take(model)
    d = ld.diagnose(model, F.mse_loss, data, history=losses, optimizer=opt)
    before.assert_same(model, "diagnose on CUDA")
    assert d.cause == "oscillation"
    assert d.sharpness == pytest.approx(lam, rel=1e-5)
    assert d.max_stable_lr == pytest.approx(2 / lam, rel=1e-5)
    json.dumps(d.to_dict())


def test_monitor_on_cuda_does_not_change_training_and_diagnoses_the_bounce():
    def run(with_monitor: bool):
        gen = torch.Generator().manual_seed(0)
        x, y = torch.randn(96, 6, generator=gen), torch.randint(0, 3, (96,), generator=gen)
        batches = [(x[i : i + 32].to(CUDA), y[i : i + 32].to(CUDA)) for i in range(0, 96, 32)]
        torch.manual_seed(0)
        model = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.Dropout(0.3), torch.nn.Tanh(), torch.nn.Linear(16, 3)
        ).to(CUDA)
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
        monitor = (
            ld.Monitor(model, F.cross_entropy, batches, sharpness_every=5, window=8)
            if with_monitor
            else None
        )
        torch.manual_seed(123)
        torch.cuda.manual_seed(
            123
        )  # dropout on the GPU draws from the CUDA generator: the monitor must not
        for step in range(40):
            xb, yb = batches[step % 3]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            if monitor is not None:
                monitor.step(loss, opt)
        return model, monitor, torch.cuda.get_rng_state()

    plain, _, plain_rng = run(False)
    watched, monitor, rng = run(True)
    for a, b in zip(plain.parameters(), watched.parameters()):
        assert torch.equal(a, b)
    assert torch.equal(plain_rng, rng)
    assert len(monitor.record.sharpness) == 8 and all(s > 0 for _, s in monitor.record.sharpness)
