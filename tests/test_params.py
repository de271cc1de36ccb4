"""``params=``: a subset of the parameters (tensors, names, glob patterns, modules) on every
analysis, checked against the dense float64 Hessian of the whole model (autograd, no lossdoctor
code): the operator on a subset is the principal submatrix on those coordinates, the per-module
blocks are its diagonal blocks, and ``requires_grad`` is exactly as the user set it before,
during and after every call. Also ``escape_saddle(reduction=)`` and ``ignore_index`` token
weighting."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from lossdoctor.analysis.landscape import random_direction
from lossdoctor.analysis.layers import block_operator, parameter_blocks
from lossdoctor.cli import main

DT = torch.float64


def mlp(seed: int = 0) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2)
    ).to(DT)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(14, 3, generator=g, dtype=DT)
    return model, (x, torch.randint(0, 2, (14,), generator=g))


def full_hessian(
    model: nn.Module, loss_fn, batches: list
) -> tuple[torch.Tensor, list[str], list[int]]:
    """The dense Hessian of the size-weighted mean of the batch losses, over EVERY parameter
    (frozen ones included), by torch.autograd.functional on a functional call: no lossdoctor
    code. Returns it with the names and the offsets of each parameter's coordinates."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    shapes, numels = [p.shape for p in params], [p.numel() for p in params]
    total = sum(int(y.shape[0]) for _, y in batches)

    def f(theta):
        values = {
            n: t.reshape(s)
            for n, t, s in zip(names, torch.split(theta, numels), shapes, strict=True)
        }
        out = theta.new_zeros(())
        for x, y in batches:
            out = out + float(y.shape[0]) * loss_fn(
                torch.func.functional_call(model, values, (x,)), y
            )
        return out / total

    theta = torch.cat([p.reshape(-1) for p in params])
    H = torch.autograd.functional.hessian(f, theta)
    offsets = list(np.cumsum([0, *numels]))
    return 0.5 * (H + H.T), names, offsets


def coordinates(names: list[str], offsets: list[int], chosen: list[str]) -> list[int]:
    out = []
    for n in chosen:
        i = names.index(n)
        out += list(range(offsets[i], offsets[i + 1]))
    return out


def dense_of(op) -> torch.Tensor:
    return op @ torch.eye(op.num_params, dtype=DT)


def flags(model: nn.Module) -> list[bool]:
    return [p.requires_grad for p in model.parameters()]


# -- the operator ---------------------------------------------------------------------------------------
def test_every_form_of_params_gives_the_principal_submatrix():
    model, data = mlp()
    H, names, offsets = full_hessian(model, F.cross_entropy, [data])
    layer2 = ["2.weight", "2.bias"]
    idx = coordinates(names, offsets, layer2)
    forms = [
        "2.*",
        "2",
        layer2,
        model[2],
        [model[2].weight, model[2].bias],
        list(model[2].parameters()),
        model[2].named_parameters(),
        [model[2].bias, "2.weight"],
    ]  # any order: the model's order wins
    for form in forms:
        op = ld.hessian(model, F.cross_entropy, data, params=form)
        assert op.names == layer2, form
        assert torch.allclose(dense_of(op), H[idx][:, idx], rtol=0, atol=1e-12), form
    # Non-contiguous coordinates, and a glob over several modules.
    op = ld.hessian(model, F.cross_entropy, data, params="*.bias")
    biases = ["0.bias", "2.bias", "4.bias"]
    idx = coordinates(names, offsets, biases)
    assert op.names == biases and op.subset
    assert torch.allclose(dense_of(op), H[idx][:, idx], rtol=0, atol=1e-12)
    # params=None: every trainable parameter, the whole Hessian.
    op = ld.hessian(model, F.cross_entropy, data)
    assert not op.subset and torch.allclose(dense_of(op), H, rtol=0, atol=1e-12)
    assert ld.dense_hessian(model, F.cross_entropy, data, params=["4"]).shape == (10, 10)
    idx = coordinates(names, offsets, ["4.weight", "4.bias"])
    assert torch.allclose(
        ld.dense_hessian(model, F.cross_entropy, data, params=["4"]), H[idx][:, idx], atol=1e-12
    )


