"""The import graph of ``src/lossdoctor`` flows one way, read from the source with ``ast``.

Layers, lowest first (a module may import its own layer and the layers below, never above)::

    base          _checks _distributed _extras _files _interrupt _results _version types progress model_state data evaluation
    problem       problem zoo          (the Problem type and the problems that ship with it)
    curvature     curvature/
    analysis      analysis/
    training      training/
    doctor        doctor/ checkup      (the doctor measures with analyses and trains with training)
    studies       studies/ integrations/
    report        report/
    tour          tour
    cli           cli/ __main__ and the package's ``__init__`` (the public façade, re-exports only)

Inside a layer, the units (a top-level module, or a subpackage taken whole) import each other
without cycles; nothing outside ``integrations/`` imports it (an optional extra). A private name
(``_x``) is imported only by a module of the same package as the module defining it; the private
modules at the package root (``lossdoctor._checks`` ...) are the package's own toolkit and open to
all of it. Imports inside functions count the same as those at the top: a lazy import upwards is
still an import upwards.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lossdoctor"

LAYERS: list[tuple[str, set[str]]] = [
    (
        "base",
        {
            "_checks",
            "_distributed",
            "_extras",
            "_files",
            "_interrupt",
            "_results",
            "_version",
            "types",
            "progress",
            "model_state",
            "data",
            "evaluation",
        },
    ),
    ("problem", {"problem", "zoo"}),
    ("curvature", {"curvature"}),
    ("analysis", {"analysis"}),
    ("training", {"training"}),
    ("doctor", {"doctor", "checkup"}),
    ("studies", {"studies", "integrations"}),
    ("report", {"report"}),
    ("tour", {"tour"}),
    ("cli", {"cli", "__main__", "__init__"}),
]
RANK = {unit: i for i, (_, units) in enumerate(LAYERS) for unit in units}
# The built-in problems are the problem layer's catalogue: load_problem looks a name up there.
SAME_UNIT = {"zoo": "problem"}


def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_package(path: Path) -> bool:
    return path.name == "__init__.py"


def unit_of(module: str) -> str:
    """``lossdoctor.curvature.eigen`` -> ``curvature``; ``lossdoctor`` itself -> ``__init__``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def imports(src: Path = SRC) -> list[tuple[str, str, str | None, int]]:
    """(importer, imported module, imported name or None, line) for every import of the package,
    with ``from pkg import submodule`` resolved to the submodule."""
    files = {module_name(p, src): p for p in (src / PACKAGE).rglob("*.py")}
    found = []
    for module, path in sorted(files.items()):
        package = module if is_package(path) else module.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [
                    (module, a.name, None, node.lineno)
                    for a in node.names
                    if a.name.split(".")[0] == PACKAGE
                ]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                if target.split(".")[0] != PACKAGE:
                    continue
                for a in node.names:
                    if f"{target}.{a.name}" in files:
                        found.append((module, f"{target}.{a.name}", None, node.lineno))
                    else:
                        found.append((module, target, a.name, node.lineno))
    return found


def private_crossing(importer: str, target: str, name: str | None, src: Path = SRC) -> str | None:
    """The private part of an import that leaves its package, or None."""
    importer_is_pkg = (src / Path(*importer.split(".")) / "__init__.py").exists()
    importer_pkg = importer if importer_is_pkg else importer.rsplit(".", 1)[0]
    parts = target.split(".")
    for i, part in enumerate(parts[1:], start=1):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])  # the package holding the private module
            inside = importer_pkg == owner or importer_pkg.startswith(owner + ".")
            if i == 1 and owner == PACKAGE:
                inside = True  # lossdoctor._checks etc.: the whole package's toolkit
            if not inside:
                return target
    if name is not None and name.startswith("_") and not name.startswith("__"):
        target_is_pkg = (src / Path(*parts) / "__init__.py").exists()
        owner = target if target_is_pkg else target.rsplit(".", 1)[0]
        if importer_pkg != owner:
            return f"{target}.{name}"
    return None


def violations(src: Path = SRC) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {
        "backward": [],
        "cycles": [],
        "private": [],
        "integrations": [],
        "unknown": [],
    }
    graph: dict[str, set[str]] = {}
    for importer, target, name, line in imports(src):
        where = f"{importer}:{line} -> {target}{'.' + name if name else ''}"
        a, b = unit_of(importer), unit_of(target)
        for unit in (a, b):
            if unit not in RANK:
                found["unknown"].append(f"{where} (unit {unit!r} has no layer)")
        if a in RANK and b in RANK and RANK[b] > RANK[a]:
            found["backward"].append(f"{where} ({LAYERS[RANK[a]][0]} imports {LAYERS[RANK[b]][0]})")
        if b == "integrations" and a != "integrations":
            found["integrations"].append(where)
        crossing = private_crossing(importer, target, name, src)
        if crossing:
            found["private"].append(f"{where} (private {crossing})")
        ua, ub = SAME_UNIT.get(a, a), SAME_UNIT.get(b, b)
        if ua != ub:
            graph.setdefault(ua, set()).add(ub)
    # cycles between units (depth-first search for a back edge)
    state: dict[str, int] = {}

    def visit(u: str, path: list[str]) -> None:
        state[u] = 1
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                found["cycles"].append(
                    " -> ".join(path[path.index(v) :] + [v]) if v in path else f"{u} -> {v}"
                )
            elif v not in state:
                visit(v, path + [v])
        state[u] = 2

    for u in sorted(graph):
        if u not in state:
            visit(u, [u])
    return found


def test_the_checker_sees_a_backward_a_cyclic_and_a_private_import(tmp_path):
    pkg = tmp_path / PACKAGE
    for sub in ("curvature", "analysis", "cli"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "curvature" / "eigen.py").write_text("def f():\n    from ..analysis.critical import g\n")
    (pkg / "analysis" / "critical.py").write_text("from ..curvature.eigen import _helper\ng = 1\n")
    (pkg / "cli" / "one.py").write_text("from . import two\nfrom .._results import fmt\n")
    (pkg / "cli" / "two.py").write_text("from lossdoctor.cli import one\n")
    (pkg / "_results.py").write_text("fmt = str\n")
    (pkg / "tour.py").write_text("from .cli import one\n")
    (pkg / "nowhere.py").write_text("")
    got = violations(tmp_path)
    assert got["backward"] == [
        "lossdoctor.curvature.eigen:2 -> lossdoctor.analysis.critical.g (curvature imports analysis)",
        "lossdoctor.tour:1 -> lossdoctor.cli.one (tour imports cli)",
    ]
    assert got["private"] == [
        "lossdoctor.analysis.critical:1 -> lossdoctor.curvature.eigen._helper "
        "(private lossdoctor.curvature.eigen._helper)"
    ]
    assert got["cycles"] == [
        "analysis -> curvature -> analysis"
    ]  # one module to another inside cli is no cycle
    assert got["unknown"] == []


@pytest.mark.parametrize("kind", ["backward", "cycles", "private", "integrations", "unknown"])
def test_imports_flow_one_way(kind):
    found = violations()[kind]
    assert not found, f"{len(found)} {kind} import(s):\n" + "\n".join(found)
