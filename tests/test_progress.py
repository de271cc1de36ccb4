"""Progress by default: ``progress=True`` draws a bar that ends at 100% (also when the call
converged before its budget), ``"auto"`` (the default of long calls) stays silent off a terminal
and inside another call's bar, an interrupted bar says so, and a bad value is refused."""

from __future__ import annotations

import io

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lossdoctor as ld
from lossdoctor.progress import TextBar, resolve

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def op():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    return ld.hessian(model, F.cross_entropy, (x, y))


def last_line(err: str) -> str:
    return err.split("\r")[-1].strip()


def test_true_draws_one_bar_that_ends_at_100_percent(op, capsys):
    result = ld.eigenpairs(op, k=2, max_matvecs=300, progress=True)
    err = capsys.readouterr().err
    done = result.num_matvecs if hasattr(result, "num_matvecs") else None
    line = last_line(err)
    assert line.startswith("eigenpairs [" + "#" * 30 + "]")
    n, total = line.split("] ")[1].split()[0].split("/")
    assert n == total and int(total) < 300 and (done is None or int(total) == done)
    assert err.endswith("\n") and err.count("\n") == 1


def test_auto_is_silent_off_a_terminal_and_inner_calls_draw_nothing(op, capsys):
    ld.trace(op, matvecs=12)  # default "auto"; pytest's stderr is no terminal
    assert capsys.readouterr().err == ""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    data = (torch.randn(20, 3), torch.randint(0, 2, (20,)))
    ld.classify_critical_point(model, F.cross_entropy, data, k=2, progress=True)
    lines = [ln for ln in capsys.readouterr().err.split("\n") if ln]
    assert len(lines) == 1 and last_line(lines[0]).startswith("critical point [")


def test_auto_draws_on_a_terminal_after_the_delay(monkeypatch):
    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    monkeypatch.setattr("sys.stderr", stream)
    callback, bar = resolve("auto", "work")
    assert isinstance(bar, TextBar) and bar.delay > 0
    bar.delay = 0.0
    callback(3, 10)
    bar.close(finished=False)
    assert "3/10" in stream.getvalue() and stream.getvalue().endswith("(interrupted)\n")


def test_a_bar_that_never_appeared_writes_nothing_and_bad_values_are_refused():
    stream = io.StringIO()
    bar = TextBar("x", delay=60.0, stream=stream)
    bar(1, 2)
    bar.close()
    assert stream.getvalue() == ""
    assert resolve(None, "x") == (None, None) and resolve(False, "x") == (None, None)
    for bad in ("bar", 3, int):
        with pytest.raises(TypeError, match="progress must be"):
            resolve(bad, "x")


def test_cli_bars_end_at_100_percent_on_a_normal_exit(capsys):
    from lossdoctor.cli._common import progress_bars

    with progress_bars() as task:
        update = task("eigenpairs")
        update(139, 300)  # converged before the product budget
    assert "139/139" in capsys.readouterr().err
    with pytest.raises(KeyboardInterrupt), progress_bars() as task:
        task("trace")(7, 30)
        raise KeyboardInterrupt
    assert "7/30" in capsys.readouterr().err  # an interrupted bar stays where it was