def test_restrict_is_the_same_submatrix_and_the_blocks_are_the_dense_diagonal_blocks():
    model, data = mlp(1)
    H, names, offsets = full_hessian(model, F.cross_entropy, [data])
    op = ld.hessian(model, F.cross_entropy, data)
    blocks = parameter_blocks(model, op.names)
    assert [b.name for b in blocks] == ["0", "2", "4"]
    for b in blocks:
        sub = block_operator(op, b)
        assert sub.names == list(b.parameter_names)
        assert torch.allclose(
            dense_of(sub), H[b.start : b.stop, b.start : b.stop], rtol=0, atol=1e-12
        )
    # A restriction of a restriction, and one outside the operator's parameters.
    part = op.restrict(["2", "4"]).restrict("4.bias")
    i = names.index("4.bias")
    assert torch.allclose(
        dense_of(part), H[offsets[i] : offsets[i + 1], offsets[i] : offsets[i + 1]], atol=1e-12
    )
    with pytest.raises(ValueError, match="not among this operator's parameters"):
        ld.hessian(model, F.cross_entropy, data, params="4").restrict("0.weight")


def test_layer_curvature_on_a_subset_reads_the_dense_diagonal_blocks():
    model, data = mlp(2)
    H, names, offsets = full_hessian(model, F.cross_entropy, [data])
    table = ld.layer_curvature(
        model, F.cross_entropy, data, probes=2, lanczos_steps=30, params=["2.*", "4"]
    )
    assert [r.name for r in table.rows] == ["2", "4"] and table.num_params == 20 + 10
    for row, module in zip(table.rows, ("2", "4")):
        idx = coordinates(names, offsets, [f"{module}.weight", f"{module}.bias"])
        top = float(torch.linalg.eigvalsh(H[idx][:, idx])[-1])
        # Lanczos steps >= the block's size: the Krylov space is the whole block, the top exact.
        assert row.lambda_max == pytest.approx(top, rel=1e-8, abs=1e-10)
    assert table.matvecs > 0


def test_frozen_parameters_stay_frozen_and_out_of_a_module_selection():
    model, data = mlp(3)
    H, names, offsets = full_hessian(model, F.cross_entropy, [data])  # frozen ones included
    model[2].bias.requires_grad_(False)
    model[0].requires_grad_(False)
    before = flags(model)
    seen = []

    def watching(out, y):  # the flags as they are *during* the products
        seen.append(flags(model))
        return F.cross_entropy(out, y)

    op = ld.hessian(model, watching, data, params=[model[2], "4.weight"])
    assert op.names == ["2.weight", "4.weight"]  # the frozen 2.bias is left out of the module
    idx = coordinates(names, offsets, op.names)
    assert torch.allclose(dense_of(op), H[idx][:, idx], rtol=0, atol=1e-12)
    ld.eigenpairs(op, k=1, tol=1e-8)
    ld.classify_critical_point(model, watching, data, params="4.*", k=1)
    ld.sharpness(
        model,
        watching,
        data,
        params="4",
        method=["lambda_max", "epsilon"],
        subspace_dim=None,
        max_iter=2,
    )
    ld.layer_curvature(model, watching, data, params="2", probes=1, lanczos_steps=3)
    assert seen and all(s == before for s in seen)
    assert flags(model) == before
    for frozen in ("2.bias", model[2].bias, ["4.bias", "0.weight"]):
        with pytest.raises(ValueError, match="frozen"):
            ld.hessian(model, F.cross_entropy, data, params=frozen)
    with pytest.raises(ValueError, match="frozen"):
        ld.hessian(
            model, F.cross_entropy, data, params="0"
        )  # a module whose every parameter is frozen
    assert flags(model) == before


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ("3.weight", ValueError, "matches no parameter"),
        ("layer9.*", ValueError, "matches no parameter"),
        ([], ValueError, "empty"),
        (torch.zeros(4), ValueError, "not a parameter of this model"),
        (nn.Linear(4, 4), ValueError, "not a submodule"),
        (nn.ReLU(), ValueError, "not a submodule"),
        (3, TypeError, "params"),
        ([model_part := "2.weight", 3.0], TypeError, r"params\[1\]"),
    ],
)
def test_clear_errors(params, error, match):
    model, data = mlp()
    before = flags(model)
    with pytest.raises(error, match=match):
        ld.hessian(model, F.cross_entropy, data, params=params)
    assert flags(model) == before
    assert model_part == "2.weight"


