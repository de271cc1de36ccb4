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
    assert len(blocks) == 3
    assert "transformers" in blocks[0] and "lightning" in blocks[1] and "SummaryWriter" in blocks[2]


@pytest.mark.parametrize(
    "index, needs",
    [(0, ("transformers", "accelerate")), (1, ("lightning",)), (2, ("tensorboard",))],
    ids=["huggingface", "lightning", "plain-loop"],
)
def test_readme_example_runs(index, needs, tmp_path, monkeypatch):
    for module in needs:
        pytest.importorskip(module)
    monkeypatch.chdir(tmp_path)  # the examples write their runs here
    import torch

    torch.manual_seed(0)
    code = examples()[index]
    exec(
        compile(code, f"docs/frameworks.md example {index}", "exec"),
        {"__name__": f"readme_example_{index}"},
    )
