"""The offline demo behind `make demo`: the whole pipeline on the bundled synthetic dataset.

Generates the dataset (once), trains cross-entropy then a short SCST, evaluates both on
the test split next to a blind baseline (the most frequent training caption for every
image), shows a few captions against their references and says where everything is.
It only orchestrates: every step is the same library call the `hin` commands make.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

from hin.config import RunConfig
from hin.data.coco import load_splits
from hin.data.synth import MANIFEST_FILE, generate
from hin.evaluate import evaluate
from hin.metrics import METRIC_NAMES, score_captions
from hin.training.loop import BEST, start


def _stage(title: str) -> None:
    print(f"\n== {title}", flush=True)


def run_demo(data_dir: str = "data/synth", run_dir: str = "runs/demo",
             configs: str = "configs") -> dict[str, dict[str, float]]:
    """Run the demo; returns the test-split scores of each system."""
    began = time.perf_counter()
    data, runs, configs = Path(data_dir), Path(run_dir), Path(configs)
    if not (data / MANIFEST_FILE).is_file():
        _stage(f"generating the synthetic dataset in {data}")
        generate(data)
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

    print(f"\nDone in {time.perf_counter() - began:.0f} s. Runs, logs and checkpoints: "
          f"{runs}/xe, {runs}/scst ({BEST} is the validation-selected model); captions and "
          f"metrics: {runs}/eval/*/captions.json, metrics.json. Curves: "
          f"`hin plot {runs}/xe` and `hin plot {runs}/scst`.")
    return {name: dict(report.scores) for name, report in table.items()}
