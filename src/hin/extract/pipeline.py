"""Pictures -> feature file at scale, for any picture extractor (CLIP grid, DETR regions, ...).

An extractor is registered under a name and has two halves: `preprocess`, a picklable
picture -> array step that runs in DataLoader workers, and `__call__`, which turns a batch
of prepared pictures into one `{suffix: array}` entry per image (`features`, `global`,
`boxes`, ...). This module batches, shows images/s, skips the ids the output already holds
(re-running resumes), writes a chunk at a time through `FeatureWriter` (a kill loses at most
one chunk, see writer.py) and lists pictures that fail to decode in a report while the run
goes on. It must never write a substitute entry for a picture it could not read. With a
`Shard` it extracts only that shard's block of the pictures, into the shard's own file
(shards.py). Pictures are read by hin's reading rule (images.as_rgb) with the `orientation`
chosen for the run, which the file records (`hin_orientation`). Extractors compute in the
`precision` chosen here (fp32, bf16 autocast, fp16 weights on CUDA) and store their results
in the dtype they are given (`storage_dtype`), whatever the arithmetic.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from hin.config import DATASET_ORIENTATION, EXTRACTION_PRECISIONS, STORAGE_DTYPES
from hin.devices import autocast, resolve_precision
from hin.errors import Interrupted, MissingExtraError, UsageError, pip_install
from hin.extract.images import (
    ORIENTATION_KEY,
    ImageFile,
    PictureError,
    check_orientation,
    load_rgb,
)
from hin.extract.shards import Shard, fingerprint
from hin.extract.writer import FeatureWriter
from hin.files import write_text
from hin.processes import worker_init

ImageEntry = dict[str, np.ndarray]

COMPUTE_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def resolve_extraction_precision(name: str, device: torch.device) -> str:
    """`fp32` | `bf16` | `auto` as everywhere in hin (`hin.devices.resolve_precision`), plus
    `fp16`: the weights themselves in float16, on CUDA only (faster, not the reference's
    arithmetic: it computed the released CLIP grids in fp32)."""
    if name not in EXTRACTION_PRECISIONS:
        raise UsageError(f"extraction precision must be one of {', '.join(EXTRACTION_PRECISIONS)}, got {name!r}")
    if name == "fp16" and device.type != "cuda":
        raise UsageError(f"precision fp16 needs a CUDA device, not {device}: on a CPU use bf16 "
                         "(fast where it has avx512_bf16 or AMX) or fp32")
    return name if name == "fp16" else resolve_precision(name, device)


def storage_dtype(name: str) -> np.dtype:
    """`float16` | `float32` (`--store-as`) -> the NumPy dtype features are stored in."""
    if name not in STORAGE_DTYPES:
        raise UsageError(f"features are stored as one of {', '.join(STORAGE_DTYPES)}, got {name!r}")
    return np.dtype(name)


def weights_dtype(precision: str) -> torch.dtype:
    """fp16 casts the weights; fp32 and bf16 keep them in float32 (bf16 runs under autocast)."""
    return torch.float16 if precision == "fp16" else torch.float32


def extraction_autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for `bf16`; nothing for fp32 and fp16 (whose weights are float16)."""
    return autocast(device, "bf16" if precision == "bf16" else "fp32")


def transformers_module() -> Any:
    """The `transformers` package, or an error saying how to install it."""
    try:
        import transformers
    except ImportError as error:
        raise MissingExtraError("feature extraction needs the `transformers` package: "
                                f"{pip_install('extract')}") from error
    return transformers


def load_pretrained(model_class: type, model: str, device: torch.device, precision: str,
                    revision: str | None = None) -> Any:
    """A transformers model from a local folder or the Hugging Face cache (never downloaded
    here: hin reaches no network at run time), in eval mode, with its weights in the dtype
    `precision` (resolved) needs."""
    try:
        loaded = model_class.from_pretrained(model, revision=revision, local_files_only=True,
                                             dtype=weights_dtype(precision))
    except OSError as error:
        raise FileNotFoundError(_missing_weights(model_class.__name__, model, revision, error)
                                ) from error
    return loaded.to(device).eval()


