"""The house rule on imports: they run one way, from the entry points down to the foundation.

Every module of src/hin belongs to one part (its first name under `hin`) and every part to one
layer; a module imports from its own layer and the layers below, never from a layer above.
No import goes round in a circle, however long: not between parts (`decoding -> checkpoint ->
metrics -> decoding`) and not between the modules of one part (`data.a -> data.b -> data.a`).
The jobs sit on the floors their imports give them: each job one floor above the highest job
it imports. Imports inside functions and under `TYPE_CHECKING` count too. CONTRIBUTING.md
draws the same table, and a test below keeps the two equal. Each check is a function of a
source tree, and each is shown to catch a violation planted in a small tree.
"""

from __future__ import annotations

import ast
from collections import deque
from collections.abc import Iterator, Mapping
from pathlib import Path

from helpers.paths import REPO, SRC

# Top to bottom, one layer a line (name, parts); CONTRIBUTING.md draws the same lines.
# `hin` is the package's own names (`hin.__version__`).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("entry points", ("__main__", "cli", "serve")),
    ("jobs, floor 5", ("demo",)),
    ("jobs, floor 4", ("grounding",)),
    ("jobs, floor 3", ("explain",)),
    ("jobs, floor 2", ("caption", "synth", "training")),
    ("jobs, floor 1", ("evaluate", "extract")),
    ("their parts", ("decoding", "checkpoint", "data", "metrics", "devices")),
    ("model", ("model",)),
    ("config", ("config",)),
    ("foundation", ("hin", "errors", "files", "locks", "processes")),
)

JOBS = "jobs"       # the layers whose names start so are the jobs' floors

Edges = Mapping[str, Mapping[str, str]]     # importer -> {imported: "file:line: a -> b"}


def layer_of(layers: tuple[tuple[str, tuple[str, ...]], ...]) -> dict[str, int]:
    return {part: depth for depth, (_, parts) in enumerate(layers) for part in parts}


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


def module_graph(src: Path) -> dict[str, dict[str, str]]:
    """Every import between two modules of the package, each with where it is written (the
    first place). The package root is left out as an importer: it hands out `hin.Captioner`
    on first use, the package's face and the one import that runs upward."""
    edges: dict[str, dict[str, str]] = {}
    for path in sorted((src / "hin").rglob("*.py")):
        importer = _module_name(path, src)
        if importer == "hin":
            continue
        targets = edges.setdefault(importer, {})
        for line, imported in imports(path, src):
            if imported != importer:
                targets.setdefault(imported, f"{path.relative_to(src)}:{line}: {importer} -> {imported}")
    return edges


def part_graph(edges: Edges) -> dict[str, dict[str, str]]:
    """The imports between parts, each with one module import that makes it."""
    parts: dict[str, dict[str, str]] = {}
    for importer, targets in edges.items():
        for imported, where in targets.items():
            if part_of(importer) != part_of(imported):
                parts.setdefault(part_of(importer), {}).setdefault(part_of(imported), where)
    return parts


def cycles(edges: Edges) -> list[list[str]]:
    """One circle per group of nodes that reach each other: the shortest one through the
    group's first node, as [a, b, ..., a]. Tarjan's strongly connected components."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(set(edges) | {t for targets in edges.values() for t in targets}):
        if node not in index:
            visit(node)
    return [_shortest_circle(group[0], set(group), edges) for group in sorted(groups)]


def _shortest_circle(start: str, group: set[str], edges: Edges) -> list[str]:
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(edges.get(node, {})):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [*reversed(path), start]
            if target in group and target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"{start} is in a strongly connected group but on no circle")


def _describe(circle: list[str], edges: Edges) -> str:
    return " -> ".join(circle) + " (" + "; ".join(
        edges[a][b] for a, b in zip(circle, circle[1:])) + ")"


def violations(src: Path, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Every import against the layers, as `file:line: importer -> imported (why)`, then every
    circle between parts, then every circle between the modules of one part."""
    layer = layer_of(layers)
    edges = module_graph(src)
    found = []
    for importer, targets in edges.items():
        source = part_of(importer)
        for imported, where in targets.items():
            target = part_of(imported)
            if source not in layer or target not in layer:
                found.append(f"{where} ({source if source not in layer else target} is in no layer)")
            elif layer[target] < layer[source]:
                found.append(f"{where} (upward: {target} is above {source})")
    parts = part_graph(edges)
    found += [f"a circle between parts: {_describe(circle, parts)}" for circle in cycles(parts)]
    inside = {importer: {imported: where for imported, where in targets.items()
                         if part_of(imported) == part_of(importer)}
              for importer, targets in edges.items()}
    found += [f"a circle inside {part_of(circle[0])}: {_describe(circle, inside)}"
              for circle in cycles(inside)]
    return found


