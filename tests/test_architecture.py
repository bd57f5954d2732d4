"""The shape of the source as a contract: small rooms, short functions, imports at the top.

The layers themselves (an import runs only down) are checked by import-linter
(``[tool.importlinter]`` in pyproject.toml, run by ``make lint``)."""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "subtomo"
FILES = sorted(SRC.rglob("*.py"))
MAX_FILE_LINES, MAX_FUNCTION_LINES = 600, 100
# A function-level import needs a reason, written on its line: the CLI defers each command's
# imports so that `subtomo --help` and argument errors do not load torch (commands/), and
# optional dependencies are imported where they are used.
REASONS = ("# start-up", "# optional")


def _functions(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_files_and_functions_are_small(path):
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_FILE_LINES
    long = {f.name: f.end_lineno - f.lineno + 1 for f in _functions(ast.parse(text))
            if f.end_lineno - f.lineno + 1 > MAX_FUNCTION_LINES}
    assert not long


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_at_module_top(path):
    if path.parent.name == "commands":
        return  # deferred on purpose: the CLI's start-up (see REASONS)
    text = path.read_text()
    lines = text.splitlines()
    inner = sorted({(node.lineno, lines[node.lineno - 1].strip())
                    for f in _functions(ast.parse(text)) for node in ast.walk(f)
                    if isinstance(node, ast.Import | ast.ImportFrom)
                    and not any(r in lines[node.end_lineno - 1] for r in REASONS)})
    assert not inner


PACKAGES = sorted(p.parent for p in SRC.rglob("__init__.py") if p.parent != SRC)


@pytest.mark.parametrize("package", PACKAGES, ids=lambda p: p.name)
def test_each_package_states_its_public_api(package):
    """``__all__`` in every package's ``__init__``, and each name in it exists."""
    module = importlib.import_module(f"subtomo.{package.name}")
    assert isinstance(getattr(module, "__all__", None), list)
    for name in module.__all__:
        assert hasattr(module, name) or importlib.util.find_spec(f"{module.__name__}.{name}")
