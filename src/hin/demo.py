"""The offline demo behind `make demo`: the whole pipeline on the bundled synthetic dataset.

Generates the dataset (once), trains cross-entropy then a short SCST, evaluates both on
the test split next to a blind baseline (the most frequent training caption for every
image), shows a few captions against their references and says where everything is. It
ends with pictures: held-out test pictures captioned from their PNG files, attention
figures of the XE and SCST models side by side, and how often their attention lands on the
objects they name (hin.grounding), beside chance.
It only orchestrates: every step is the same library call the `hin` commands make.

The runs folder is the demo's own: it marks it with `.hin-demo` and replaces only its own
subfolders on the next run. It never deletes what it did not write: a folder holding anything
else is refused unless `force=True`, and even then only the demo's subfolders are replaced.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hin.caption import Captioner
from hin.config import RunConfig, find_config
from hin.data.coco import load_splits
from hin.data.errors import DataError
from hin.errors import UsageError
from hin.evaluate import evaluate
from hin.explain import INDEX_FILE, PAPER_FILE, explain, write_figures
from hin.explain.paper import PaperStyle
from hin.files import write_text
from hin.grounding import measure
from hin.metrics import METRIC_NAMES, score_captions
from hin.synth import (
    FORMAT_VERSION,
    GRID_FILE,
    IMAGES_DIR,
    MANIFEST_FILE,
    REGION_FILE,
    generate,
    read_scenes,
)
from hin.training.loop import TrainingInterrupted
from hin.training.run import start
from hin.training.rundir import BEST

MARKER = ".hin-demo"
OWN_ENTRIES = ("xe", "scst", "eval", "explain")   # what the demo writes besides MARKER


class DemoInterrupted(RuntimeError):
    """Ctrl-C or SIGTERM stopped the demo; the message says where it stood."""


def _config(folder: str | None, name: str) -> Path:
    return find_config(name) if folder is None else Path(folder) / f"{name}.yaml"


def _current(data: Path) -> bool:
    """The dataset is there and written by this version of the generator (with pictures)."""
    manifest = data / MANIFEST_FILE
    return manifest.is_file() and json.loads(manifest.read_text()).get("version") == FORMAT_VERSION


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def prepare_runs(runs: Path, force: bool = False) -> None:
    """Make `runs` the demo's folder, removing only what an earlier demo wrote there."""
    if runs.exists() and not runs.is_dir():
        raise UsageError(f"--runs {runs} is a file; give a folder for the demo's runs")
    present = sorted(entry.name for entry in runs.iterdir()) if runs.exists() else []
    demo_wrote = (*OWN_ENTRIES, MARKER) if (runs / MARKER).is_file() else ()
    foreign = [name for name in present if name not in demo_wrote]
    if foreign and not force:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise UsageError(f"--runs {runs} holds files the demo did not write ({shown}); give a "
                         "new or empty folder, or pass --force to replace only its "
                         f"{', '.join(name + '/' for name in OWN_ENTRIES)} (other files are kept)")
    for name in OWN_ENTRIES:
        if (runs / name).is_dir():
            shutil.rmtree(runs / name)
        elif (runs / name).exists():
            (runs / name).unlink()
    runs.mkdir(parents=True, exist_ok=True)
    write_text(runs / MARKER, "written by `hin demo`; it replaces "
               f"{', '.join(name + '/' for name in OWN_ENTRIES)} here on its next run\n")


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C: one DemoInterrupted, not a traceback. Training
    installs its own handlers meanwhile (it saves last.pt first) and raises TrainingInterrupted."""
    def terminate(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = None
    with contextlib.suppress(ValueError):   # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    except TrainingInterrupted as stopped:
        raise DemoInterrupted(f"interrupted during training: {stopped}") from None
    except KeyboardInterrupt:
        raise DemoInterrupted("interrupted; run `hin demo` again to start over") from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def run_demo(data_dir: str = "data/synth", run_dir: str = "runs/demo",
             configs: str | None = None, force: bool = False) -> dict[str, dict[str, float]]:
    """Run the demo; returns the test-split scores of each system. `configs` is a folder with
    synth_xe.yaml and synth_scst.yaml (default: the ones shipped with hin). Raises
    DemoInterrupted on Ctrl-C or SIGTERM."""
    with _interruptible():
        return _run_demo(Path(data_dir), Path(run_dir), configs, force)


def _run_demo(data: Path, runs: Path, configs: str | None,
              force: bool) -> dict[str, dict[str, float]]:
    began = time.perf_counter()
    prepare_runs(runs, force)
    if not _current(data):
        _stage(f"generating the synthetic dataset in {data}")
        generate(data, overwrite=True)
    paths = [f"data.annotations={data}", f"data.grid_features={data}/grid.hdf5",
             f"data.region_features={data}/region.hdf5", f"data.vocabulary={data}/vocab.json"]

    _stage("cross-entropy training (validation split selects the best epoch)")
    xe = RunConfig.load(_config(configs, "synth_xe"), [f"run_dir={runs}/xe", *paths])
    xe_best = start(xe)
    _stage("self-critical training (CIDEr-D reward), from the best XE checkpoint")
    scst = RunConfig.load(_config(configs, "synth_scst"), [f"run_dir={runs}/scst", *paths])
    scst_best = start(scst, init=xe_best)

    _stage("evaluation on the test split (never seen during training)")
    results = {}
    for stage, checkpoint in (("xe", xe_best), ("scst", scst_best)):
        results[f"HIN {stage.upper()}"] = evaluate([checkpoint], "test", xe.data,
                                                   out_dir=runs / "eval" / stage, progress=False)
    test = load_splits(xe.data.annotations, ["train", "test"])
    blind_caption = Counter(test["train"].captions()).most_common(1)[0][0]
    references = test["test"].references()
    blind = score_captions({i: blind_caption for i in references}, references, progress=False)

    table = {"blind baseline": blind}
    for name, evaluation in results.items():
        if evaluation.report is None:
            raise DataError(f"{name}: the test split of {data} holds no reference captions to score")
        table[name] = evaluation.report
    print(f"\nTest split, {len(references)} images (blind baseline: \"{blind_caption}\" for every "
          "image). Scores x100:")
    print(f"{'metric':<8}" + "".join(f"{name:>16}" for name in table))
    for metric in METRIC_NAMES:
        cells = [f"{100 * r.scores[metric]:16.1f}" if metric in r.scores else f"{'n/a':>16}"
                 for r in table.values()]
        print(f"{metric:<8}" + "".join(cells))
    for metric, reason in blind.unavailable.items():
        print(f"{metric}: unavailable ({reason})")
    print("collapse immediate repeats: on")

    print("\nA few test images (SCST model):")
    captions = results["HIN SCST"].captions
    for image_id in list(references)[:4]:
        print(f"  image {image_id}: {captions[image_id]}")
        for reference in references[image_id][:2]:
            print(f"      reference: {reference}")

    _look_at_pictures(data, runs, xe_best, scst_best, list(references))

    print(f"\nDone in {time.perf_counter() - began:.0f} s. Runs, logs and checkpoints: "
          f"{runs}/xe, {runs}/scst ({BEST} is the validation-selected model); captions and "
          f"metrics: {runs}/eval/*/captions.json, metrics.json. Curves: "
          f"`hin plot {runs}/xe` and `hin plot {runs}/scst`.")
    return {name: dict(report.scores) for name, report in table.items()}


FIGURES = 6
DEMO_LABELS = ("HIN (XE)", "HIN (SCST)")   # both columns are HIN: the demo trains no baseline
DEMO_NOTE = ("Both columns are HIN, after cross-entropy (XE) and after SCST: the demo trains no "
             "separate baseline model, as the paper's figure compares.")
CAPTIONED_PICTURES = 3


def _look_at_pictures(data: Path, runs: Path, xe_best: Path, scst_best: Path,
                      test_ids: list[int]) -> None:
    """Caption test pictures from their files (`hin caption`), draw `hin explain --paper`
    figures (XE as the baseline beside SCST), and measure grounding of both models on the
    whole test split."""
    _stage("captioning held-out test pictures from their PNG files (`hin caption`)")
    pictures = [data / IMAGES_DIR / f"{image_id}.png" for image_id in test_ids[:CAPTIONED_PICTURES]]
    for result in Captioner(scst_best)(pictures):
        print(f"  {result.source}: {result.captions[0].text}")

    _stage("where the models look: `hin explain --paper` figures and grounding (test split)")
    explanations = explain([xe_best, scst_best], grid=data / GRID_FILE, region=data / REGION_FILE,
                           images=data / IMAGES_DIR, annotations=data, split="test", words="grid",
                           labels=DEMO_LABELS)
    figures = write_figures(explanations[:FIGURES], runs / "explain", paper=True,
                            paper_style=PaperStyle(note=DEMO_NOTE))
    print("Pointing game: does the peak of the decoder's grid attention at a generated shape "
          "(colour) word, mean over layers and heads, fall in the box of an object of that shape "
          "(colour)? Box mass: the share of the encoder's global grid token attention on object "
          "boxes. Chance beside each.")
    for attribute in ("shape", "colour"):
        scenes = read_scenes(data, attribute)
        for column in range(2):
            print(f"  {attribute} words, " + measure(explanations, scenes, column).summary())
    print(f"The paper's Fig. 6 layout, {FIGURES} test pictures: {runs / 'explain' / PAPER_FILE}.png "
          "(and .pdf)")
    print(f"Figures (XE | SCST, per-word maps below): {', '.join(map(str, figures))}")
    print(f"All of them: {runs / 'explain' / INDEX_FILE}. Your own drawing (shapes of the "
          "world's colours on white): `hin caption my.png --checkpoint "
          f"{scst_best}` and `hin explain my.png --compare {xe_best} {scst_best} "
          f"--labels {' '.join(repr(label) for label in DEMO_LABELS)} --paper --words`.")
