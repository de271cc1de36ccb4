"""The full tour, run once, and its report opened in headless Chromium."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from browser import open_page
from lossdoctor import tour

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def tour_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tour")
    cli = Path(sys.executable).with_name("lossdoctor")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "lossdoctor"]
    done = subprocess.run(
        [*command, "tour", "--out", str(out)], capture_output=True, text=True, timeout=3600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report written to" in done.stdout
    return out


def test_results_have_every_section(tour_dir):
    results = json.loads((tour_dir / "results.json").read_text())
    keys = [s.key for s in tour.SECTIONS]
    assert sorted(results) == sorted(keys)
    html = (tour_dir / "index.html").read_text()
    for section in tour.SECTIONS:
        assert f'id="{section.key}"' in html
    spectrum = results["spectrum"]
    eig = spectrum["eigen"]
    assert eig["which"] == "both" and len(eig["eigenvalues"]) == 10
    assert eig["eigenvalues"] == sorted(eig["eigenvalues"], reverse=True)


@pytest.mark.browser
def test_report_opens_in_chromium(tour_dir, tmp_path):
    page = open_page(tour_dir / "index.html", tmp_path / "profile")
    assert page.title == "lossdoctor tour"
    pngs = sorted(p.name for p in tour_dir.rglob("*.png"))
    assert page.images, "the report has no figures"
    assert not page.broken_images, (
        f"figures that did not load: {page.broken_images} (PNGs on disk: {pngs})"
    )
    assert not page.errors, f"console errors: {page.errors}"
