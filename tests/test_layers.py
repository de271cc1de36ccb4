"""The per-layer curvature table against dense float64 block Hessians, the blocks of tied and
shared parameters, the heterogeneity measure, and the model left untouched."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import lossdoctor as ld
from lossdoctor.analysis.layers import heterogeneity, js_distance, parameter_blocks
from lossdoctor.curvature import dense_hessian


def mlp_case(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)
    ).double()
    gen = torch.Generator().manual_seed(seed)
    data = (
        torch.randn(40, 4, generator=gen, dtype=torch.float64),
        torch.randint(0, 3, (40,), generator=gen),
    )
    return model, data


def test_block_numbers_match_the_dense_block_hessian():
    model, data = mlp_case()
    H = dense_hessian(model, F.cross_entropy, data).to(torch.float64)
    # Lanczos steps >= every block's size: the Krylov space is the whole block, the numbers exact.
    table = ld.layer_curvature(model, F.cross_entropy, data, probes=3, lanczos_steps=40)
    blocks = parameter_blocks(model)
    assert [r.name for r in table.rows] == ["0", "2", "4"] == [b.name for b in blocks]
    for row, b in zip(table.rows, blocks):
        Hb = H[b.start : b.stop, b.start : b.stop]
        top = float(torch.linalg.eigvalsh(Hb)[-1])
        assert row.numel == b.numel
        assert row.lambda_max == pytest.approx(top, rel=1e-8, abs=1e-10)
        assert row.lambda_residual < 1e-6 * max(top, 1e-12)
        # Hutchinson is unbiased, not exact: inside 3 of its standard errors.
        assert abs(row.trace - float(torch.trace(Hb))) <= 3 * row.trace_se + 1e-9


def test_few_lanczos_steps_give_a_lower_bound_within_the_residual():
    model, data = mlp_case(1)
    H = dense_hessian(model, F.cross_entropy, data).to(torch.float64)
    table = ld.layer_curvature(model, F.cross_entropy, data, probes=1, lanczos_steps=4)
    for row, b in zip(table.rows, parameter_blocks(model)):
        eig = torch.linalg.eigvalsh(H[b.start : b.stop, b.start : b.stop])
        assert row.lambda_max <= float(eig[-1]) + 1e-10
        # some eigenvalue lies within the residual of the Ritz value
        assert float((eig - row.lambda_max).abs().min()) <= row.lambda_residual + 1e-10


def test_lr_scaled_block_sharpness_and_the_unstable_block():
    model, data = mlp_case()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    table = ld.layer_curvature(
        model, F.cross_entropy, data, optimizer=opt, probes=2, lanczos_steps=40
    )
    for row in table.rows:
        assert row.lr_sharpness == pytest.approx(row.lambda_max, rel=1e-12)
    sharpest = table.sharpest()
    lr = 2.5 / sharpest.lambda_max  # past 2 only for the sharpest block
    table = ld.layer_curvature(model, F.cross_entropy, data, lr=lr, probes=2, lanczos_steps=40)
    unstable = table.unstable()
    assert unstable and unstable[0].name == sharpest.name
    assert "above the limit" in str(table)
    json.dumps(table.to_dict())


@pytest.mark.parametrize(
    "summed",
    [lambda o, t: F.cross_entropy(o, t, reduction="sum"), nn.CrossEntropyLoss(reduction="sum")],
    ids=["function", "module"],
)
def test_a_loss_that_sums_its_batch_is_measured_as_the_step_takes_it(summed):
    # SGD at lr / B on a batch sum takes the steps of SGD at lr on the batch mean, so the table's
    # lr-scaled sharpness and step sizes must agree. A summing function was refused with advice
    # to pass a reduction= this function did not take; a module's sum was read as a mean.
    model, data = mlp_case()
    n = len(data[1])
    mean = ld.layer_curvature(model, F.cross_entropy, data, lr=1.0, lanczos_steps=40)
    total = ld.layer_curvature(model, summed, data, lr=1.0 / n, lanczos_steps=40)
    for a, b in zip(mean.rows, total.rows):
        assert b.lambda_max == pytest.approx(n * a.lambda_max, rel=1e-9)
        assert b.lr_sharpness == pytest.approx(a.lr_sharpness, rel=1e-9)
        assert b.update_ratio == pytest.approx(a.update_ratio, rel=1e-9)


def test_tied_embedding_belongs_to_its_first_module_and_blocks_cover_every_parameter():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(7, 4)
            self.mix = nn.Linear(4, 4)
            self.out = nn.Linear(4, 7, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, t):
            return self.out(torch.tanh(self.mix(self.embed(t))))

    model = Tied()
    blocks = parameter_blocks(model)
    assert [b.name for b in blocks] == ["embed", "mix"]
    assert sum(b.numel for b in blocks) == sum(p.numel() for p in model.parameters())


def test_heterogeneity_is_zero_for_identical_spectra_and_large_for_different_ones():
    same = [[np.array([1.0, 2.0])], [np.array([1.0, 2.0])]]
    w = [[np.array([0.5, 0.5])], [np.array([0.5, 0.5])]]
    assert heterogeneity(same, w)[0] == pytest.approx(0.0, abs=1e-12)
    apart = [[np.array([1.0, 2.0])], [np.array([1000.0, 2000.0])]]
    assert heterogeneity(apart, w)[0] > 0.9
    p = np.array([0.5, 0.5, 0.0])
    assert js_distance(p, p) == 0.0 and js_distance(p, np.array([0.0, 0.0, 1.0])) == pytest.approx(
        1.0
    )


def test_transformer_blocks_are_more_heterogeneous_than_an_mlps():
    from lossdoctor.studies.stall_cases import TinyLM, markov_tokens, mlp, mnist, token_loss

    x, y = markov_tokens(0, n=64)
    torch.manual_seed(0)
    lm = ld.layer_curvature(TinyLM(), token_loss, (x, y), probes=1, lanczos_steps=8)
    xm, ym = mnist(0, 256)
    mlp_table = ld.layer_curvature(
        mlp(0, 32, depth=2), F.cross_entropy, (xm, ym), probes=1, lanczos_steps=8
    )
    assert lm.heterogeneity > mlp_table.heterogeneity
    assert not math.isnan(lm.spread)


def test_model_untouched_and_bad_input():
    model, data = mlp_case()
    before = [p.detach().clone() for p in model.parameters()]
    rng = torch.get_rng_state()
    ld.layer_curvature(model, F.cross_entropy, data)
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))
    assert torch.equal(rng, torch.get_rng_state())
    with pytest.raises(ValueError, match="probes"):
        ld.layer_curvature(model, F.cross_entropy, data, probes=0)
    with pytest.raises(ValueError, match="lr must be"):
        ld.layer_curvature(model, F.cross_entropy, data, lr=-1.0)
