"""Tests wait on conditions, never on the clock (CONTRIBUTING.md): no module under tests/
sleeps (time.sleep, asyncio.sleep) or reads a clock (time.monotonic, time.perf_counter,
time.time and their _ns forms), called or passed on, however imported. A fixed sleep hopes
something has happened by then, and an elapsed-time assertion measures the machine: both
fail on a loaded one. The only exceptions are the `{path: reason}` entries of ALLOWED (the
one wait helper); an entry that excuses nothing, names no module or gives no reason fails.
Vendored code (vendored_*) is not ours and not checked. The check is a function of a tree,
shown to catch each violation planted in a small tree.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Mapping
from pathlib import Path

from helpers.paths import REPO

TESTS = REPO / "tests"
SLEEPS = {"time.sleep", "asyncio.sleep"}
CLOCKS = {f"time.{clock}{ns}" for clock in ("monotonic", "perf_counter", "time")
          for ns in ("", "_ns")}

# path under tests/ -> why it may sleep or read the clock
ALLOWED: dict[str, str] = {
    "helpers/waiting.py": "the one wait: it polls a condition until a deadline, so it sleeps between "
                  "looks and reads the clock for the deadline"}


def _imported_names(tree: ast.AST) -> dict[str, str]:
    """Local name -> what it names: `import time as t` gives t -> time, `from time import
    sleep as nap` gives nap -> time.sleep."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top = alias.name.partition(".")[0]
                names[alias.asname or top] = alias.name if alias.asname else top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and (base := _dotted(node.value)):
        return f"{base}.{node.attr}"
    return None


def timing_uses(path: Path) -> Iterator[tuple[int, str]]:
    """(line, what) for each sleep or clock the module at `path` refers to."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    names = _imported_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(node.ctx, ast.Load):
            dotted = _dotted(node)
            if dotted is None:
                continue
            first, dot, rest = dotted.partition(".")
            meant = names.get(first, first) + dot + rest
            if meant in SLEEPS or meant in CLOCKS:
                found.append((node.lineno, node.col_offset, meant))
    for line, _, meant in sorted(found):
        yield line, meant


def wait_problems(root: Path, allowed: Mapping[str, str]) -> list[str]:
    """Uses of a sleep or a clock in the modules under `root` that `allowed` does not excuse,
    and entries of `allowed` that excuse nothing, name no module or give no reason."""
    uses = {path.relative_to(root).as_posix(): list(timing_uses(path))
            for path in sorted(root.rglob("*.py"))
            if not any(part.startswith("vendored_") for part in path.relative_to(root).parts)}
    problems = []
    for path, found in uses.items():
        if path in allowed:
            continue
        for line, meant in found:
            if meant in SLEEPS:
                problems.append(f"{path}:{line}: {meant}: wait on the condition itself (an "
                                "event, or waiting.wait_until), not a fixed time")
            else:
                problems.append(f"{path}:{line}: {meant}: a test does not time things: wait "
                                "with waiting.wait_until; speed is measured in benchmarks/")
    for path, reason in allowed.items():
        if path not in uses:
            problems.append(f"{path} is allowed to sleep or read the clock but does not "
                            "exist: drop its entry")
        elif not uses[path]:
            problems.append(f"{path} is allowed to sleep or read the clock but does neither: "
                            "drop its entry")
        elif not reason.strip():
            problems.append(f"{path} is allowed to sleep or read the clock without a reason: "
                            "give one")
    return problems


def test_no_test_sleeps_or_reads_the_clock_unless_the_allow_list_says_why():
    assert wait_problems(TESTS, ALLOWED) == []


def test_sleeps_and_clocks_however_imported_and_stale_or_unexplained_entries_are_caught(
        tmp_path):
    planted = {
        "test_sleep.py": "import time\n\n\ndef test_a():\n    time.sleep(0.5)\n",
        "deep/test_elapsed.py": "import time as t\n\n\ndef test_b():\n    began = t.monotonic()\n"
                                "    assert t.monotonic() - began < 30\n",
        "test_aliases.py": "import asyncio\nfrom time import perf_counter, sleep as nap\n\n\n"
                           "async def test_c():\n    nap(1)\n    await asyncio.sleep(2)\n"
                           "    return perf_counter\n",
        "helpers.py": "import asyncio\nimport time\n\n\nasync def later():\n"
                      "    await asyncio.to_thread(time.sleep, 1)\n",
        "test_clean.py": "import threading\n\n\ndef test_d(sleep=len):\n"
                         "    assert threading.Event().wait(0) is False\n"
                         "    assert sleep('time.sleep(1)') == 13\n",
        "vendored_lib.py": "import time\ntime.sleep(1)\n",
        "waiting.py": "import time\ntime.sleep(0.05)\n",
        "silent.py": "import time\nNOW = time.time()\n",
        "calm.py": "import time\n",
    }
    for name, text in planted.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    allowed = {"waiting.py": "the one wait", "silent.py": " ", "calm.py": "waited once",
               "gone.py": "moved"}
    sleep = "wait on the condition itself (an event, or waiting.wait_until), not a fixed time"
    clock = ("a test does not time things: wait with waiting.wait_until; speed is measured in "
             "benchmarks/")
    assert wait_problems(tmp_path, allowed) == [
        f"deep/test_elapsed.py:5: time.monotonic: {clock}",
        f"deep/test_elapsed.py:6: time.monotonic: {clock}",
        f"helpers.py:6: time.sleep: {sleep}",
        f"test_aliases.py:6: time.sleep: {sleep}",
        f"test_aliases.py:7: asyncio.sleep: {sleep}",
        f"test_aliases.py:8: time.perf_counter: {clock}",
        f"test_sleep.py:5: time.sleep: {sleep}",
        "silent.py is allowed to sleep or read the clock without a reason: give one",
        "calm.py is allowed to sleep or read the clock but does neither: drop its entry",
        "gone.py is allowed to sleep or read the clock but does not exist: drop its entry"]
