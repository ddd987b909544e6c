"""The documentation works as written: every `hin` command shown in README.md, CONTRIBUTING.md,
docs/ and benchmarks/README.md parses with the real command line (flags, choices, required
options), blocks marked runnable run for real against demo-shaped data, every `make` target
named exists, and every relative link (and its #anchor) resolves.

Conventions (CONTRIBUTING.md, "Documentation"): commands live in fenced ```bash blocks or in
4-space indented lines starting with `hin`; `[--opt VALUE]` marks an optional flag in a
synopsis; a ```bash block right after a `<!-- runnable -->` line is run by
`test_runnable_blocks_run_as_written` in a folder holding the demo's layout (`data/synth`,
`runs/demo/xe/best.pt`, `runs/demo/scst/best.pt`) and a miniature of the authors' released
COCO folder under its released names (`data/coco`, tests/helpers/coco_miniature.py) for
docs/reproduce.md.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from helpers.coco_miniature import coco_miniature
from helpers.paths import REPO
from hin.checkpoint import save
from hin.cli import build_parser
from hin.config import HINConfig
from hin.data.features import read_attributes
from hin.data.vocab import Vocabulary
from hin.files import read_json
from hin.model import HIN
from hin.synth import GRID_FILE, REGION_FILE, generate

DOCS = [REPO / "README.md", REPO / "CONTRIBUTING.md", REPO / "benchmarks" / "README.md",
        *sorted((REPO / "docs").glob("*.md"))]
RUNNABLE = "<!-- runnable -->"
NEVER_ENDS = ("serve",)      # runnable blocks only parse these: they serve until stopped


@dataclass(frozen=True)
class Command:
    page: Path
    line: int
    text: str                # continuation lines joined, comments removed
    runnable: bool

    def __str__(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}: {self.text}"


def _joined(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines ending in a backslash joined with the next; -> (first line number, text)."""
    joined, start, parts = [], None, []
    for number, line in lines:
        start = number if start is None else start
        parts.append(line.rstrip().removesuffix("\\"))
        if not line.rstrip().endswith("\\"):
            joined.append((start, " ".join(parts)))
            start, parts = None, []
    return joined


def commands(page: Path) -> list[Command]:
    """The shell commands of a page: fenced ```bash blocks and indented `hin ...` lines."""
    lines = page.read_text(encoding="utf-8").splitlines()
    found, index = [], 0
    while index < len(lines):
        line = lines[index]
        if line.strip().startswith("```bash"):
            runnable = index > 0 and lines[index - 1].strip() == RUNNABLE
            body = []
            index += 1
            while not lines[index].strip().startswith("```"):
                body.append((index + 1, lines[index].strip()))
                index += 1
            found += [Command(page, number, text, runnable) for number, text in _joined(body) if text]
        elif line.startswith("    hin ") and not line.startswith("     "):
            block = [(index + 1, line.strip())]
            while block[-1][1].endswith("\\"):
                index += 1
                block.append((index + 1, lines[index].strip()))
            found += [Command(page, number, text, False) for number, text in _joined(block)]
        index += 1
    return found


ALL = [command for page in DOCS for command in commands(page)]


def hin_arguments(command: Command) -> list[str] | None:
    """The arguments after `hin` (also `torchrun ... -m hin`), or None for other commands."""
    words = shlex.split(command.text, comments=True)
    if words[:1] == ["hin"]:
        return words[1:]
    if words[:1] == ["torchrun"] and "-m" in words and words[words.index("-m") + 1] == "hin":
        return words[words.index("-m") + 2:]
    return None


def subparser(arguments: list[str]):
    """The argparse parser of `hin A [B]` (the deepest subcommand named)."""
    parser = build_parser()
    for word in arguments[:2]:
        choices = next((a.choices for a in parser._actions if a.choices and isinstance(a.choices, dict)), None)
        if not choices or word not in choices:
            break
        parser = choices[word]
    return parser


