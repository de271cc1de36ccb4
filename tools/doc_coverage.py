"""Count public names without a docstring, or with one lacking its Google sections.

Two scopes, both read from the source (``ast``), so a dataclass's generated ``__doc__`` does not
count as a docstring:

* ``api``: every name in ``lossdoctor.__all__`` and in each subpackage's ``__all__``, plus the
  public methods and properties of those classes;
* ``all``: every public top-level function and class of every public module under
  ``src/lossdoctor`` (no path part starting with ``_``), plus their public methods.

A function needs ``Args:`` when it takes arguments, ``Returns:`` (or ``Yields:``) when it returns a
value, and ``Example:`` when it is a top-level function or class. A class needs ``Args:`` or
``Attributes:`` when its constructor takes arguments. Methods and properties need no ``Example:``.

Usage::

    python tools/doc_coverage.py            # the table
    python tools/doc_coverage.py --list     # also each name and what it lacks
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "lossdoctor"


@dataclass
class Entry:
    name: str
    kind: str  # function, class, method, property, constant
    doc: str | None
    needs: list[str] = field(default_factory=list)

    def missing(self) -> list[str]:
        if self.doc is None:
            return ["docstring"]
        lacking = []
        for section in self.needs:
            options = section.split("|")
            if not any(f"\n{opt}:" in "\n" + _dedent(self.doc) for opt in options):
                lacking.append(section)
        return lacking


def _dedent(doc: str) -> str:
    return "\n".join(line.strip() for line in doc.splitlines())


def _args(node: ast.FunctionDef | ast.AsyncFunctionDef, method: bool) -> list[str]:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    if a.vararg:
        names.append(a.vararg.arg)
    if a.kwarg:
        names.append(a.kwarg.arg)
    if method and names and names[0] in ("self", "cls"):
        names = names[1:]
    return names


def _returns_value(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    if node.returns is not None:
        text = ast.unparse(node.returns)
        return text not in ("None", "NoReturn", "Never")
    for sub in ast.walk(node):
        if isinstance(sub, ast.Return) and sub.value is not None:
            return True
        if isinstance(sub, (ast.Yield, ast.YieldFrom)):
            return True
    return False


def _is_property(node: ast.AST) -> bool:
    decorators = getattr(node, "decorator_list", [])
    return any(ast.unparse(d).endswith(("property", "cached_property")) for d in decorators)


def _function_entry(qual: str, node, method: bool) -> Entry:
    if _is_property(node):
        return Entry(qual, "property", ast.get_docstring(node))
    needs = []
    if _args(node, method):
        needs.append("Args")
    if _returns_value(node):
        needs.append("Returns|Yields")
    if not method:
        needs.append("Example|Examples")
    return Entry(qual, "method" if method else "function", ast.get_docstring(node), needs)


def _class_entries(qual: str, node: ast.ClassDef) -> list[Entry]:
    init = next(
        (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    fields = [
        n
        for n in node.body
        if isinstance(n, ast.AnnAssign)
        and isinstance(n.target, ast.Name)
        and "ClassVar" not in ast.unparse(n.annotation)
    ]
    needs = []
    if (init is not None and _args(init, True)) or fields:
        needs.append("Args|Attributes")
    needs.append("Example|Examples")
    entries = [Entry(qual, "class", ast.get_docstring(node), needs)]
    for sub in node.body:
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)) and not sub.name.startswith(
            "_"
        ):
            entries.append(_function_entry(f"{qual}.{sub.name}", sub, method=True))
    return entries


def _constant_doc(tree: ast.Module, name: str) -> str | None:
    body = tree.body
    for i, node in enumerate(body):
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets if t is not None):
            nxt = body[i + 1] if i + 1 < len(body) else None
            if (
                isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                return nxt.value.value
            return None
    return None


def _module_tree(module: str) -> ast.Module:
    path = ROOT.joinpath(*module.split("."))
    file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
    return ast.parse(file.read_text())


def _definition(module: str, name: str) -> tuple[str, ast.AST | None, ast.Module]:
    tree = _module_tree(module)
    for node in tree.body:
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name == name
        ):
            return module, node, tree
    return module, None, tree


def _entries_for(qual: str, node: ast.AST | None, tree: ast.Module, name: str) -> list[Entry]:
    if isinstance(node, ast.ClassDef):
        return _class_entries(qual, node)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return [_function_entry(qual, node, method=False)]
    return [Entry(qual, "constant", _constant_doc(tree, name))]


def api_entries() -> list[Entry]:
    sys.path.insert(0, str(ROOT))
    pkg = importlib.import_module(PACKAGE)
    # The cli package's __all__ is the console entry point (documented in docs/cli.md), not an API.
    exporters = [pkg] + [
        importlib.import_module(f"{PACKAGE}.{m.name}")
        for m in pkgutil.iter_modules(pkg.__path__)
        if m.ispkg and m.name != "cli"
    ]
    seen: dict[tuple[str, str], list[Entry]] = {}
    for exporter in exporters:
        for name in getattr(exporter, "__all__", []):
            obj = getattr(exporter, name)
            module = getattr(obj, "__module__", None)
            if not isinstance(module, str) or not module.startswith(PACKAGE):
                module = _constant_home(exporter.__name__, name)  # a constant
            key = (module, name)
            if key in seen:
                continue
            _, node, tree = _definition(module, name)
            seen[key] = _entries_for(f"{module}.{name}", node, tree, name)
    return [e for entries in seen.values() for e in entries]


def _constant_home(package: str, name: str) -> str:
    """The module under ``package`` that assigns ``name`` at top level."""
    base = ROOT.joinpath(*package.split("."))
    files = sorted(base.rglob("*.py")) if base.is_dir() else [base.with_suffix(".py")]
    for file in files:
        tree = ast.parse(file.read_text())
        if _assigns(tree, name):
            parts = list(file.relative_to(ROOT).with_suffix("").parts)
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    return package


def _assigns(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if (
            isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
            and node.name == name
        ):
            return True
        targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
        if any(isinstance(t, ast.Name) and t.id == name for t in targets if t is not None):
            return True
    return False


def all_entries() -> list[Entry]:
    entries = []
    for file in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = file.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if any(p.startswith("_") for p in parts):
            continue
        module = ".".join(parts)
        tree = ast.parse(file.read_text())
        for node in tree.body:
            if isinstance(
                node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
            ) and not node.name.startswith("_"):
                entries.extend(_entries_for(f"{module}.{node.name}", node, tree, node.name))
    return entries


def summarize(label: str, entries: list[Entry]) -> list[str]:
    rows = []
    kinds = ["function", "class", "method", "property", "constant"]
    for kind in kinds + ["total"]:
        group = [e for e in entries if kind == "total" or e.kind == kind]
        if not group:
            continue
        none = sum(e.doc is None for e in group)
        incomplete = sum(e.doc is not None and bool(e.missing()) for e in group)
        rows.append(
            f"| {label} | {kind} | {len(group)} | {none} | {incomplete} | "
            f"{len(group) - none - incomplete} |"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--list", action="store_true", help="list each name that lacks something")
    parser.add_argument("--scope", choices=["api", "all", "both"], default="both")
    args = parser.parse_args(argv)
    scopes = {"api": api_entries, "all": all_entries}
    chosen = ["api", "all"] if args.scope == "both" else [args.scope]
    print("| scope | kind | names | no docstring | docstring lacking a section | complete |")
    print("|---|---|---:|---:|---:|---:|")
    found = {s: scopes[s]() for s in chosen}
    for scope in chosen:
        print("\n".join(summarize(scope, found[scope])))
    if args.list:
        for scope in chosen:
            print(f"\n{scope}:")
            for e in found[scope]:
                if e.missing():
                    print(f"  {e.name} ({e.kind}): {', '.join(e.missing())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
