"""The module-size rule (CONTRIBUTING.md): no module of src/hin is over MAX_LINES lines.

A module still over it is named in ALLOWED with the reason it is not split yet; the goal is an
empty list. An entry whose module is gone or back under the limit is stale and fails too, so
the list only shrinks. The check is a function of a source tree, shown to catch a violation
planted in a small tree.
"""

from collections.abc import Mapping
from pathlib import Path

from helpers.paths import SRC

HIN = SRC / "hin"
MAX_LINES = 450

# path under src/hin -> why it is still long
ALLOWED: dict[str, str] = {}


def size_problems(root: Path, allowed: Mapping[str, str], limit: int = MAX_LINES) -> list[str]:
    """Modules over `limit` lines that `allowed` does not name, and entries of `allowed` that
    name no such module or give no reason."""
    sizes = {path.relative_to(root).as_posix(): path.read_text(encoding="utf-8").count("\n")
             for path in sorted(root.rglob("*.py"))}
    problems = [f"{path} has {lines} lines (limit {limit}): split it along its seams"
                for path, lines in sizes.items() if lines > limit and path not in allowed]
    for path, reason in allowed.items():
        if path not in sizes:
            problems.append(f"{path} is allowed to be long but does not exist: drop its entry")
        elif sizes[path] <= limit:
            problems.append(f"{path} is allowed to be long but has {sizes[path]} lines: "
                            "drop its entry")
        elif not reason.strip():
            problems.append(f"{path} is allowed to be long without a reason: give one")
    return problems


def test_no_module_is_over_the_limit_unless_the_allow_list_says_why():
    assert size_problems(HIN, ALLOWED) == []


def test_a_long_module_and_stale_or_unexplained_entries_are_caught(tmp_path):
    long, short = "x = 1\n" * (MAX_LINES + 1), "x = 1\n" * MAX_LINES
    for name, text in {"long.py": long, "pkg/deep.py": long, "pkg/short.py": short,
                       "excused.py": long, "silent.py": long}.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    allowed = {"excused.py": "split pending", "silent.py": " ", "pkg/short.py": "was long",
               "gone.py": "split pending"}
    assert size_problems(tmp_path, allowed) == [
        "long.py has 451 lines (limit 450): split it along its seams",
        "pkg/deep.py has 451 lines (limit 450): split it along its seams",
        "silent.py is allowed to be long without a reason: give one",
        "pkg/short.py is allowed to be long but has 450 lines: drop its entry",
        "gone.py is allowed to be long but does not exist: drop its entry"]