def unlayered_parts(src: Path, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """Parts of the package that no layer names, imported or not."""
    parts = {part_of(_module_name(path, src)) for path in (src / "hin").rglob("*.py")}
    return sorted(parts - set(layer_of(layers)))


def job_floors(src: Path, jobs: set[str]) -> list[tuple[str, ...]]:
    """The floors the jobs' imports give them, top first: a job that imports no other job is
    on floor 1, any other one floor above the highest job it imports."""
    parts = part_graph(module_graph(src))
    floor: dict[str, int] = {}

    def floor_of(job: str, climbing: tuple[str, ...] = ()) -> int:
        if job in climbing:
            raise AssertionError(f"the jobs import each other in a circle: {climbing + (job,)}")
        if job not in floor:
            below = [floor_of(other, climbing + (job,)) for other in parts.get(job, {})
                     if other in jobs]
            floor[job] = 1 + max(below, default=0)
        return floor[job]

    top = max((floor_of(job) for job in jobs), default=0)
    return [tuple(sorted(job for job in jobs if floor[job] == number))
            for number in range(top, 0, -1)]


def misplaced_jobs(src: Path, layers: tuple[tuple[str, tuple[str, ...]], ...] = LAYERS) -> list[str]:
    """The jobs' floors of `layers` against the floors their imports give them."""
    drawn = [tuple(sorted(parts)) for name, parts in layers if name.startswith(JOBS)]
    computed = job_floors(src, {job for floor in drawn for job in floor})
    if drawn == computed:
        return []
    return [f"the jobs' floors, top first, are {computed}, not {drawn}: "
            "give each job one floor above the highest job it imports"]


def drawn_layers(contributing: str) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The layer table of CONTRIBUTING.md's "Imports run one way" (`name: parts` lines)."""
    section = contributing.split("## Imports run one way", 1)[1]
    table = section.split("```text\n", 1)[1].split("```", 1)[0]
    return tuple((name.strip(), tuple(parts.split()))
                 for name, parts in (line.split(":", 1) for line in table.splitlines()))


def test_imports_run_one_way_without_circles():
    assert violations(SRC) == []


def test_every_part_of_the_package_has_a_layer():
    assert unlayered_parts(SRC) == []


def test_the_jobs_sit_on_the_floors_their_imports_give_them():
    assert misplaced_jobs(SRC) == []


def test_contributing_draws_the_same_layers():
    assert drawn_layers((REPO / "CONTRIBUTING.md").read_text()) == LAYERS


def _plant(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_an_upward_a_lazy_and_circular_imports_of_any_length_are_each_caught(tmp_path):
    src = _plant(tmp_path, {
        "hin/__init__.py": "from hin.config import HINConfig\n",
        "hin/config.py": "",
        # three parts of one layer in a circle, each import one way
        "hin/decoding.py": "from hin import checkpoint\n",
        "hin/checkpoint.py": "from .metrics import cider\n",
        "hin/metrics/__init__.py": "", "hin/metrics/cider.py": "import hin.decoding\n",
        # an upward import inside a function
        "hin/model/__init__.py": "", "hin/model/hin.py": "def f():\n    from ..data import vocab\n",
        # three modules of one part in a circle, one through the package's face
        "hin/data/__init__.py": "from hin.data.vocab import Vocabulary\n",
        "hin/data/vocab.py": "import hin.data.coco\n",
        "hin/data/coco.py": "from hin.data import Vocabulary\n",
        "hin/errors.py": "from hin import HINConfig\n",
        "hin/oddity.py": "from hin import errors\n"})
    assert violations(src) == [
        "hin/errors.py:1: hin.errors -> hin.config (upward: config is above errors)",
        "hin/model/hin.py:2: hin.model.hin -> hin.data.vocab (upward: data is above model)",
        "hin/oddity.py:1: hin.oddity -> hin.errors (oddity is in no layer)",
        "a circle between parts: checkpoint -> metrics -> decoding -> checkpoint "
        "(hin/checkpoint.py:1: hin.checkpoint -> hin.metrics.cider; "
        "hin/metrics/cider.py:1: hin.metrics.cider -> hin.decoding; "
        "hin/decoding.py:1: hin.decoding -> hin.checkpoint)",
        "a circle inside data: hin.data -> hin.data.vocab -> hin.data.coco -> hin.data "
        "(hin/data/__init__.py:1: hin.data -> hin.data.vocab; "
        "hin/data/vocab.py:1: hin.data.vocab -> hin.data.coco; "
        "hin/data/coco.py:1: hin.data.coco -> hin.data)"]


def test_a_part_in_no_layer_is_caught_even_when_nothing_imports_it(tmp_path):
    src = _plant(tmp_path, {"hin/__init__.py": "", "hin/errors.py": "", "hin/loner/__init__.py": ""})
    assert unlayered_parts(src) == ["loner"]


def test_a_job_on_the_wrong_floor_is_caught(tmp_path):
    src = _plant(tmp_path, {"hin/__init__.py": "", "hin/evaluate.py": "", "hin/extract.py": "",
                            "hin/training.py": "from hin import evaluate\n",
                            "hin/demo.py": "import hin.training\nimport hin.extract\n"})
    right = (("jobs, floor 3", ("demo",)), ("jobs, floor 2", ("training",)),
             ("jobs, floor 1", ("evaluate", "extract")))
    assert misplaced_jobs(src, right) == []
    too_low = (("jobs, floor 2", ("demo",)), ("jobs, floor 1", ("evaluate", "extract", "training")))
    assert misplaced_jobs(src, too_low) == [
        "the jobs' floors, top first, are [('demo',), ('training',), ('evaluate', 'extract')], "
        "not [('demo',), ('evaluate', 'extract', 'training')]: give each job one floor above "
        "the highest job it imports"]


def test_a_table_that_differs_from_the_layers_is_caught():
    text = "## Imports run one way\n\n```text\nentry points: __main__ cli\nfoundation:   hin errors\n```\n"
    assert drawn_layers(text) == (("entry points", ("__main__", "cli")), ("foundation", ("hin", "errors")))
    assert drawn_layers(text) != LAYERS
