"""COCO-scale rehearsal: every data phase of training and evaluation at COCO's size.

Builds a COCO-shaped data set in a temporary folder: COCO's 123,287 images and 616,767
captions in the two `captions_*2014.json` files, the real Karpathy dev/test annotation-id
files the tests ship (25,000 ids each, five per image) and generated train/restval id files
for the other 113,287 images; captions from a Zipf-distributed pseudo-word vocabulary tuned to
about 10,000 words at min-freq 5, COCO's caption lengths (7+ words, mean about 10.5, a long
tail). Features at the released shapes (grid [256, 1024], regions [10..50, 2048], fp16) are
written for `--images` training images and `--decode-images` validation images only (about
0.63 MB each); a names-only file with all 123,287 ids times the feature check at full size.

Measures wall time, CPU time and the process's peak resident set (sampled every 10 ms) of:
reading annotations and splits, the vocabulary, caption encoding, the CIDEr-D document
frequencies of 113,287 x 5 training references (PTB tokenisation in Java included), the
dataset index, the loader's images/s with 0, 2 and 4 workers from files in the page cache,
one paper-size XE step on this CPU, validation decoding (a sample, extrapolated to 5,000
images; <eos> is made unreachable so that every beam runs all 20 steps: the upper bound),
and the metrics on 5,000 images. Prints a table and projects one full-COCO XE epoch on this
CPU and on a GPU whose XE step rate is `--gpu-captions-per-s` (default: an ESTIMATE from the
step's FLOPs at `--gpu-tflops`, unless a measured figure is given).

Usage: python benchmarks/coco_scale.py [--images 3000] [--decode-images 100] [--json OUT]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch

from common import describe
from hin.config import DecodingConfig, HINConfig
from hin.data.coco import CAPTION_FILES, PART_ID_FILES, Split, load_splits
from hin.data.dataset import CaptionPairs, ImageReferences, make_loader
from hin.data.features import FeatureStore, feature_key
from hin.data.vocab import Vocabulary, tokenize
from hin.decoding import caption_batches
from hin.devices import autocast, resolve_precision
from hin.files import write_json, write_text
from hin.metrics import CiderDTable, cider_d, score_captions
from hin.model import HIN
from hin.training.distributed import Context, EpochOrder
from hin.training.xe import next_token_nll

KARPATHY = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "coco"
COCO_IMAGES = 123_287
COCO_CAPTIONS = 616_767
EVAL_IMAGES = 5_000
TRAIN_IMAGES = COCO_IMAGES - 2 * EVAL_IMAGES
WORD_TYPES = 27_000            # COCO's captions hold about 27k distinct lower-cased words
KEPT_WORDS = 9_000             # rank expected 5 times: about 10k words come out at min-freq 5
GRID_SHAPE = (256, 1024)
REGION_DIM = 2048
BATCH_CAPTIONS = 50            # the paper's batch: 50 captions (10 images x 5 when grouped)
GROUP = 5
H200_BF16_TFLOPS = 989         # dense bf16 peak, NVIDIA's datasheet
SYLLABLES = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]


# -- the data set ----------------------------------------------------------------------------

def zipf_exponent(tokens: int) -> float:
    """The exponent s of p(rank) ~ rank^-s over WORD_TYPES words for which the word of rank
    KEPT_WORDS is expected `min_freq` = 5 times in `tokens` tokens."""
    ranks = np.arange(1, WORD_TYPES + 1, dtype=np.float64)
    low, high = 0.5, 2.0
    for _ in range(60):
        s = (low + high) / 2
        expected = tokens * KEPT_WORDS ** -s / (ranks ** -s).sum()
        low, high = (s, high) if expected > 5 else (low, s)
    return s


def pseudo_words(rng: np.random.Generator) -> list[str]:
    """WORD_TYPES distinct lower-case words of 1-4 syllables, shorter ones for the frequent."""
    words: dict[str, None] = {}
    while len(words) < WORD_TYPES:
        syllables = 1 + sum(len(words) >= size for size in (60, 3000, 20000))
        words.setdefault("".join(rng.choice(SYLLABLES, size=syllables)))
    return list(words)


class CaptionGenerator:
    """COCO-like captions: lengths 7 + NegBin(3, 0.46) words (mean 10.5, tail past 30), words
    drawn by Zipf's law, first letter capitalised and a final full stop as COCO often has."""

    def __init__(self, rng: np.random.Generator, captions: int) -> None:
        self.rng = rng
        self.words = np.array(pseudo_words(rng))
        ranks = np.arange(1, WORD_TYPES + 1, dtype=np.float64)
        probabilities = ranks ** -zipf_exponent(int(captions * 10.5))
        self.cumulative = np.cumsum(probabilities / probabilities.sum())

    def __call__(self, count: int) -> list[str]:
        lengths = 7 + self.rng.negative_binomial(3, 3 / 6.5, size=count)
        picks = np.searchsorted(self.cumulative, self.rng.random(lengths.sum()))
        picks = np.minimum(picks, WORD_TYPES - 1)
        words = self.words[picks].tolist()
        captions, start = [], 0
        for length in lengths.tolist():
            text = " ".join(words[start:start + length])
            start += length
            captions.append(text[0].upper() + text[1:] + ("." if self.rng.random() < 0.6 else ""))
        return captions


