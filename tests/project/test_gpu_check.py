"""`make gpu-check` (benchmarks/gpu_check.py) on a bare machine: the modules it uses import
without spaCy, pycocoevalcap and pytest, and `--device cpu --quick` passes every check there."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.paths import REPO
from hin.data.vocab import tokenize
from hin.synth import describe, random_scene

ROOT = REPO
ABSENT = ("spacy", "pycocoevalcap", "pytest")
sys.path.insert(0, str(ROOT / "benchmarks"))


def bare_python(tmp_path: Path) -> dict[str, str]:
    """The environment of a machine without spaCy, pycocoevalcap and pytest: a sitecustomize
    that makes importing them fail, inherited by every child process (torchrun's too)."""
    blocker = tmp_path / "bare"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in ABSENT))
    return dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocker), str(ROOT / "src")]),
                OMP_NUM_THREADS="1")


def test_modules_of_the_gpu_check_import_without_spacy_pycocoevalcap_and_pytest(tmp_path):
    code = ("import importlib.util, sys\n"
            f"assert all(importlib.util.find_spec(n) is None for n in {ABSENT!r})\n"
            "import hin.training.run, hin.decoding, hin.checkpoint, hin.metrics, hin.evaluate\n"
            "import hin.caption, hin.explain, hin.synth, hin.cli\n"
            f"sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); import gpu_check\n"
            "from hin.metrics import MetricsError, score_captions\n"
            "try:\n    score_captions({1: 'a dog'}, {1: ['a dog']}, java='java')\n"
            "except MetricsError as error:\n    print(error)\n")
    result = subprocess.run([sys.executable, "-c", code], env=bare_python(tmp_path),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert "the COCO metrics need pycocoevalcap" in result.stdout
    assert "pip install pycocoevalcap" in result.stdout


def test_synthetic_captions_split_into_words_as_spacy_tokenises_them():
    """What lets the GPU check train on the synthetic set where spaCy is absent."""
    from gpu_check import split_words

    rng = np.random.default_rng(0)
    captions = [caption for _ in range(300) for caption in describe(random_scene(rng), rng)]
    assert any("," in caption for caption in captions)
    for caption in captions:
        split = [token.text for token in split_words(caption.lower())]
        assert [word for word in split if word != ","] == tokenize(caption)


@pytest.mark.slow
def test_gpu_check_quick_on_cpu_passes_every_check_on_a_bare_machine(tmp_path):
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), str(out),
                             "--device", "cpu", "--quick"], cwd=tmp_path, env=bare_python(tmp_path),
                            capture_output=True, text=True, check=False, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["ok"] and report["quick"] and report["device"] == "cpu"
    rows = {(row["section"], row["setting"]): row["result"] for row in report["rows"]}
    sections = {section for section, _ in rows}
    assert {"device", "cuda tests", "XE step", "SCST step", "beam search", "fp32 beams",
            "torchrun", "resume"} <= sections
    assert rows[("cuda tests", "pytest -m cuda")] == "not run: pytest is not installed"
    assert "words split from punctuation (spaCy absent)" in rows[("device", "packages")]
    assert len([s for s, _ in rows if s == "XE step"]) == 4       # pairs/grouped x fp32/bf16
    assert len([s for s, _ in rows if s == "beam search"]) == 4   # 2 batches x fp32/bf16
    assert rows[("torchrun", "--nproc-per-node 1, 6 steps, batch 10")].startswith(
        "backend gloo, world size 1, step 6")
    assert rows[("resume", "6 steps vs 3 + resumed 3 on cpu")] == "bit-exact"
    assert rows[("torchrun", "group of one vs a single process, 6 steps")] == "bit-exact"
    markdown = (out / "gpu_check.md").read_text()
    assert markdown.startswith("| check | setting | result | ok |")
    assert "**no**" not in markdown
