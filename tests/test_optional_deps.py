"""The core runs without the extras (matplotlib, rich, click, mnist1d), and a missing extra is named.

Each check runs in a fresh interpreter whose import system refuses the extras (a ``sys.meta_path``
finder), so what is installed here does not matter.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
BLOCK = """
import importlib.abc, sys
BLOCKED = {"matplotlib", "rich", "click", "mnist1d"}
class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (refused by the test)", name=name)
        return None
sys.meta_path.insert(0, Refuse())
"""


def run(code: str, tmp_path: Path, block: bool = True) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PYTHONPATH": str(SRC) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        "LOSSDOCTOR_CACHE": str(tmp_path / "cache"),
    }
    env.pop("MPLBACKEND", None)  # the backend test wants matplotlib's own choice
    script = (BLOCK if block else "") + textwrap.dedent(code)
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=tmp_path,
    )


def test_the_core_works_without_any_extra(tmp_path):
    result = run(
        """
        import numpy as np, torch
        from torch import nn
        import torch.nn.functional as F
        import lossdoctor as ld

        torch.manual_seed(0)
        x, y = torch.randn(64, 4, dtype=torch.float64), torch.randint(0, 3, (64,))
        batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
        model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()

        # the Hessian's extreme eigenvalues against the dense float64 Hessian
        op = ld.hessian(model, F.cross_entropy, batches)
        dense = torch.linalg.eigvalsh(ld.dense_hessian(model, F.cross_entropy, batches)).numpy()
        top = ld.eigenpairs(op, k=2, which="largest", tol=1e-10, progress=None).eigenvalues
        assert np.allclose(np.sort(top), dense[-2:], rtol=1e-6, atol=1e-9), (top, dense[-2:])

        # a monitored training run and a diagnosis
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        monitor = ld.Monitor(model, F.cross_entropy, batches, window=8, check_every=4)
        for step in range(24):
            xb, yb = batches[step % 4]
            opt.zero_grad()
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            opt.step()
            monitor.step(loss, opt)
        assert monitor.steps == 24
        d = ld.diagnose(model, F.cross_entropy, batches, history=list(monitor.record.losses), optimizer=opt,
                        verify=False, progress=None)
        assert d.cause in ld.CAUSES and str(d)
        assert isinstance(ld.classify_critical_point(model, F.cross_entropy, batches, progress=None)._repr_html_(),
                          (str, type(None)))
        blocked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
        assert not blocked, blocked
        print("core ok")
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "core ok" in result.stdout


def test_a_missing_extra_is_named_with_its_install_command(tmp_path):
    result = run(
        """
        import pytest
        import lossdoctor as ld
        from lossdoctor._extras import MissingExtraError
        from lossdoctor.report import figures

        with pytest.raises(MissingExtraError, match=r"pip install 'lossdoctor\\[data\\]'"):
            ld.load_problem("mnist1d-mlp")
        with pytest.raises(MissingExtraError, match=r"pip install 'lossdoctor\\[report\\]'"):
            figures.new_figure()
        from lossdoctor.cli import main
        with pytest.raises(SystemExit, match=r"pip install 'lossdoctor\\[cli\\]'"):
            main()
        print("named ok")
    """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "named ok" in result.stdout


def test_the_report_chooses_a_backend_only_when_drawing_and_only_if_none_was_chosen(tmp_path):
    result = run(
        """
        import sys
        import lossdoctor.report.figures as figures
        import lossdoctor.tour  # every report module, imported
        assert "matplotlib" not in sys.modules  # nothing drawn, nothing imported
        fig, axes = figures.new_figure(2)
        import matplotlib
        assert matplotlib.get_backend().lower() == "agg", matplotlib.get_backend()
        assert axes[0].xaxis.get_major_ticks()[0].gridline.get_visible()  # lossdoctor's style...
        assert not matplotlib.rcParams["axes.grid"]  # ...on its own figures only
        print("agg ok")
    """,
        tmp_path,
        block=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "agg ok" in result.stdout
    chosen = run(
        """
        import matplotlib
        matplotlib.use("svg")
        import lossdoctor.report.figures as figures
        figures.new_figure()
        assert matplotlib.get_backend().lower() == "svg", matplotlib.get_backend()
        print("kept ok")
    """,
        tmp_path,
        block=False,
    )
    assert chosen.returncode == 0, chosen.stderr[-3000:]
    assert "kept ok" in chosen.stdout