def write_annotations(directory: Path, rng: np.random.Generator,
                      generate: CaptionGenerator) -> dict[str, list[int]]:
    """COCO's two caption files and the four Karpathy id files; -> image ids per split."""
    held_out = {name: np.sort(np.load(KARPATHY / PART_ID_FILES[name])) for name in ("val", "test")}
    used = set(np.concatenate(list(held_out.values())).tolist())
    pool = np.setdiff1d(np.arange(1, 900_000), np.fromiter(used, np.int64))
    train_captions = COCO_CAPTIONS - sum(len(ids) for ids in held_out.values())
    train_ids = np.sort(rng.choice(pool, size=train_captions, replace=False))
    image_ids = rng.choice(np.arange(1, 600_000), size=COCO_IMAGES, replace=False)
    owners: dict[str, np.ndarray] = {}
    first = 0
    for name, ids in held_out.items():    # five consecutive annotation ids per image
        owners[name] = image_ids[first:first + len(ids) // GROUP].repeat(GROUP)
        first += len(ids) // GROUP
    train_images = image_ids[first:]
    extra = rng.choice(len(train_images), size=train_captions - GROUP * len(train_images),
                       replace=False)
    owners["train"] = rng.permutation(np.concatenate((train_images.repeat(GROUP),
                                                      train_images[extra])))
    held_out["train"] = train_ids
    restval = rng.random(len(train_ids)) < 0.27          # Karpathy: 30,504 of 113,287 images
    np.save(directory / PART_ID_FILES["train"], train_ids[~restval])
    np.save(directory / PART_ID_FILES["restval"], train_ids[restval])
    for name in ("val", "test"):
        np.save(directory / PART_ID_FILES[name], held_out[name])
    annotations = [{"id": int(ann), "image_id": int(image), "caption": caption}
                   for name in ("train", "val", "test")
                   for ann, image, caption in zip(held_out[name].tolist(), owners[name].tolist(),
                                                  generate(len(held_out[name])))]
    halves = {CAPTION_FILES[0]: image_ids[: COCO_IMAGES * 2 // 3],
              CAPTION_FILES[1]: image_ids[COCO_IMAGES * 2 // 3:]}
    for name, members in halves.items():
        chosen = set(members.tolist())
        write_json(directory / name, {
            "images": [{"id": int(i), "file_name": f"COCO_{int(i):012d}.jpg"} for i in members],
            "annotations": [a for a in annotations if a["image_id"] in chosen]})
    return {name: sorted(set(ids.tolist())) for name, ids in owners.items()}


def write_features(directory: Path, image_ids: list[int], rng: np.random.Generator) -> tuple[Path, Path]:
    """fp16 grid [256, 1024] and 10-50 regions [n, 2048] per image, the released layout."""
    grid_path, region_path = directory / "grid.hdf5", directory / "region.hdf5"
    with h5py.File(grid_path, "w") as grid, h5py.File(region_path, "w") as region:
        for image_id in image_ids:
            grid[feature_key(image_id)] = rng.random(GRID_SHAPE, np.float32).astype(np.float16)
            count = int(rng.integers(10, 51))
            region[feature_key(image_id)] = rng.random((count, REGION_DIM),
                                                       np.float32).astype(np.float16)
    return grid_path, region_path


def write_names_only(path: Path, image_ids: list[int], dim: int) -> Path:
    """A feature file naming every image with an empty [0, dim] entry: what the feature check
    reads (names only) at full size, in kilobytes."""
    with h5py.File(path, "w") as handle:
        for image_id in image_ids:
            handle.create_dataset(feature_key(image_id), shape=(0, dim), dtype=np.float16)
    return path


# -- measuring -------------------------------------------------------------------------------

def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@dataclass(eq=False)
class Phase:
    name: str
    measured_at: str
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    peak_gib: float = 0.0
    added_gib: float = 0.0
    full_seconds: float | None = None      # at full COCO size, when measured on a part
    note: str = ""
    extra: dict = field(default_factory=dict)


@contextmanager
def measured(phases: list[Phase], name: str, measured_at: str) -> Iterator[Phase]:
    """Time a phase and sample this process's resident set every 10 ms while it runs."""
    phase = Phase(name, measured_at)
    start_rss, peak, done = rss_bytes(), [rss_bytes()], threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started, started_cpu = time.perf_counter(), time.process_time()
    yield phase
    phase.seconds = time.perf_counter() - started
    phase.cpu_seconds = time.process_time() - started_cpu
    done.set()
    sampler.join()
    peak[0] = max(peak[0], rss_bytes())
    phase.peak_gib, phase.added_gib = peak[0] / 2**30, (peak[0] - start_rss) / 2**30
    phases.append(phase)
    print(f"{name}: {phase.seconds:.1f} s (CPU {phase.cpu_seconds:.1f} s), peak RSS "
          f"{phase.peak_gib:.2f} GiB (+{phase.added_gib:.2f}) {phase.note}", flush=True)


def loader_rate(dataset: CaptionPairs, items: int, workers: int, seconds: float) -> tuple[float, int]:
    """(items/s, items) of a shuffled loader over `dataset` for about `seconds` after its
    first batch (worker start-up excluded)."""
    loader = make_loader(dataset, items, shuffle=True, num_workers=workers)
    batches = iter(loader)
    next(batches)
    started, count = time.perf_counter(), 0
    for batch in batches:
        count += len(batch)
        if time.perf_counter() - started > seconds:
            break
    rate = count / (time.perf_counter() - started)
    del batches, loader
    return rate, count


def xe_step_flops(model: HIN, batch: tuple[torch.Tensor, ...], pad_id: int) -> int:
    """FLOPs of one XE step (forward and backward) as PyTorch's counter tallies them."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        total, count = next_token_nll(model, *batch, pad_id)
        (total / count).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def page_cache(paths: list[Path]) -> None:
    """Read the files once so that the loader runs from the page cache, as in training."""
    for path in paths:
        with path.open("rb") as handle:
            while handle.read(1 << 24):
                pass


# -- the rehearsal ---------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000,
                        help="training images with features on disk (about 0.63 MB each)")
    parser.add_argument("--decode-images", type=int, default=100,
                        help="validation images decoded at paper size (extrapolated to 5,000)")
    parser.add_argument("--loader-seconds", type=float, default=15.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4])
    parser.add_argument("--gpu-captions-per-s", type=float, default=None,
                        help="a measured GPU XE step rate (benchmarks/gpu_check.py); default: "
                             "estimated from the step's FLOPs at --gpu-tflops")
    parser.add_argument("--gpu-tflops", type=float, default=0.2 * H200_BF16_TFLOPS,
                        help="achieved bf16 TFLOP/s assumed for the estimate (default 20%% of "
                             "an H200's dense peak)")
    parser.add_argument("--dir", default=None, help="where to build the data set (default: a "
                        "temporary folder, deleted afterwards)")
    parser.add_argument("--json", default=None, help="also write the figures to this file")
    args = parser.parse_args()
    folder = Path(args.dir or tempfile.mkdtemp(prefix="hin-coco-scale-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        report = rehearse(args, folder)
    finally:
        if args.dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    print(report["table"])
    if args.json:
        write_json(args.json, report)
        write_text(Path(args.json).with_suffix(".md"), report["table"] + "\n")


def rehearse(args: argparse.Namespace, folder: Path) -> dict:
    phases: list[Phase] = []
    rng = np.random.default_rng(0)
    machine = describe(torch.device("cpu"))
    print(f"CPU: {machine}; data set in {folder}", flush=True)
    with measured(phases, "writing the COCO-shaped annotations (not a training phase)",
                  "full") as phase:
        generate = CaptionGenerator(rng, COCO_CAPTIONS)
        images = write_annotations(folder, rng, generate)

    with measured(phases, "reading annotations and splits", "full") as phase:
        splits = load_splits(folder)
        train, val = splits["train"], splits["val"]
        phase.note = (f"{len(train.images):,} / {len(val.images):,} / {len(splits['test'].images):,}"
                      f" images, {sum(len(s.captions()) for s in splits.values()):,} captions")

    with measured(phases, "vocabulary (spaCy tokenisation, min-freq 5)", "full") as phase:
        vocab = Vocabulary.build(train.captions(), min_freq=5)
        phase.note = f"{len(vocab):,} entries"

    feature_ids = images["train"][:args.images]
    decode_ids = images["val"][:args.decode_images]
    with measured(phases, f"writing features of {len(feature_ids) + len(decode_ids):,} images "
                  "(not a training phase)", "part") as phase:
        grid_path, region_path = write_features(folder, feature_ids + decode_ids, rng)
        size = (grid_path.stat().st_size + region_path.stat().st_size) / 2**30
        phase.note = f"{size:.2f} GiB on disk"
    store = FeatureStore(grid_path, region_path)

    with measured(phases, "caption encoding (CaptionPairs, grouped k=5)", "full") as phase:
        pairs = CaptionPairs(train, store, vocab, 54, check_features=False,
                             captions_per_image=GROUP)
        phase.note = f"{len(pairs):,} groups"

    with measured(phases, "CIDEr-D document frequencies (PTB in Java + table)", "full") as phase:
        table = CiderDTable.from_references(train.references())
        phase.note = f"{len(table.ngram_keys):,} n-grams"
    beams = [caption for image in list(val.images.values())[:50]
             for caption in image.captions[:GROUP]]
    owners = list(train.images)[:50]
    started = time.perf_counter()
    for _ in range(20):
        table.score([" ".join(tokenize(c)) for c in beams], [i for i in owners for _ in range(GROUP)])
    reward_ms = (time.perf_counter() - started) / 20 * 1000

    names = [write_names_only(folder / f"names_{dim}.hdf5", sorted(i for s in images.values()
                                                                    for i in s), dim)
             for dim in (GRID_SHAPE[1], REGION_DIM)]
    with measured(phases, "dataset index (feature check by name, epoch order)", "full") as phase:
        FeatureStore(*names).require(train.image_ids, "train")
        ImageReferences(val, FeatureStore(*names))
        order = EpochOrder(len(pairs), BATCH_CAPTIONS // GROUP, 0, 1, Context(0, 1, torch.device("cpu")))
        phase.note = f"{order.batches:,} batches of {BATCH_CAPTIONS} captions per epoch"

    subset = Split("train", {i: train.images[i] for i in feature_ids}, train.source)
    rates = {}
    page_cache([grid_path, region_path])
    for layout, k in (("grouped k=5", GROUP), ("pairs", 1)):
        dataset = CaptionPairs(subset, store, vocab, 54, captions_per_image=k)
        for workers in args.workers:
            with measured(phases, f"loader {layout}, {workers} workers", "part") as phase:
                rate, count = loader_rate(dataset, BATCH_CAPTIONS // k, workers, args.loader_seconds)
                captions_per_s = rate * (5.003 if k > 1 else 1)
                rates[(layout, workers)] = captions_per_s
                phase.note = (f"{rate:,.0f} images/s = {captions_per_s:,.0f} captions/s "
                              f"({count:,} items)")
                phase.full_seconds = (TRAIN_IMAGES * 5.003) / captions_per_s

    config = HINConfig(vocab_size=len(vocab))
    torch.manual_seed(0)
    model = HIN(config)
    precision = resolve_precision("auto", torch.device("cpu"))
    grid = torch.randn(BATCH_CAPTIONS // GROUP, *GRID_SHAPE)
    region = torch.randn(BATCH_CAPTIONS // GROUP, 50, REGION_DIM)
    tokens = torch.randint(4, len(vocab), (BATCH_CAPTIONS // GROUP, GROUP, 14))
    tokens[..., 0], tokens[..., -1] = config.bos_id, config.eos_id
    flops = xe_step_flops(model, (grid, region, tokens), config.pad_id)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98))
    cpu_captions = 10
    small = (grid[:2], region[:2], tokens[:2])

    def step() -> None:
        with autocast(torch.device("cpu"), precision):
            total, count = next_token_nll(model, *small, config.pad_id)
        optimizer.zero_grad(set_to_none=True)
        (total / count).backward()
        optimizer.step()

    step()
    with measured(phases, f"XE step on this CPU, {cpu_captions} captions (2 images x 5), "
                  f"{precision}", "part") as phase:
        for _ in range(3):
            step()
    phase.seconds /= 3
    cpu_rate = cpu_captions / phase.seconds
    phase.note = f"{cpu_rate:.1f} captions/s (mean of 3 steps after a warm-up)"
    phase.full_seconds = TRAIN_IMAGES * 5.003 / cpu_rate
    if args.gpu_captions_per_s:
        gpu_rate, gpu_source = args.gpu_captions_per_s, "measured (--gpu-captions-per-s)"
    else:
        gpu_rate = BATCH_CAPTIONS / (flops / (args.gpu_tflops * 1e12))
        gpu_source = (f"ESTIMATED: {flops / 1e12:.2f} TFLOP per {BATCH_CAPTIONS}-caption "
                      f"grouped step at {args.gpu_tflops:.0f} TFLOP/s assumed")

    model.eval()
    with torch.no_grad():
        model.decoder.head.weight[config.eos_id] = 0.0   # <eos> never wins: all 20 steps run
    val_subset = Split("val", {i: val.images[i] for i in decode_ids}, val.source)
    loader = make_loader(ImageReferences(val_subset, store), 50)
    with measured(phases, f"validation decoding, {len(decode_ids)} images, beam 5, 20 steps, "
                  "fp32", "part") as phase:
        captions = caption_batches(model, loader, vocab, DecodingConfig(), progress=False)
        lengths = {len(result.best.split()) for result in captions.values()}
    phase.full_seconds = phase.seconds * EVAL_IMAGES / len(decode_ids)
    phase.note = (f"{len(decode_ids) / phase.seconds:.1f} images/s; caption lengths "
                  f"{sorted(lengths)} words (all 20 steps ran)")

    candidates = dict(zip(val.image_ids, generate(len(val.images))))
    with measured(phases, "validation references tokenised (spaCy, as training does)",
                  "full") as phase:
        tokenised = {i: [" ".join(tokenize(c)) for c in caps]
                     for i, caps in val.references().items()}
    with measured(phases, "validation CIDEr-D (selects best.pt), 5,000 images", "full") as phase:
        cider_d({i: " ".join(tokenize(c)) for i, c in candidates.items()}, tokenised)
    with measured(phases, "metrics on 5,000 images (BLEU, METEOR, ROUGE-L, CIDEr; Java)",
                  "full") as phase:
        report = score_captions(candidates, val.references(), spice=False, progress=False)
        phase.note = f"CIDEr {100 * report.scores['CIDEr']:.1f} (random captions)"

    return summarise(phases, machine, rates, cpu_rate, gpu_rate, gpu_source, reward_ms, args)


def summarise(phases: list[Phase], machine: str, rates: dict, cpu_rate: float, gpu_rate: float,
              gpu_source: str, reward_ms: float, args: argparse.Namespace) -> dict:
    """The table: each phase's time and memory, and what one full-COCO XE epoch costs."""
    def by_name(prefix: str) -> Phase:
        return next(p for p in phases if p.name.startswith(prefix))

    epoch_captions = TRAIN_IMAGES * 5.003
    best_loader = max(rates.values())
    per_epoch = {p: (p.full_seconds if p.full_seconds is not None else p.seconds)
                 for p in phases if "not a training phase" not in p.name}
    once = sum(per_epoch[by_name(n)] for n in ("reading", "vocabulary", "caption encoding",
                                                 "CIDEr-D", "dataset index"))
    validation = sum(per_epoch[by_name(n)] for n in ("validation decoding", "validation refer",
                                                       "validation CIDEr", "metrics on"))
    gpu_validation = validation - per_epoch[by_name("validation decoding")] * (1 - cpu_rate / gpu_rate)
    epoch = {
        "cpu": epoch_captions / min(cpu_rate, best_loader) + validation,
        "gpu": epoch_captions / min(gpu_rate, best_loader) + gpu_validation,
    }
    lines = [f"CPU: {machine}; {os.cpu_count()} CPUs visible, "
             f"{len(os.sched_getaffinity(0))} usable",
             "", "| phase | measured at | time | peak RSS (process) | at full COCO | note |",
             "|---|---|---|---|---|---|"]
    for p in phases:
        full = ("same" if p.measured_at == "full" else
                f"{p.full_seconds / 60:,.1f} min (extrapolated)" if p.full_seconds else "—")
        lines.append(f"| {p.name} | {p.measured_at} | {p.seconds:,.1f} s | {p.peak_gib:.2f} GiB "
                     f"(+{p.added_gib:.2f}) | {full} | {p.note} |")
    lines += ["", f"SCST reward (CiderDTable.score, 50 images x 5 captions, full table): "
                  f"{reward_ms:.1f} ms per batch",
              f"GPU XE step rate: {gpu_rate:,.0f} captions/s ({gpu_source}); best loader rate "
              f"{best_loader:,.0f} captions/s: the loader "
              + ("keeps up" if best_loader >= gpu_rate else "STARVES the GPU"),
              f"Once per run: {once / 60:.1f} min. One full-COCO XE epoch "
              f"({epoch_captions:,.0f} captions + validation of 5,000 images): "
              f"{epoch['cpu'] / 3600:,.1f} h on this CPU, {epoch['gpu'] / 60:,.1f} min on the GPU "
              f"({'estimated' if args.gpu_captions_per_s is None else 'measured'} step rate)"]
    return {"machine": machine, "phases": [p.__dict__ for p in phases],
            "loader_captions_per_s": {f"{k[0]}, {k[1]} workers": v for k, v in rates.items()},
            "cpu_captions_per_s": cpu_rate, "gpu_captions_per_s": gpu_rate,
            "gpu_source": gpu_source, "reward_ms": reward_ms, "once_per_run_s": once,
            "epoch_s": epoch, "table": "\n".join(lines)}


if __name__ == "__main__":
    main()
