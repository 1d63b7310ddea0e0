"""Dependencies point down only: flows -> tasks -> blocks. Every import is checked, those inside
functions included, and so are the modules the component registry loads by name. The installed
package (flows, tasks, blocks) never imports tests/ or sandbox/, which it does not contain."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tasks.components.registry import SPECS, spec

ROOT = Path(__file__).resolve().parent.parent
# layer -> the top-level packages it must never import
FORBIDDEN = {
    "flows": {"tests", "sandbox"},
    "tasks": {"flows", "tests", "sandbox"},
    "blocks": {"flows", "tasks", "tests", "sandbox"},
}


def imported(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_layers_imports_point_down_only(layer):
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {name}"
        for path in sorted((ROOT / layer).rglob("*.py"))
        for line, name in imported(path)
        if name.split(".")[0] in FORBIDDEN[layer]
    ]
    assert not wrong, f"{layer}/ must not import {sorted(FORBIDDEN[layer])}:\n" + "\n".join(wrong)


def test_layers_registry_loads_components_from_tasks_components_only():
    assert all(spec(c).module.startswith("tasks.components.") for c in SPECS)


def test_layers_the_scanner_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "m.py"
    sample.write_text("def f():\n    from flows.backup import backup_all\n    import tests.pg_helpers\n")
    assert [name for _, name in imported(sample)] == ["flows.backup", "tests.pg_helpers"]
