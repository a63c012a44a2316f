"""The import rules of docs/architecture.md, and that serving restates none of the model's math."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eventrec"

# package (or top-level module) → what it may import besides itself; "ops" etc. are packages,
# "evaluation.metrics" a single module
ALLOWED: dict[str, set[str]] = {
    "ops": set(),
    "schema": {"data.sampling"},
    "store": {"schema"},
    "data": {"store", "schema"},
    "model": {"data", "ops", "schema"},
    "training": {"model", "data", "store", "schema", "evaluation.metrics", "evaluation.predict"},
    "evaluation": {"training", "model", "data", "store", "schema"},
    "serving": {"model", "data", "store", "schema", "training.checkpoint", "training.factory", "ops.keyed_pooling_one_user"},
    "adapters": {"schema"},
    "synthetic": {"evaluation.metrics"},
    "content": {"schema", "store"},
}


def _owner(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imports(path: Path) -> list[str]:
    """The eventrec modules ``path`` imports, without the ``eventrec.`` prefix."""
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eventrec"):
            names.append(node.module.removeprefix("eventrec").lstrip("."))
        elif isinstance(node, ast.Import):
            names += [a.name.removeprefix("eventrec.") for a in node.names if a.name.startswith("eventrec.")]
    return [n for n in names if n]


def _allowed(owner: str, imported: str) -> bool:
    if imported == owner or imported.startswith(owner + "."):
        return True
    return any(imported == rule or imported.startswith(rule + ".") for rule in ALLOWED[owner])


@pytest.mark.parametrize("owner", sorted(ALLOWED))
def test_each_package_imports_only_what_the_architecture_allows(owner: str):
    files = [PACKAGE / f"{owner}.py"] if (PACKAGE / f"{owner}.py").exists() else sorted((PACKAGE / owner).rglob("*.py"))
    wrong = [f"{path.relative_to(PACKAGE)} imports eventrec.{name}" for path in files for name in _imports(path) if not _allowed(owner, name)]
    assert not wrong, "imports that docs/architecture.md does not allow:\n" + "\n".join(wrong)


def test_every_top_level_module_is_a_step_of_the_data_s_way():
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert modules <= {"cli"}, f"top-level modules outside the layout: {sorted(modules - {'cli'})}"


def test_serving_restates_no_attention_math():
    pattern = re.compile(r"einsum|softmax|exp2|scaled_dot_product")
    hits = [f"{p.relative_to(PACKAGE)}:{i}: {line.strip()}" for p in sorted((PACKAGE / "serving").rglob("*.py"))
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not hits, "attention math in serving (call the model's steps instead):\n" + "\n".join(hits)
