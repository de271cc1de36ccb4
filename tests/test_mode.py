"""Train or eval mode, visible: every curvature result states the mode it used, and a model with
BatchNorm or dropout analysed in the defaulted mode gets a one-line notice saying which mode
was used and how to choose the other. Each mode's numbers are checked against its own dense
float64 Hessian."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdoctor as ld
from cases import BY_ID, ModelSnapshot, case_reference
from lossdoctor.model_state import ModeNotice


def notices(fn, *args, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = fn(*args, **kwargs)
    return out, [str(w.message) for w in caught if issubclass(w.category, ModeNotice)]


def test_defaulted_mode_on_a_batchnorm_model_is_stated_and_explained():
    model, loss_fn, data = BY_ID["batchnorm-cnn-batches-eval"].make()
    model.train()  # as it is being trained
    before = ModelSnapshot.take(model)
    op, said = notices(ld.hessian, model, loss_fn, data)
    assert op.mode == "eval" and op.mode_defaulted
    assert len(said) == 1 and "\n" not in said[0]
    assert "eval-mode network" in said[0] and "BatchNorm2d" in said[0] and "mode='train'" in said[0]
    assert "the model is in train mode" in said[0]
    eig, again = notices(ld.eigenpairs, op, k=2, progress=False)
    assert again == []  # said once, when the operator was built
    assert eig.mode == "eval" and "eval mode" in str(eig)
    expected = torch.linalg.eigvalsh(case_reference("batchnorm-cnn-batches-eval")).numpy()[::-1][:2]
    np.testing.assert_allclose(eig.eigenvalues, expected, rtol=1e-4)
    tr = ld.trace(op, matvecs=op.num_params, progress=False)
    assert tr.mode == "eval" and "eval mode" in str(tr)
    assert tr.estimate == pytest.approx(
        float(torch.trace(case_reference("batchnorm-cnn-batches-eval"))), rel=1e-4
    )
    before.assert_same(model, "defaulted mode")


def test_chosen_mode_is_quiet_and_each_mode_is_its_own_hessian():
    model, loss_fn, data = BY_ID["batchnorm-cnn-batches-train"].make()
    for mode in ("eval", "train"):
        op, said = notices(ld.hessian, model, loss_fn, data, mode=mode)
        assert said == [] and op.mode == mode and not op.mode_defaulted
        eig = ld.eigenpairs(op, k=2, progress=False)
        assert eig.mode == mode and f"{mode} mode" in str(eig)
        expected = torch.linalg.eigvalsh(case_reference(f"batchnorm-cnn-batches-{mode}")).numpy()[
            ::-1
        ][:2]
        np.testing.assert_allclose(eig.eigenvalues, expected, rtol=1e-4)
    # the two modes are different networks: the notice is about something real
    top = [
        torch.linalg.eigvalsh(case_reference(f"batchnorm-cnn-batches-{m}"))[-1]
        for m in ("eval", "train")
    ]
    assert abs(float(top[0] - top[1])) > 1e-2 * float(abs(top[0]))


def test_models_the_mode_does_not_change_get_no_notice():
    model, loss_fn, data = BY_ID["mlp-tanh-mse-batches-eval"].make()
    _, said = notices(ld.hessian, model, loss_fn, data)
    assert said == []
    untracked = nn.Sequential(
        nn.Linear(4, 5),
        nn.BatchNorm1d(5, track_running_stats=False),
        nn.Linear(5, 2),
        nn.Dropout(0.0),
    )
    _, said = notices(ld.hessian, untracked, F.mse_loss, (torch.randn(8, 4), torch.randn(8, 2)))
    assert said == []


def test_dropout_model_notice_says_dropout_is_off():
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Dropout(0.3), nn.Linear(6, 2))
    _, said = notices(ld.hessian, model, F.mse_loss, (torch.randn(8, 4), torch.randn(8, 2)))
    assert len(said) == 1 and "Dropout off" in said[0] and "mode='eval'" in said[0]


def test_analyses_state_their_mode():
    model, loss_fn, data = BY_ID["batchnorm-cnn-batches-eval"].make()
    point, said = notices(ld.classify_critical_point, model, loss_fn, data)
    assert point.mode == "eval" and "(eval mode)" in str(point) and len(said) == 1
    point = ld.classify_critical_point(model, loss_fn, data, mode="train")
    assert (
        point.mode == "train"
        and "(train mode)" in str(point)
        and point.to_dict()["mode"] == "train"
    )
    sharp, said = notices(ld.sharpness, model, loss_fn, data)
    assert sharp.mode == "eval" and "eval mode" in str(sharp) and len(said) == 1
    density = ld.spectral_density(
        ld.hessian(model, loss_fn, data, mode="train"),
        num_probes=2,
        lanczos_steps=10,
        progress=False,
    )
    assert density.mode == "train" and "train mode" in str(density)
    table, said = notices(ld.layer_curvature, model, loss_fn, data)
    assert table.mode == "eval" and "eval mode" in str(table) and len(said) == 1
    with pytest.raises(ValueError, match="mode must be one of"):
        ld.hessian(model, loss_fn, data, mode="training")