def test_a_module_without_parameters_is_refused_by_name_and_by_object():
    model, data = mlp()
    with pytest.raises(ValueError, match="without parameters"):
        ld.hessian(model, F.cross_entropy, data, params="1")
    with pytest.raises(ValueError, match="has no parameters"):
        ld.hessian(model, F.cross_entropy, data, params=model[1])


def test_tied_parameters_are_selected_by_any_of_their_names_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.out = nn.Linear(3, 5, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, t):
            return self.out(torch.tanh(self.embed(t)))

    torch.manual_seed(0)
    model = Tied().to(DT)
    data = (torch.randint(0, 5, (8,)), torch.randint(0, 5, (8,)))
    a = ld.hessian(model, F.cross_entropy, data, params="out.weight")
    b = ld.hessian(model, F.cross_entropy, data, params="embed.weight")
    assert a.names == b.names == ["embed.weight"]
    assert torch.allclose(
        dense_of(a), dense_of(ld.hessian(model, F.cross_entropy, data)), atol=1e-12
    )


# -- the analyses ------------------------------------------------------------------------------------
def test_classify_and_sharpness_on_a_subset_read_the_submatrix():
    model, data = mlp(4)
    H, names, offsets = full_hessian(model, F.cross_entropy, [data])
    idx = coordinates(names, offsets, ["2.weight", "2.bias"])
    lam = torch.linalg.eigvalsh(H[idx][:, idx])
    for dense in (True, False):
        point = ld.classify_critical_point(
            model, F.cross_entropy, data, params="2", dense=dense, k=2, grad_tol=1e3, tol=1e-10
        )
        assert point.parameter_names == ("2.weight", "2.bias") and point.num_params == 20
        assert point.max_eigenvalue == pytest.approx(float(lam[-1]), rel=1e-8)
        assert point.min_eigenvalue == pytest.approx(
            float(lam[0]), abs=1e-8 * float(lam.abs().max())
        )
    s = ld.sharpness(model, F.cross_entropy, data, params=model[2], method="lambda_max", tol=1e-10)
    assert s.num_params == 20 and s.lambda_max == pytest.approx(float(lam[-1]), rel=1e-8)


