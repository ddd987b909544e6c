"""Benchmark: fast CIDEr-D (the SCST reward) against pycocoevalcap, and a full metric run.

Prints, CIDEr-D figures on one CPU core:
- the SCST reward case: 50 images x 5 beams scored against 5 references each, with
  `CiderDTable.score` (training document frequencies) and with pycocoevalcap's `Cider` on
  the same captions; tables built from the 1,000 real generated captions of the test
  fixture, and from a COCO-sized corpus (113,287 images x 5 captions) made by shuffling
  the words of those captions, so that the frequency table has COCO's order of size;
- corpus-mode `cider_d` against pycocoevalcap on the 1,000 captions;
- the time of a full `score_captions` run (BLEU, METEOR, ROUGE-L, CIDEr; no SPICE) on them,
  with all the cores the process may use (Linux).

Usage: python benchmarks/cider.py [--no-full-run]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
from pycocoevalcap.cider.cider import Cider

from hin.metrics import CiderDTable, cider_d, score_captions

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / \
    "captions_val2014_fakecap_results.json"
COCO_TRAIN_IMAGES = 113_287


def _milliseconds(function, repeats: int) -> float:
    """Median wall time of one call, in ms, after a warm-up call."""
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _references(captions: dict[int, str]) -> dict[int, list[str]]:
    """Five references per image: the next four images' captions and its own, edited."""
    ids = sorted(captions)
    return {i: [captions[ids[(k + s) % len(ids)]] for s in range(1, 5)]
            + [captions[i].replace(" a ", " the ", 1)] for k, i in enumerate(ids)}


def _coco_sized(captions: list[str], rng: np.random.Generator) -> dict[int, list[str]]:
    """113,287 images x 5 captions, each a fixture caption with its words shuffled."""
    words = [caption.split() for caption in captions]
    picks = rng.integers(0, len(words), size=(COCO_TRAIN_IMAGES, 5))
    return {image: [" ".join(rng.permutation(words[p])) for p in row]
            for image, row in enumerate(picks)}


def _scst_case(table: CiderDTable, references: dict, image_ids: list, beams: list[str],
               label: str) -> None:
    beam_images = [i for i in image_ids for _ in range(5)]
    fast = _milliseconds(lambda: table.score(beams, beam_images), repeats=200)
    keyed = {(i, b): beams[5 * k + b] for k, i in enumerate(image_ids) for b in range(5)}
    gts = {key: references[key[0]] for key in keyed}
    res = {key: [caption] for key, caption in keyed.items()}
    slow = _milliseconds(lambda: Cider().compute_score(gts, res), repeats=20)
    print(f"SCST reward, 50 images x 5 beams vs 5 refs, {label}: "
          f"CiderDTable.score {fast:.2f} ms, pycocoevalcap Cider {slow:.1f} ms "
          f"({slow / fast:.0f}x faster)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-full-run", action="store_true", help="skip the score_captions run")
    args = parser.parse_args()
    all_cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cores)})  # CIDEr-D timings are single-core figures
    captions = {e["image_id"]: e["caption"] for e in json.loads(FIXTURE.read_text())}
    references = _references(captions)
    ids = sorted(captions)
    image_ids = ids[:50]
    beams = [captions[ids[(7 * k + b) % len(ids)]] for k in range(50) for b in range(5)]

    table = CiderDTable.from_references(references, tokenized=True)
    _scst_case(table, references, image_ids, beams,
               f"table of {len(table)} images ({len(table.ngram_keys):,} n-grams)")

    rng = np.random.default_rng(0)
    start = time.perf_counter()
    coco_references = _coco_sized(list(captions.values()), rng)
    coco_table = CiderDTable.from_references(coco_references, tokenized=True)
    built = time.perf_counter() - start
    coco_ids = list(range(50))
    coco_beams = [coco_references[(7 * k + b) % COCO_TRAIN_IMAGES][b % 5]
                  for k in range(50) for b in range(5)]
    _scst_case(coco_table, coco_references, coco_ids, coco_beams,
               f"COCO-sized table ({len(coco_table):,} images, "
               f"{len(coco_table.ngram_keys):,} n-grams, built in {built:.0f} s)")

    fast = _milliseconds(lambda: cider_d(captions, references), repeats=20)
    res = {i: [captions[i]] for i in references}
    slow = _milliseconds(lambda: Cider().compute_score(references, res), repeats=3)
    print(f"corpus mode, 1,000 captions vs 5 refs: cider_d {fast:.1f} ms, "
          f"pycocoevalcap Cider {slow:.0f} ms ({slow / fast:.0f}x faster)")

    if not args.no_full_run:
        os.sched_setaffinity(0, all_cores)  # METEOR's Java start-up overlaps the rest
        start = time.perf_counter()
        report = score_captions(captions, references, spice=False, progress=False)
        seconds = time.perf_counter() - start
        print(f"full metric run (PTB tokenisation, BLEU, METEOR, ROUGE-L, CIDEr; no SPICE) "
              f"on 1,000 captions: {seconds:.1f} s")
        print(report.format_table())


if __name__ == "__main__":
    main()
