"""The module-size rule (CONTRIBUTING.md): a module of src/hin does one job; one over
MAX_LINES lines says in its docstring which one job needs that length ("one job")."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "hin"
MAX_LINES = 450


def test_no_module_is_over_the_limit_unless_its_docstring_names_its_one_job():
    long_without_reason = []
    for path in sorted(SRC.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.count("\n")
        docstring = " ".join((ast.get_docstring(ast.parse(text)) or "").split())
        if lines > MAX_LINES and "one job" not in docstring.lower():
            long_without_reason.append(f"{path.relative_to(SRC)} ({lines} lines)")
    assert not long_without_reason, ("split these modules, or say in the docstring which one job "
                                     f"needs the length: {long_without_reason}")
