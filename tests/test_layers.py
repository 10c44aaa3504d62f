"""Dependencies point one way: bot → HTTP → api → memory → (llm, rag, db)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import llm_bot_core

PACKAGE = Path(llm_bot_core.__file__).parent

# Packages a package must never import, even inside a function: each would point back up.
FORBIDDEN = {
    "rag": {"memory", "api", "worker", "bot", "cli", "usage"},
    "llm": {"memory", "rag", "api", "worker", "bot", "cli", "db", "usage"},
    "db": {"memory", "rag", "llm", "api", "worker", "bot", "cli", "usage"},
    "memory": {"api", "worker", "bot", "cli"},
    # The ledger and budgets sit below the use cases that account their calls there.
    "usage": {"memory", "rag", "api", "worker", "bot", "cli"},
    "bot": {"api", "memory", "rag", "worker", "db", "llm", "cli", "usage"},
}


def imported_packages(path: Path) -> set[str]:
    """The llm_bot_core subpackages (or top-level modules) a source file imports."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        else:
            continue
        found.update(
            name.split(".")[1] for name in names if name.startswith("llm_bot_core.")
        )
    return found


def test_no_package_imports_a_layer_above_it() -> None:
    violations = [
        f"{path.relative_to(PACKAGE)} imports llm_bot_core.{imported}"
        for package, forbidden in FORBIDDEN.items()
        for path in sorted((PACKAGE / package).rglob("*.py"))
        for imported in sorted(imported_packages(path) & forbidden)
    ]
    assert violations == []


def test_the_check_sees_lazy_and_plain_imports(tmp_path: Path) -> None:
    # A lazy import inside a function hides a cycle as well as a module-level one does.
    source = tmp_path / "sample.py"
    source.write_text(
        "import llm_bot_core.db.models\n"
        "def later():\n"
        "    from llm_bot_core.memory.store import StoredMessage\n"
        "from . import sibling\n",
        encoding="utf-8",
    )
    assert imported_packages(source) == {"db", "memory"}


def test_importing_the_semantic_memory_interface_loads_no_memory_or_database_code() -> None:
    probe = (
        "import sys, llm_bot_core.rag.base\n"
        "print(sorted(m for m in sys.modules if m.startswith("
        "('llm_bot_core.memory', 'llm_bot_core.db', 'asyncpg', 'sqlalchemy'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