def saddle_problem():
    """A tiny linear-tanh model at its zero-weight saddle: w = 0, v = 0 is critical with
    negative curvature along w·v."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.Tanh(), nn.Linear(2, 1, bias=False)).to(
        DT
    )
    with torch.no_grad():
        model[0].weight.zero_()
        model[2].weight.zero_()
    x = torch.randn(16, 2, dtype=DT)
    y = x[:, :1] * 0.8 + x[:, 1:] * 0.3
    return model, x, y


def test_escape_saddle_on_a_subset_moves_only_those_parameters():
    model, x, y = saddle_problem()
    model[0].weight.data.copy_(torch.tensor([[0.5, 0.2], [-0.3, 0.4]]))  # layer 0 fixed away from 0
    held = model[0].weight.detach().clone()
    before = flags(model)
    # Over the last layer alone the loss is a convex quadratic: no negative curvature, no escape.
    result = ld.escape_saddle(
        model, nn.MSELoss(), (x, y), params="2.weight", apply=True, dense=True
    )
    assert result.critical.parameter_names == ("2.weight",)
    assert not result.escaped and not result.applied and result.critical.min_eigenvalue > 0
    model2, x, y = saddle_problem()
    full = ld.escape_saddle(model2, nn.MSELoss(), (x, y), apply=True, dense=True)
    assert full.escaped and full.critical.num_params == 6
    # A given CriticalPoint of another subset is refused.
    model3, x, y = saddle_problem()
    point = ld.classify_critical_point(model3, nn.MSELoss(), (x, y), dense=True)
    with pytest.raises(ValueError, match="same params"):
        ld.escape_saddle(model3, nn.MSELoss(), (x, y), critical=point, params="0")
    assert torch.equal(model[0].weight, held) and flags(model) == before


def test_escape_saddle_takes_reduction_and_a_summing_function_matches_the_module():
    model, x, y = saddle_problem()
    data = [
        (x[:7], y[:7]),
        (x[7:], y[7:]),
    ]  # unequal batches: a sum taken for a mean would be off by 7 and 9
    summing = lambda o, t: F.mse_loss(o, t, reduction="sum")  # noqa: E731
    with pytest.raises(ValueError, match="reduction='sum'"):
        ld.escape_saddle(model, summing, data, dense=True)
    a = ld.escape_saddle(model, summing, data, reduction="sum", dense=True)
    b = ld.escape_saddle(model, nn.MSELoss(reduction="sum"), data, dense=True)
    assert a.escaped and b.escaped
    assert a.eigenvalue == pytest.approx(b.eigenvalue, rel=1e-12)
    assert torch.allclose(a.direction, b.direction, atol=1e-10)
    assert a.step == pytest.approx(b.step, rel=1e-9) and a.loss_after == pytest.approx(
        b.loss_after, rel=1e-12
    )
    # The line search measured the mean per-sample loss the Hessian is of.
    with torch.no_grad():
        per_sample = float(F.mse_loss(model(x), y, reduction="sum")) / len(x)
    assert a.loss_before == pytest.approx(per_sample, rel=1e-12)


def test_landscape_and_interpolate_move_only_the_selected_parameters():
    model, data = mlp(5)
    other, _ = mlp(6)
    dirs = random_direction(model, params="4", seed=0)  # landscape's first direction (seed + 0)
    assert [tuple(d.shape) for d in dirs] == [(2, 4), (2,)] and not dirs[
        1
    ].any()  # biases: ignore_bias_bn
    land = ld.landscape(model, F.cross_entropy, data, params="4", steps=3, span=0.5)
    # At coordinate a the model is theta + a d on layer 4 only: recompute one point by hand.
    probe = mlp(5)[0]
    with torch.no_grad():
        probe[4].weight.add_(dirs[0], alpha=0.5)
        probe[4].bias.add_(dirs[1], alpha=0.5)
    with torch.no_grad():
        expected = float(F.cross_entropy(probe(data[0]), data[1]))
    assert land.train_loss[-1] == pytest.approx(expected, rel=1e-12)
    curve = ld.interpolate(model, other, F.cross_entropy, data, alphas=[0.0, 1.0], params="0")
    mixed = mlp(5)[0]
    with torch.no_grad():
        mixed[0].weight.copy_(other[0].weight)
        mixed[0].bias.copy_(other[0].bias)
    with torch.no_grad():
        expected = float(F.cross_entropy(mixed(data[0]), data[1]))
        dist = float(
            torch.sqrt(
                ((model[0].weight - other[0].weight) ** 2).sum()
                + ((model[0].bias - other[0].bias) ** 2).sum()
            )
        )
    assert curve.train_loss[1] == pytest.approx(expected, rel=1e-12)
    assert curve.distance == pytest.approx(dist, rel=1e-12)


# -- ignore_index: what lossdoctor computes ----------------------------------------------------------
def test_ignore_index_token_mean_is_used_as_written_and_not_verified():
    """A token cross-entropy with ignore_index averages over the counted tokens of each batch:
    neither a mean nor a sum of per-sample losses. lossdoctor uses it as declared (a batch mean)
    and weights each batch by its number of samples (sequences), so the operator is the Hessian
    of sum_b n_b * loss_b / sum_b n_b with loss_b exactly the user's token mean: checked against
    autograd on that expression, and op.reduction_verified is False."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).to(DT)
    x = torch.randn(7, 4, 5, generator=g, dtype=DT)
    tokens = torch.randint(0, 3, (7, 4), generator=g)
    tokens[
        0, :3
    ] = -100  # sequence 0 counts one token, the others four (batch 0: 13 tokens, batch 1: 12)
    tokens[5, 1] = -100
    masked = lambda o, t: F.cross_entropy(o.flatten(0, 1), t.flatten(), ignore_index=-100)  # noqa: E731
    batches = [(x[:4], tokens[:4]), (x[4:], tokens[4:])]
    op = ld.hessian(model, masked, batches)
    assert op.reduction == "mean" and not op.reduction_verified
    H, _, _ = full_hessian(model, masked, batches)
    assert torch.allclose(dense_of(op), H, rtol=0, atol=1e-12)
    # One batch: exactly the Hessian of the token mean the user wrote (every counted token 1/24).
    one = ld.hessian(model, masked, (x, tokens))
    H1, _, _ = full_hessian(model, masked, [(x, tokens)])
    assert torch.allclose(dense_of(one), H1, rtol=0, atol=1e-12)
    # Which is not the mean over all counted tokens when the batches count different numbers.
    H_tokens, _, _ = full_hessian(
        model, lambda o, t: masked(o, t) * (t != -100).sum() * len(x) / 24 / len(t), batches
    )
    assert not torch.allclose(H, H_tokens, atol=1e-6)


