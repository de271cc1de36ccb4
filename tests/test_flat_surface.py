"""The flat-surface study: MSE on softmax outputs is flat where the softmax is confidently wrong,
cross-entropy is not; the doctor calls the MSE run a flat plateau."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lossdoctor.report import flat_surface as report
from lossdoctor.studies import flat_surface


@pytest.fixture(scope="module")
def study():
    return flat_surface.run(quick=True)


def test_surfaces_flat_vs_sloped_where_confidently_wrong():
    axis, mse, ce = flat_surface.surfaces(span=10, grid=41)
    gy_m, gx_m = np.gradient(mse, axis, axis)
    gy_c, gx_c = np.gradient(ce, axis, axis)
    wrong = (axis[None, :] < -5) & (axis[:, None] > 5)  # z1 (target) low, z2 high
    assert np.hypot(gx_m, gy_m)[wrong].max() < 0.01 < 0.5 < np.hypot(gx_c, gy_c)[wrong].min()


def test_training_and_verdicts(study):
    mse, ce = study.run("MSE on softmax"), study.run("cross-entropy")
    assert mse.final_loss > 0.9 * mse.losses[0] and mse.final_accuracy < 0.5
    assert ce.final_loss < 0.05 * ce.losses[0] and ce.final_accuracy > 0.9
    assert study.diagnosis.cause == "flat_plateau"
    assert any("cross-entropy" in p.text for p in study.diagnosis.prescriptions)
    assert study.diagnosis.prescriptions[0].trial.better
    assert study.ce_diagnosis.cause != "flat_plateau"


def test_render_and_json(study, tmp_path):
    section = report.render(study, tmp_path)
    assert (
        tmp_path / "flat-surface.png"
    ).stat().st_size > 10_000 and "FLAT_PLATEAU" in section.body
    assert json.loads(json.dumps(study.to_dict()))["diagnosis"]["cause"] == "flat_plateau"