def _missing_weights(class_name: str, model: str, revision: str | None, error: OSError) -> str:
    """One line: which weights, where they were looked for, what to do, and how to try hin's
    recipe without them."""
    from huggingface_hub.constants import HF_HUB_CACHE

    which = f"{class_name} weights {model!r}{f' (revision {revision})' if revision else ''}"
    reason = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    if Path(model).exists():
        where = f"the folder {model} does not hold them in a readable form ({reason})"
    else:
        where = (f"there is no folder {model!r} here and they are not in the Hugging Face cache "
                 f"{HF_HUB_CACHE} (hin never downloads them itself)")
    return (f"could not load {which}: {where}. Give a folder written by save_pretrained, or "
            f"download them once with network access (`hf download {model}`); to try the "
            "recipe without them, the offline extractors made for the synthetic pictures need "
            "no weights: `--extractor synth-grid` and `--extractor synth-regions`")


class PictureExtractor(Protocol):
    """What every registered extractor provides."""

    name: str
    kind: str                                    # "grid" or "region"
    feature_dim: int
    preprocess: Callable[[Image.Image], Any]     # picklable; runs in loader workers

    @classmethod
    def from_attributes(cls, recorded: dict[str, object], device: str = "auto",
                        precision: str = "fp32") -> PictureExtractor:
        """Rebuild the extractor that wrote `recorded` (a file's `attributes()`)."""

    def attributes(self) -> dict[str, object]:
        """What made these features (recorded in the output file, and so in checkpoints)."""

    def __call__(self, prepared: Sequence[Any]) -> list[ImageEntry]:
        """Prepared pictures -> per image `{"features": [n, feature_dim], ...}` (numpy)."""


EXTRACTORS: dict[str, Callable[..., PictureExtractor]] = {}


def register_extractor(name: str) -> Callable[[type], type]:
    """Class decorator: make an extractor available by name (`build_extractor(name, ...)`)."""
    def register(cls: type) -> type:
        if name in EXTRACTORS:
            raise UsageError(f"an extractor named {name!r} is already registered")
        EXTRACTORS[name] = cls
        cls.name = name
        return cls
    return register


