"""The framework page's examples (docs/frameworks.md, linked from the README) run as written (each
skips when its framework is missing)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

PAGE = Path(__file__).resolve().parent.parent / "docs" / "frameworks.md"


def examples() -> list[str]:
    return re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S)


def test_there_is_one_example_per_framework():
    blocks = examples()
    assert len(blocks) == 4
    assert "transformers" in blocks[0] and "lightning" in blocks[1] and "SummaryWriter" in blocks[2]
    assert "torchvision" in blocks[3] and "timm" in blocks[3]


@pytest.mark.parametrize(
    "index, needs",
    [
        (0, ("transformers", "accelerate")),
        (1, ("lightning",)),
        (2, ("tensorboard",)),
        (3, ("torchvision", "timm")),
    ],
    ids=["huggingface", "lightning", "plain-loop", "vision"],
)
def test_readme_example_runs(index, needs, tmp_path, monkeypatch):
    import importlib

    for module in needs:
        try:  # PyPI torchvision beside another torch fails with a RuntimeError, not ImportError
            importlib.import_module(module)
        except Exception as err:  # noqa: BLE001 - any failure to import: not available here
            pytest.skip(f"{module} does not import here: {type(err).__name__}")
    monkeypatch.chdir(tmp_path)  # the examples write their runs here
    import torch

    torch.manual_seed(0)
    code = examples()[index]
    exec(
        compile(code, f"docs/frameworks.md example {index}", "exec"),
        {"__name__": f"readme_example_{index}"},
    )
