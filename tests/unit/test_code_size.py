"""Size limits of the package (issue 28): no module over ``MAX_MODULE_LINES`` lines and no function
(or method) over ``MAX_FUNCTION_LINES``, counted from its ``def`` line (decorators left out) to its
last line, nested functions inside their parent. A long body is broken into named phases, a
grab-bag module into modules by role."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "context_research"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def _lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines())


def long_functions(source: str, limit: int = MAX_FUNCTION_LINES) -> list[tuple[str, int, int]]:
    """(qualified name, first line, lines) of every function in ``source`` longer than ``limit``."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{child.name}"
                if not isinstance(child, ast.ClassDef):
                    length = child.end_lineno - child.lineno + 1
                    if length > limit:
                        found.append((name, child.lineno, length))
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return found


def test_the_walk_finds_a_long_function_a_long_method_and_a_long_nested_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(80))
    source = (f"def short():\n    pass\n\n\ndef long():\n{body}\n\n\n"
              f"class C:\n    def method(self):\n    {body.replace(chr(10), chr(10) + '    ')}\n\n\n"
              f"def outer():\n    def inner():\n    {body.replace(chr(10), chr(10) + '    ')}\n    return inner\n")
    names = {name: length for name, _, length in long_functions(source)}
    assert names == {"long": 81, "C.method": 81, "outer": 83, "outer.inner": 81}


def test_no_module_over_the_limit():
    over = {p.relative_to(PACKAGE).as_posix(): _lines(p) for p in _modules() if _lines(p) > MAX_MODULE_LINES}
    assert not over, f"modules over {MAX_MODULE_LINES} lines: " + ", ".join(
        f"{name} ({n})" for name, n in sorted(over.items()))


def test_no_function_over_the_limit():
    over = [f"{p.relative_to(PACKAGE).as_posix()}:{line} {name} ({n} lines)"
            for p in _modules() for name, line, n in long_functions(p.read_text(encoding="utf-8"))]
    assert over == [], f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(over)
