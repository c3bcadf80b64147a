"""An import inside a function says why it is not at the top (docs/layout.md, "Imports inside functions")."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dalle_zero"


def unexplained_imports(source: str) -> list[int]:
    """Line numbers of function-level imports with no comment on them or on the lines of the
    contiguous import block above them."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if not isinstance(sub, (ast.Import, ast.ImportFrom)):
                continue
            i = sub.lineno - 1
            while i > 0 and lines[i - 1].strip().startswith(("from ", "import ")):
                i -= 1
            block = lines[max(i - 1, 0) : (sub.end_lineno or sub.lineno)]
            if not any("#" in line for line in block):
                found.append(sub.lineno)
    return found


def test_the_check_finds_a_bare_function_level_import():
    bare = "def f():\n    import json\n    return json\n"
    explained = "def f():\n    # slow to import here\n    import json\n    from os import path\n    return json\n"
    assert unexplained_imports(bare) == [2]
    assert unexplained_imports(explained) == []


def test_every_function_level_import_in_the_library_gives_its_reason():
    files = sorted(SRC.rglob("*.py"))
    missing = [f"{p.relative_to(SRC)}:{n}" for p in files for n in unexplained_imports(p.read_text())]
    assert not missing, f"function-level imports without a reason: {missing}"
