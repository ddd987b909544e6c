"""The layout of tests/ (CONTRIBUTING.md, "Layout and tests"): a folder per part of src/hin,
shared code in helpers/, fixtures in conftest.py files and nowhere twice.

Test files are imported by their file name (pytest's default import mode, no __init__.py in
the test folders), so two files of one name would clash; helpers are imported as
`from helpers.x import ...`, never from conftest.py or another test file. The check is a
function of a tests tree, shown to catch each violation planted in a small tree.
"""

import ast
from collections import defaultdict
from pathlib import Path

from helpers.paths import REPO, SRC

OWN_FOLDERS = {"helpers", "fixtures", "project"}   # shared code, data, whole-house tests


def _is_fixture(node: ast.AST) -> bool:
    return isinstance(node, ast.FunctionDef) and any("fixture" in ast.unparse(d) for d in node.decorator_list)


def _imported_modules(tree: ast.AST) -> list[str]:
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _top(path: Path, tests: Path) -> str:
    return path.relative_to(tests).parts[0]


def layout_problems(tests: Path, package: Path) -> list[str]:
    """What in `tests` breaks the layout rules, given the package `package` it mirrors."""
    problems = []
    for folder in sorted(p for p in tests.rglob("*") if p.is_dir() and "__pycache__" not in p.parts):
        relative = folder.relative_to(tests)
        if relative.parts[0] not in OWN_FOLDERS and not (package / relative).is_dir():
            problems.append(f"tests/{relative.as_posix()} names no part of {package.name}: "
                            "name the folder after the part its tests cover")
    files = sorted(p for p in tests.rglob("*.py") if _top(p, tests) != "fixtures")
    by_name = defaultdict(list)
    fixtures = defaultdict(list)
    for path in files:
        relative = path.relative_to(tests).as_posix()
        in_helpers = _top(path, tests) == "helpers"
        if in_helpers == (path.name.startswith("test_") or path.name == "conftest.py"):
            problems.append(f"tests/{relative}: test files and conftest.py outside helpers/, "
                            "everything else in it")
        if path.name.startswith("test_"):
            by_name[path.name].append(relative)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for module in _imported_modules(tree):
            if module.split(".")[0] == "conftest" or module.split(".")[-1].startswith("test_"):
                problems.append(f"tests/{relative} imports {module}: move what it needs to helpers/")
        for node in tree.body:
            if _is_fixture(node):
                fixtures[ast.dump(node)].append(f"tests/{relative}")
            elif path.name == "conftest.py" and isinstance(node, (ast.FunctionDef, ast.ClassDef)) \
                    and not node.name.startswith("pytest_"):
                problems.append(f"tests/{relative} defines {node.name}, which is neither a fixture "
                                "nor a hook: move it to helpers/")
    problems += [f"{len(paths)} test files are called {name} ({', '.join(paths)}): rename all but one"
                 for name, paths in by_name.items() if len(paths) > 1]
    problems += [f"the same fixture is written in {', '.join(paths)}: keep one in a conftest.py"
                 for paths in fixtures.values() if len(paths) > 1]
    return problems


def test_tests_are_laid_out_like_the_package():
    assert layout_problems(REPO / "tests", SRC / "hin") == []


def test_misplaced_files_imports_of_conftest_clashing_names_and_repeated_fixtures_are_caught(tmp_path):
    package, tests = tmp_path / "pkg", tmp_path / "tests"
    (package / "serve").mkdir(parents=True)
    fixture = "import pytest\n\n\n@pytest.fixture\ndef world():\n    return 1\n"
    files = {
        "conftest.py": "def tiny():\n    return 1\n",
        "helpers/tiny.py": "X = 1\n",
        "helpers/test_stray.py": "",
        "serve/test_a.py": "from conftest import tiny\n" + fixture,
        "serve/shared.py": "",
        "servers/test_a.py": "import test_b\n" + fixture,
        "project/test_b.py": "",
    }
    for name, text in files.items():
        (tests / name).parent.mkdir(parents=True, exist_ok=True)
        (tests / name).write_text(text)
    assert layout_problems(tests, package) == [
        "tests/servers names no part of pkg: name the folder after the part its tests cover",
        "tests/conftest.py defines tiny, which is neither a fixture nor a hook: move it to helpers/",
        "tests/helpers/test_stray.py: test files and conftest.py outside helpers/, everything else in it",
        "tests/serve/shared.py: test files and conftest.py outside helpers/, everything else in it",
        "tests/serve/test_a.py imports conftest: move what it needs to helpers/",
        "tests/servers/test_a.py imports test_b: move what it needs to helpers/",
        "2 test files are called test_a.py (serve/test_a.py, servers/test_a.py): rename all but one",
        "the same fixture is written in tests/serve/test_a.py, tests/servers/test_a.py: keep one in a conftest.py",
    ]