# -- the CLI ---------------------------------------------------------------------------------------------
PROBLEM = """
import torch
from torch import nn
from torch.nn import functional as F


def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 3, generator=g, dtype=torch.float64)
    return model, F.cross_entropy, [(x, torch.randint(0, 2, (12,), generator=g))]
"""


@pytest.fixture
def spec(tmp_path):
    path = tmp_path / "small_problem.py"
    path.write_text(PROBLEM)
    return f"{path}:small"


def test_cli_params_on_spectrum_and_critical(spec, tmp_path):
    p = ld.load_problem(spec)
    H = ld.dense_hessian(p.model, p.loss_fn, p.train_data, params="2.*")
    lam = torch.linalg.eigvalsh(H)
    before = flags(p.model)
    runner = CliRunner()
    result = runner.invoke(
        main,
        [
            "spectrum",
            "--problem",
            spec,
            "--params",
            "2.*",
            "--k",
            "1",
            "--which",
            "both",
            "--no-density",
            "--trace-matvecs",
            "0",
            "--json",
            "--plot",
            str(tmp_path / "d.png"),
        ],
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["num_params"] == 10 and out["parameters"] == ["2.weight", "2.bias"]
    assert out["eigenpairs"]["eigenvalues"] == pytest.approx(
        [float(lam[-1]), float(lam[0])], abs=1e-7
    )
    result = runner.invoke(
        main,
        ["critical", "--problem", spec, "--params", "2.weight", "--params", "2.bias", "--json"],
    )
    assert result.exit_code == 0, result.output
    point = json.loads(result.stdout)["critical"]
    assert point["num_params"] == 10 and point["max_eigenvalue"] == pytest.approx(
        float(lam[-1]), rel=1e-9
    )
    bad = runner.invoke(main, ["critical", "--problem", spec, "--params", "layer9.*"])
    assert bad.exit_code == 2 and "--params" in bad.output and "Traceback" not in bad.output
    assert flags(p.model) == before


SADDLE_SUM = """
import torch
from torch import nn
from torch.nn import functional as F


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.zeros((), dtype=torch.float64))
        self.w2 = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        return self.w1 * self.w2 * x


def summing_saddle():
    x = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
    return Product(), (lambda o, t: F.mse_loss(o, t, reduction="sum")), (x, torch.ones(3, 1, dtype=torch.float64))
"""


def test_cli_critical_escape_with_reduction_sum_and_params(tmp_path):
    """``critical --escape --reduction sum`` reaches the escape step with the same reduction (it
    used to fail there), and ``--params`` restricts the escape to the parameters named."""
    path = tmp_path / "saddle_sum.py"
    path.write_text(SADDLE_SUM)
    spec = f"{path}:summing_saddle"
    runner = CliRunner()
    args = ["critical", "--problem", spec, "--escape", "--reduction", "sum", "--dense", "--json"]
    result = runner.invoke(main, [*args, "--out", str(tmp_path / "escaped.pt")])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    # L = mean over samples of (1 - w1 w2 x)^2: at 0 the Hessian is [[0, -c], [-c, 0]], c = 2 mean(x).
    c = 2 * (1.0 + 2.0 + 0.5) / 3
    assert out["critical"]["kind"] == "saddle_point"
    assert out["critical"]["min_eigenvalue"] == pytest.approx(-c, rel=1e-12)
    assert out["escape"]["escaped"] and out["escaped_checkpoint"]
    state = torch.load(tmp_path / "escaped.pt", weights_only=True)
    assert float(state["w1"]) != 0.0 and float(state["w2"]) != 0.0
    # Over w2 alone the loss is convex (w1 = 0: L is constant in w2): no negative curvature.
    result = runner.invoke(
        main, [*args, "--params", "w2", "--out", str(tmp_path / "escaped-w2.pt")]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["critical"]["num_params"] == 1 and out["critical"]["parameter_names"] == ["w2"]
    assert not out["escape"]["escaped"] and out["escaped_checkpoint"] is None
