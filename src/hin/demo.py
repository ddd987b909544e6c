"""The offline demo behind `make demo`: the whole pipeline on the bundled synthetic dataset.

Generates the dataset (once), trains cross-entropy then a short SCST, evaluates both on
the test split next to a blind baseline (the most frequent training caption for every
image), shows a few captions against their references and says where everything is. It
ends with pictures: held-out test pictures captioned from their PNG files, attention
figures of the XE and SCST models side by side, and how often their attention lands on the
objects they name (hin.grounding), beside chance.
It only orchestrates: every step is the same library call the `hin` commands make.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from pathlib import Path

from hin.caption import Captioner
from hin.config import RunConfig
from hin.data.coco import load_splits
from hin.data.synth import FORMAT_VERSION, GRID_FILE, IMAGES_DIR, MANIFEST_FILE, REGION_FILE, generate, read_scenes
from hin.evaluate import evaluate
from hin.explain import INDEX_FILE, explain, write_figures
from hin.grounding import measure
from hin.metrics import METRIC_NAMES, score_captions
from hin.training.loop import BEST, start


def _current(data: Path) -> bool:
    """The dataset is there and written by this version of the generator (with pictures)."""
    manifest = data / MANIFEST_FILE
    return manifest.is_file() and json.loads(manifest.read_text()).get("version") == FORMAT_VERSION


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(data_dir: str = "data/synth", run_dir: str = "runs/demo",
             configs: str = "configs") -> dict[str, dict[str, float]]:
    """Run the demo; returns the test-split scores of each system."""
    began = time.perf_counter()
    data, runs, configs = Path(data_dir), Path(run_dir), Path(configs)
    if not _current(data):
        _stage(f"generating the synthetic dataset in {data}")
        generate(data, overwrite=True)
    if runs.exists():
        shutil.rmtree(runs)
    paths = [f"data.annotations={data}", f"data.grid_features={data}/grid.hdf5",
             f"data.region_features={data}/region.hdf5", f"data.vocabulary={data}/vocab.json"]

    _stage("cross-entropy training (validation split selects the best epoch)")
    xe = RunConfig.load(configs / "synth_xe.yaml", [f"run_dir={runs}/xe", *paths])
    xe_best = start(xe)
    _stage("self-critical training (CIDEr-D reward), from the best XE checkpoint")
    scst = RunConfig.load(configs / "synth_scst.yaml", [f"run_dir={runs}/scst", *paths])
    scst_best = start(scst, init=xe_best)

    _stage("evaluation on the test split (never seen during training)")
    results = {}
    for name, checkpoint in (("HIN XE", xe_best), ("HIN SCST", scst_best)):
        evaluation = evaluate([checkpoint], "test", xe.data, out_dir=runs / "eval" / name[4:].lower(),
                              progress=False)
        results[name] = evaluation
    test = load_splits(xe.data.annotations, ["train", "test"])
    blind_caption = Counter(test["train"].captions()).most_common(1)[0][0]
    references = test["test"].references()
    blind = score_captions({i: blind_caption for i in references}, references, progress=False)

    table = {"blind baseline": blind, **{n: e.report for n, e in results.items()}}
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
CAPTIONED_PICTURES = 3


def _look_at_pictures(data: Path, runs: Path, xe_best: Path, scst_best: Path,
                      test_ids: list[int]) -> None:
    """Caption test pictures from their files (`hin caption`), draw `hin explain --compare`
    figures, and measure grounding of both models on the whole test split."""
    _stage("captioning held-out test pictures from their PNG files (`hin caption`)")
    pictures = [data / IMAGES_DIR / f"{image_id}.png" for image_id in test_ids[:CAPTIONED_PICTURES]]
    for result in Captioner(scst_best)(pictures):
        print(f"  {result.source}: {result.captions[0].text}")

    _stage("where the models look: `hin explain --compare` figures and grounding (test split)")
    explanations = explain([xe_best, scst_best], grid=data / GRID_FILE, region=data / REGION_FILE,
                           images=data / IMAGES_DIR, annotations=data, split="test", words="grid")
    figures = write_figures(explanations[:FIGURES], runs / "explain")
    print("Pointing game: does the peak of the decoder's grid attention at a generated shape "
          "(colour) word, mean over layers and heads, fall in the box of an object of that shape "
          "(colour)? Box mass: the share of the encoder's global grid token attention on object "
          "boxes. Chance beside each.")
    for attribute in ("shape", "colour"):
        scenes = read_scenes(data, attribute)
        for column in range(2):
            print(f"  {attribute} words, " + measure(explanations, scenes, column).summary())
    print(f"Figures (XE | SCST, per-word maps below): {', '.join(map(str, figures))}")
    print(f"All of them: {runs / 'explain' / INDEX_FILE}. Your own drawing (shapes of the "
          "world's colours on white): `hin caption my.png --checkpoint "
          f"{scst_best}` and `hin explain my.png --checkpoint {scst_best} --compare {xe_best} "
          "--words`.")