def build_extractor(name: str, **options: Any) -> PictureExtractor:
    if name not in EXTRACTORS:
        raise UsageError(f"no extractor named {name!r}; registered: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name](**options)


def extractor_from_attributes(recorded: dict[str, object], device: str = "auto",
                              precision: str = "fp32") -> PictureExtractor:
    """The registered extractor that wrote features with these attributes, rebuilt."""
    name = recorded.get("extractor")
    if name not in EXTRACTORS:
        raise UsageError(f"features made by {name!r} cannot be computed from pictures here; "
                         f"picture extractors: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name].from_attributes(recorded, device=device, precision=precision)


def prepare_pictures(extractor: PictureExtractor,
                     pictures: Sequence[Image.Image]) -> list[ImageEntry]:
    """In-memory path (no files, no workers): pictures -> one entry per picture."""
    return extractor([extractor.preprocess(picture) for picture in pictures])


class _PreparedPictures(Dataset):
    """Decodes and prepares one picture per item; a failure is returned, not raised, so one
    bad file does not stop the run."""

    def __init__(self, files: Sequence[ImageFile], preprocess: Callable[[Image.Image], Any],
                 orientation: str):
        self.files = files
        self.preprocess = preprocess
        self.orientation = orientation

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[ImageFile, Any, str | None]:
        file = self.files[index]
        try:
            return file, self.preprocess(load_rgb(file.path, orientation=self.orientation)), None
        except PictureError as error:
            return file, None, str(error)


def _as_list(batch: list) -> list:
    return batch


@dataclass
class ExtractionReport:
    """What a run did: images written now, skipped (already there), failed, and where."""

    out: Path
    written: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    images_in_file: int = 0
    seconds: float = 0.0
    failure_report: Path | None = None
    shard: Shard | None = None
    merge_into: Path | None = None      # a shard's final output

    def summary(self) -> str:
        rate = self.written / self.seconds if self.seconds > 0 else 0.0
        lines = [f"{self.out}: wrote {self.written} images ({rate:.2f} images/s), skipped "
                 f"{self.skipped} already present; the file holds {self.images_in_file} images"]
        if self.shard is not None:
            lines.append(f"shard {self.shard} has finished; once all {self.shard.count} have: "
                         f"hin extract merge {self.merge_into}")
        if self.failed:
            lines.append(f"{len(self.failed)} pictures could not be read; listed in "
                         f"{self.failure_report}")
        return "\n".join(lines)


def failure_report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".failed.tsv")


def extraction_attributes(extractor: PictureExtractor,
                          orientation: str = DATASET_ORIENTATION) -> dict[str, object]:
    """What a file extracted from pictures records: the extractor's attributes and the
    orientation rule its pictures were read by."""
    return {**extractor.attributes(), ORIENTATION_KEY: check_orientation(orientation)}


def extract_to_file(extractor: PictureExtractor, files: Sequence[ImageFile], out: str | Path, *,
                    batch_size: int = 32, chunk_size: int = 512, workers: int = 2,
                    progress: bool = True, shard: Shard | None = None,
                    orientation: str = DATASET_ORIENTATION) -> ExtractionReport:
    """Extract every picture of `files` (or of its shard `shard`, into that shard's file) not
    yet in `out`, read with `orientation` (images.as_rgb); see the module docstring and
    shards.py."""
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise UsageError("batch_size and chunk_size must be positive and workers >= 0, got "
                         f"{batch_size}, {chunk_size}, {workers}")
    attributes = extraction_attributes(extractor, orientation)
    started = time.perf_counter()
    if shard is None:
        writer = FeatureWriter(out, attributes)
    else:
        writer = FeatureWriter(out, attributes, shard, fingerprint(file.image_id for file in files))
        files = shard.take(files)
    todo = [file for file in files if file.image_id not in writer.done_ids]
    report = ExtractionReport(writer.target, skipped=len(files) - len(todo), shard=shard,
                              merge_into=writer.out)
    loader = DataLoader(_PreparedPictures(todo, extractor.preprocess, orientation),
                        batch_size=batch_size, num_workers=workers, collate_fn=_as_list,
                        worker_init_fn=worker_init())
    chunk: dict[int, ImageEntry] = {}
    try:
        with tqdm(total=len(todo), desc=f"extracting {extractor.name}", unit="img",
                  disable=not progress) as bar:
            for batch in loader:
                good = [(file, prepared) for file, prepared, error in batch if error is None]
                report.failed += [(file.path, error) for file, _, error in batch
                                  if error is not None]
                if good:
                    entries = extractor([prepared for _, prepared in good])
                    chunk.update((file.image_id, entry) for (file, _), entry in zip(good, entries))
                if len(chunk) >= chunk_size:
                    writer.write_chunk(chunk)
                    report.written += len(chunk)
                    chunk = {}
                bar.update(len(batch))
            writer.write_chunk(chunk)
            report.written += len(chunk)
    except KeyboardInterrupt:
        raise Interrupted(
            f"interrupted after {report.written} of the {len(todo)} pictures to do (the "
            f"{len(chunk)} of the chunk in progress are lost); {len(writer.done_ids)} images "
            f"are kept in {writer.target.name} and {writer.parts}: run the same command again "
            "to resume") from None
    report.images_in_file = writer.finish()
    report.failure_report = _write_failures(failure_report_path(writer.target), report.failed)
    report.seconds = time.perf_counter() - started
    return report


def _write_failures(path: Path, failed: list[tuple[Path, str]]) -> Path | None:
    """The pictures this run could not read (a clean run removes an older report)."""
    if not failed:
        path.unlink(missing_ok=True)
        return None
    lines = ["path\terror"] + [f"{file}\t{' '.join(error.split())}" for file, error in failed]
    write_text(path, "\n".join(lines) + "\n")
    return path
