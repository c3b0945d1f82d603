"""The CLI's layout: one module per command over shared helpers, and no import circle among them."""

from __future__ import annotations

import ast
from pathlib import Path

import igan

ROOT = Path(igan.__file__).parent
COMMANDS = {"train", "semisup", "sample", "evaluate", "report", "plugins"}
HELPERS = {"common", "training", "runs"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, known: set[str]) -> set[str]:
    """The igan modules ``path`` imports (``from igan.cli import train`` names the module igan.cli.train)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("igan"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & known
            found |= subs or ({node.module} & known)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names} & known
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    known = set(files)
    return {name: _imports(path, known) - {name} for name, path in files.items()}


def test_every_command_has_its_own_module():
    modules = {p.stem for p in (ROOT / "cli").glob("*.py")}
    assert COMMANDS | HELPERS | {"app", "__init__"} == modules


def test_helpers_and_commands_import_no_command():
    graph = _graph()
    for name in HELPERS | COMMANDS:
        module = f"igan.cli.{name}"
        imported = {m.rsplit(".", 1)[-1] for m in graph[module] if m.startswith("igan.cli.")}
        assert not imported & COMMANDS, f"{module} imports the command module(s) {imported & COMMANDS}"
        assert "igan.cli.app" not in graph[module] and "igan.cli" not in graph[module], module


def test_no_import_circle_through_the_cli():
    graph = _graph()
    cli = {m for m in graph if m.startswith("igan.cli")} | {"igan.evaluate", "igan.report", "igan.restore"}

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    for module in cli:
        assert module not in reach(module), f"{module} imports itself through a circle"
