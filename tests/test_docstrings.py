"""Every docstring example under src/lossdoctor runs and prints what it says (doctest, one test per
module), and every exported name keeps a Google docstring with its sections and an example
(``tools/doc_coverage.py``, the script that gives the before/after figures)."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

import lossdoctor

ROOT = Path(__file__).resolve().parent.parent
FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def modules() -> list[str]:
    names = ["lossdoctor"]
    for info in pkgutil.walk_packages(lossdoctor.__path__, prefix="lossdoctor."):
        if info.name.endswith("__main__"):
            continue  # importing it runs the CLI
        names.append(info.name)
    return names


@pytest.mark.parametrize("name", modules())
def test_docstring_examples_run(name, tmp_path, monkeypatch):
    module = importlib.import_module(name)
    tests = [
        t
        for t in doctest.DocTestFinder(exclude_empty=True).find(module, name)
        if t.examples and (t.filename or "").startswith(str(Path(lossdoctor.__file__).parent))
    ]
    if not tests:
        pytest.skip("no examples in this module")
    monkeypatch.chdir(tmp_path)  # an example that writes files writes them here
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    state = torch.random.get_rng_state()
    try:
        runner = doctest.DocTestRunner(optionflags=FLAGS)
        failures = []
        for test in tests:
            runner.run(test, out=failures.append)
    finally:
        torch.set_num_threads(threads)
        torch.random.set_rng_state(state)
    assert runner.failures == 0, "".join(failures)


def _coverage():
    spec = importlib.util.spec_from_file_location(
        "doc_coverage", ROOT / "tools" / "doc_coverage.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("doc_coverage", module)
    spec.loader.exec_module(module)
    return module


def test_every_exported_name_has_a_complete_docstring():
    lacking = [
        f"{e.name}: {', '.join(e.missing())}" for e in _coverage().api_entries() if e.missing()
    ]
    assert not lacking, "\n".join(lacking)
