"""The house rule on imports: they run one way, from the entry points down to the config.

Every module of src/hin belongs to one layer (by its first name under `hin`); a module may
import from its own layer and the layers below it, never from a layer above, and two parts of
one layer never import each other. Imports inside functions and under `TYPE_CHECKING` count
too. CONTRIBUTING.md draws the same table, and a test below keeps the two equal.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"

# Top to bottom. `hin` is the package's own names (`hin.__version__`).
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__main__", "cli", "serve"),                                                 # entry points
    ("evaluate", "caption", "explain", "training", "extract", "demo", "grounding", "synth"),  # jobs
    ("decoding",),                                             # features -> captions
    ("checkpoint", "data", "metrics", "devices"),                                 # their parts
    ("model",),
    ("config",),
    ("hin", "errors", "files", "locks", "processes"),                             # foundation
)
LAYER = {part: depth for depth, parts in enumerate(LAYERS) for part in parts}


def part_of(module: str) -> str:
    """`hin.data.vocab` -> `data`; the package itself -> `hin`."""
    names = module.split(".")
    return names[1] if len(names) > 1 else "hin"


def _module_name(path: Path, src: Path) -> str:
    names = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(names[:-1] if names[-1] == "__init__" else names)


def _is_module(src: Path, module: str) -> bool:
    path = src.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _root_names(src: Path) -> dict[str, str]:
    """Where the package root's names come from: `Captioner` -> `hin.caption` (handed out
    lazily by its `__getattr__`), `HINConfig` -> `hin.config`."""
    names = {}
    for node in ast.walk(ast.parse((src / "hin" / "__init__.py").read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.update({alias.name: node.module for alias in node.names})
    return names


def imports(path: Path, src: Path) -> Iterator[tuple[int, str]]:
    """(line, imported hin module) for every import in `path`, relative ones resolved and
    `from hin import NAME` taken to the module NAME lives in."""
    module = _module_name(path, src)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    root_names = _root_names(src)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names
                        if alias.name.split(".")[0] == "hin")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            if base.split(".")[0] != "hin":
                continue
            for alias in node.names:
                if _is_module(src, f"{base}.{alias.name}"):
                    yield node.lineno, f"{base}.{alias.name}"
                elif base == "hin":
                    yield node.lineno, root_names.get(alias.name, "hin")
                else:
                    yield node.lineno, base


def violations(src: Path) -> list[str]:
    """Every import against the layers, as `file:line: importer -> imported (why)`."""
    found, edges = [], {}
    for path in sorted((src / "hin").rglob("*.py")):
        importer = _module_name(path, src)
        if importer == "hin":
            continue         # the package's face: `hin.Captioner` is imported on first use
        source = part_of(importer)
        for line, imported in imports(path, src):
            target = part_of(imported)
            where = f"{path.relative_to(src)}:{line}: {importer} -> {imported}"
            if source not in LAYER or target not in LAYER:
                found.append(f"{where} ({source if source not in LAYER else target} is in no layer)")
            elif LAYER[target] < LAYER[source]:
                found.append(f"{where} (upward: {target} is above {source})")
            elif source != target:
                edges.setdefault((source, target), where)
    found += [f"{where} and {edges[target, source]} (a cycle within one layer)"
              for (source, target), where in edges.items()
              if (target, source) in edges and source < target]
    return found


def test_imports_run_one_way():
    assert violations(SRC) == []


def test_every_part_of_the_package_has_a_layer():
    parts = {part_of(_module_name(path, SRC)) for path in (SRC / "hin").rglob("*.py")}
    assert sorted(parts - set(LAYER)) == []


def test_contributing_draws_the_same_layers():
    section = (REPO / "CONTRIBUTING.md").read_text().split("## Imports run one way", 1)[1]
    table = section.split("```text\n", 1)[1].split("```", 1)[0]
    assert tuple(tuple(line.split(":", 1)[1].split()) for line in table.splitlines()) == LAYERS


def test_an_upward_a_lazy_and_a_circular_import_are_each_caught(tmp_path):
    files = {"hin/__init__.py": "from hin.config import HINConfig\n",
             "hin/config.py": "",
             "hin/metrics.py": "from hin import checkpoint\n",
             "hin/checkpoint.py": "from . import metrics\n",
             "hin/model/__init__.py": "",
             "hin/model/hin.py": "def f():\n    from ..data import vocab\n",
             "hin/data/__init__.py": "", "hin/data/vocab.py": "import hin.model\n",
             "hin/errors.py": "from hin import HINConfig\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert violations(tmp_path) == [
        "hin/errors.py:1: hin.errors -> hin.config (upward: config is above errors)",
        "hin/model/hin.py:2: hin.model.hin -> hin.data.vocab (upward: data is above model)",
        "hin/checkpoint.py:1: hin.checkpoint -> hin.metrics and "
        "hin/metrics.py:1: hin.metrics -> hin.checkpoint (a cycle within one layer)"]
