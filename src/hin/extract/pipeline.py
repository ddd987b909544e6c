"""Pictures -> feature file at scale, for any picture extractor (CLIP grid, DETR regions, ...).

An extractor is registered under a name (registry.py) and has two halves: `preprocess`, a picklable
picture -> array step that runs in DataLoader workers, and `__call__`, which turns a batch
of prepared pictures into one `{suffix: array}` entry per image (`features`, `global`,
`boxes`, ...). This module batches, shows images/s, skips the ids the output already holds
(re-running resumes), writes a chunk at a time through `FeatureWriter` (a kill loses at most
one chunk, see writer.py) and lists pictures that fail to decode, or that the extractor
cannot resize (resize.py), in a report while the run goes on. It must never write a
substitute entry for a picture it could not read. With a `Shard` it extracts only that
shard's block of the pictures, into the shard's own file (shards.py). Pictures are read by
hin's reading rule (images.as_rgb) with the `orientation` chosen for the run, which the file
records (`hin_orientation`). Extractors compute in the
`precision` chosen for the run (hf.py: fp32, bf16 autocast, fp16 weights on CUDA) and store their results
in the dtype they are given (`storage_dtype`), whatever the arithmetic.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from hin.config import DATASET_ORIENTATION
from hin.errors import Interrupted, UsageError
from hin.extract.images import (
    ORIENTATION_KEY,
    ImageFile,
    PictureError,
    check_orientation,
    read_picture,
)
from hin.extract.registry import ImageEntry, PictureExtractor
from hin.extract.resize import PictureShapeError
from hin.extract.shards import Shard, fingerprint
from hin.extract.writer import FeatureFileError, FeatureWriter, discard_features
from hin.files import write_text
from hin.processes import worker_init


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

    def __getitem__(self, index: int) -> tuple[ImageFile, Any, str | None, str | None]:
        """(file, prepared picture, why it could not be read, a note on how it was read)."""
        file = self.files[index]
        try:
            read = read_picture(file.path, orientation=self.orientation)
            prepared = self.preprocess(read.rgb)
        except PictureShapeError as error:
            return file, None, str(error.named(str(file.path))), None
        except PictureError as error:
            return file, None, str(error), None
        return file, prepared, None, read.note


def _as_list(batch: list) -> list:
    return batch


@dataclass
class ExtractionReport:
    """What a run did: images written now, skipped (already there), failed, and where."""

    out: Path
    written: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    notes: list[tuple[Path, str]] = field(default_factory=list)     # multi-frame pictures
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
        if self.notes:
            path, note = self.notes[0]
            more = f" (and {len(self.notes) - 1} more like it)" if len(self.notes) > 1 else ""
            lines.append(f"note: {path}: {note}{more}")
        if self.failed:
            lines.append(f"{len(self.failed)} pictures could not be read; listed in "
                         f"{self.failure_report}")
        return "\n".join(lines)


def failure_report_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.name + ".failed.tsv")


def extraction_attributes(extractor: PictureExtractor,
                          orientation: str = DATASET_ORIENTATION) -> dict[str, Any]:
    """What a file extracted from pictures records: the extractor's attributes and the
    orientation rule its pictures were read by."""
    return {**extractor.attributes(), ORIENTATION_KEY: check_orientation(orientation)}


def extract_to_file(extractor: PictureExtractor, files: Sequence[ImageFile], out: str | Path, *,
                    batch_size: int = 32, chunk_size: int = 512, workers: int = 2,
                    progress: bool = True, shard: Shard | None = None,
                    orientation: str = DATASET_ORIENTATION, force: bool = False) -> ExtractionReport:
    """Extract every picture of `files` (or of its shard `shard`, into that shard's file) not
    yet in `out`, read with `orientation` (images.as_rgb); see the module docstring and
    shards.py. A picture whose file changed since its entry was written is refused by id;
    `force` discards what `out` holds and extracts every picture again."""
    if batch_size < 1 or chunk_size < 1 or workers < 0:
        raise UsageError("batch_size and chunk_size must be positive and workers >= 0, got "
                         f"{batch_size}, {chunk_size}, {workers}")
    if force and shard is not None:
        raise UsageError("--force starts the whole output over: run it once without --shard, "
                         "or delete this shard's file to redo it")
    if force:
        discard_features(out)
    attributes = extraction_attributes(extractor, orientation)
    started = time.perf_counter()
    if shard is None:
        writer = FeatureWriter(out, attributes)
    else:
        writer = FeatureWriter(out, attributes, shard, fingerprint(file.image_id for file in files))
        files = shard.take(files)
    sources = {file.image_id: stamp for file in files if (stamp := source_stamp(file.path))}
    _refuse_changed(writer, files, sources, out)
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
                good = [(file, prepared) for file, prepared, error, _ in batch if error is None]
                report.failed += [(file.path, error) for file, _, error, _ in batch
                                  if error is not None]
                report.notes += [(file.path, note) for file, _, _, note in batch if note]
                if good:
                    entries = extractor([prepared for _, prepared in good])
                    chunk.update((file.image_id, entry) for (file, _), entry in zip(good, entries))
                if len(chunk) >= chunk_size:
                    writer.write_chunk(chunk, sources)
                    report.written += len(chunk)
                    chunk = {}
                bar.update(len(batch))
            writer.write_chunk(chunk, sources)
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


def source_stamp(path: Path) -> str | None:
    """What tells a picture file apart from an edited one or another one of the same name,
    without reading it: "size:mtime_ns" (None when it cannot be looked at)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return f"{status.st_size}:{status.st_mtime_ns}"


def _refuse_changed(writer: FeatureWriter, files: Sequence[ImageFile], sources: dict[int, str],
                    out: str | Path) -> None:
    """Refuse to keep features of pictures that changed since they were extracted (an edited
    picture, or another picture under the same id): a resumed run would skip them."""
    done = {file.image_id for file in files} & writer.done_ids
    recorded = writer.recorded_sources(done)
    changed = sorted(i for i, source in recorded.items() if i in sources and sources[i] != source)
    if changed:
        shown = ", ".join(map(str, changed[:10])) + (" ..." if len(changed) > 10 else "")
        raise FeatureFileError(
            f"{len(changed)} pictures changed since their features were written to {out} (image "
            f"ids {shown}: the file's size or modification time differs); re-extract every "
            "picture with --force, or write to another --out")


def _write_failures(path: Path, failed: list[tuple[Path, str]]) -> Path | None:
    """The pictures this run could not read (a clean run removes an older report)."""
    if not failed:
        path.unlink(missing_ok=True)
        return None
    lines = ["path\terror"] + [f"{file}\t{' '.join(error.split())}" for file, error in failed]
    write_text(path, "\n".join(lines) + "\n")
    return path