def test_the_docs_show_commands_and_mark_some_runnable():
    """Guards the collector itself: a change of convention that hid every command fails here."""
    hin = [c for c in ALL if hin_arguments(c) is not None]
    assert len(hin) > 30
    assert {hin_arguments(c)[0] for c in hin} >= {"train", "evaluate", "caption", "explain", "serve", "extract"}
    assert sum(c.runnable for c in ALL) >= 5


@pytest.mark.parametrize("command", [c for c in ALL if hin_arguments(c) is not None], ids=str)
def test_every_hin_command_in_the_docs_parses(command, capsys):
    arguments = hin_arguments(command)
    if any(word.startswith("[") for word in arguments):       # a synopsis: every flag must exist
        parser = subparser(arguments)
        known = {option for action in parser._actions for option in action.option_strings}
        named = {word.strip("[]").split("=")[0] for word in arguments if word.strip("[").startswith("--")}
        assert named <= known, f"{command}: unknown options {sorted(named - known)}"
        return
    try:
        build_parser().parse_args(arguments)
    except SystemExit:
        pytest.fail(f"{command}\n{capsys.readouterr().err}")


@pytest.mark.parametrize("command", [c for c in ALL if shlex.split(c.text)[:1] == ["make"]], ids=str)
def test_every_make_target_in_the_docs_exists(command):
    targets = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.MULTILINE))
    named = [word for word in shlex.split(command.text, comments=True)[1:] if "=" not in word]
    assert set(named) <= targets, command


FENCED = re.compile(r"^```.*?^```", flags=re.MULTILINE | re.DOTALL)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    return {slug(match) for match in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("page", DOCS, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    text = FENCED.sub("", page.read_text(encoding="utf-8"))
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue                                  # http:, https:, mailto:
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading #{anchor} in {resolved.relative_to(REPO)}")
    assert broken == []


# ---- runnable blocks, for real ----------------------------------------------------------

def demo_layout(root: Path) -> None:
    """What `make demo` leaves behind, quickly: the synthetic world in data/synth and two
    untrained small HIN checkpoints (recording the world's extractors, so they caption
    pictures) as runs/demo/xe/best.pt and runs/demo/scst/best.pt."""
    data = root / "data" / "synth"
    generate(data, progress=False)
    vocabulary = read_json(data / "vocab.json", "vocabulary")
    features = {"grid": read_attributes(data / GRID_FILE), "region": read_attributes(data / REGION_FILE)}
    for seed, stage in enumerate(("xe", "scst")):
        torch.manual_seed(seed)
        model = HIN(HINConfig(vocab_size=len(Vocabulary.from_dict(vocabulary)), num_layers=1, d_model=16,
                              num_heads=2, d_ff=32, dropout=0.0, grid_dim=int(features["grid"]["feature_dim"]),
                              region_dim=int(features["region"]["feature_dim"]))).eval()
        save(root / "runs" / "demo" / stage / "best.pt", model, vocabulary=vocabulary, features=features)


@pytest.mark.slow
def test_runnable_blocks_run_as_written(tmp_path):
    demo_layout(tmp_path)
    coco_miniature(tmp_path)
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    ran = []
    for command in (c for c in ALL if c.runnable):
        arguments = hin_arguments(command)
        assert arguments is not None, f"{command}: a runnable block holds only hin commands"
        if arguments[0] in NEVER_ENDS:
            build_parser().parse_args(arguments)
            continue
        done = subprocess.run([sys.executable, "-m", "hin", *arguments], cwd=tmp_path, env=environment,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        ran.append(arguments[0])
    assert {"caption", "explain", "evaluate", "train", "import-checkpoint"} <= set(ran)


def test_the_model_in_python_runs_as_written(tmp_path, monkeypatch, capsys):
    """docs/evaluation.md's "The model in Python" block, executed as it stands."""
    page = (REPO / "docs" / "evaluation.md").read_text(encoding="utf-8")
    block = re.search(r"## The model in Python\n\n```python\n(.*?)```", page, re.S)[1]
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/evaluation.md", "exec"), {})
    shown = capsys.readouterr().out.splitlines()
    assert shown[0] == "first" and shown[1].startswith("  1. ") and (tmp_path / "model.pt").is_file()
