"""The captioning side of the server: one `Captioner`, its decoding pool and dynamic batcher,
the checkpoint's identity and demo pictures. Knows nothing of HTTP.

A picture goes through two stages off the event loop: a small pool of threads decodes it
and turns it into the extractors' inputs (a 224 px square for CLIP, DETR's resized array),
so the full-size picture lives only there; the batching thread then gets only those small
inputs and runs the extractors and the beam search for a batch at once. Decoding a large
picture so never delays the batches of small ones."""

from __future__ import annotations

import base64
import hashlib
import io
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from hin.caption import Captioner
from hin.data.coco import load_split
from hin.errors import HINError
from hin.extract.images import IMAGE_SUFFIXES
from hin.extract.resize import PictureShapeError
from hin.files import atomic_write
from hin.serve.admission import Admission
from hin.serve.batching import DynamicBatcher
from hin.serve.explanations import explain_batch
from hin.serve.inputs import Options, RequestError, decode_picture
from hin.serve.settings import ServeSettings

DEMO_PICTURES = 12
PREVIEW_SIDE = 640           # the answer's preview fits in this square ...
PREVIEW_SHORT_SIDE = 32      # ... with its short side kept at least this long (or the picture's)
PREVIEW_PNG_PIXELS = 256 * 256   # previews up to this size stay lossless (PNG), larger are JPEG


def dataset_name(annotations: str | None) -> str | None:
    """The recorded annotations path as a client sees it: its last two parts (`data/synth`),
    not where the data lay on the training machine."""
    return "/".join(Path(annotations).parts[-2:]) if annotations else None


@dataclass(frozen=True)
class Prepared:
    """A decoded picture as the extractors take it; the picture itself is gone."""

    width: int
    height: int
    format: str
    frames: int              # in the file; only the first is read
    preview: str
    grid: Any
    region: Any


class CaptionService:
    """Loads the checkpoint once. A checkpoint whose features cannot be computed from
    pictures still loads: `unavailable` then says why, and captioning is refused with it."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.captioner = Captioner(settings.checkpoint, device=settings.device,
                                   decoding=settings.decoding, vocab=settings.vocab,
                                   extractor_weights=dict(settings.extractor_weights))
        self.model_identity = model_identity(self.captioner)
        try:
            self.captioner.extractors()
            self.unavailable: str | None = None
        except HINError as error:
            self.unavailable = str(error)
        self.demo_pictures = ([] if self.unavailable else
                              demo_pictures(self.captioner.record.annotations, settings.checkpoint))
        self.admission = Admission(settings.max_queue, settings.max_pixels_in_flight,
                                   settings.max_body_bytes_in_flight)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="hin-decode")
        self.keep_uploads = Path(settings.keep_uploads) if settings.keep_uploads else None
        if self.keep_uploads:
            self.keep_uploads.mkdir(parents=True, exist_ok=True)
        self.batcher = DynamicBatcher(self._run_batch, max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000)

    def identity(self) -> dict[str, Any]:
        """The checkpoint and what it was trained on (`model_identity`, made once)."""
        return self.model_identity

    def check(self) -> None:
        """Refuse what this server cannot do before any work is spent on the picture."""
        if self.unavailable:
            raise RequestError(503, f"this server cannot caption pictures: {self.unavailable}")

    def prepare(self, data: bytes, pixels: int) -> Future:
        """Decode and prepare the picture in the pool; its `pixels`, reserved with
        `admission.reserve`, are given back once the job is over (the full-size picture is
        dropped) or was cancelled before it ran (a client that went away)."""
        def work() -> Prepared:
            read = decode_picture(data)
            self.keep(data, read.format)
            picture = read.rgb
            try:
                grid, region = self.captioner.prepare_picture(picture, "the upload")
            except PictureShapeError as error:
                raise RequestError(422, str(error)) from error
            return Prepared(picture.width, picture.height, read.format, read.frames, preview(picture),
                            grid, region)

        job = self.pool.submit(work)
        job.add_done_callback(lambda _: self.admission.release(pixels))
        return job

    def submit(self, prepared: Prepared, options: Options) -> Future:
        """Queue a prepared picture; the future gives {"captions": [...], "explanation"?}."""
        return self.batcher.submit(options, prepared)

    def keep(self, data: bytes, picture_format: str) -> None:
        """With --keep-uploads DIR: the upload, named by its content's sha256."""
        if self.keep_uploads:
            name = f"{hashlib.sha256(data).hexdigest()}.{picture_format.lower()}"
            with atomic_write(self.keep_uploads / name, "wb") as file:
                file.write(data)

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)
        self.batcher.close()

    def _run_batch(self, options: Options, pictures: list[Prepared]) -> list[dict[str, Any]]:
        captioner = self.captioner
        # Extractors give each picture the features it has alone (DETR runs each size apart).
        grids, regions = captioner.prepared_entries([(picture.grid, picture.region)
                                                     for picture in pictures])
        grid, region = captioner.batch([entry["features"] for entry in grids],
                                       [entry["features"] for entry in regions])
        captioned = captioner.caption_batch(grid, region, ["upload"] * len(pictures),
                                            options.decoding)
        answers = [{"captions": result.to_dict()["captions"],
                    "unfamiliar": captioner.unfamiliar(entry["features"]),
                    "preview": picture.preview}
                   for result, entry, picture in zip(captioned, grids, pictures)]
        if options.explain:
            explained = explain_batch(captioner, grid, region, [c.captions[0].ids for c in captioned],
                                      grids, regions)
            for answer, explanation in zip(answers, explained):
                answer["explanation"] = explanation
        return answers


def preview(picture: Image.Image) -> str:
    """The upright RGB picture the model read, small, as a data URL: a page draws it when the
    browser cannot draw the upload itself (TIFF) and places the maps over it by the answer's
    `picture` size. A very long or tall picture keeps a short side of PREVIEW_SHORT_SIDE
    pixels, or its own if shorter (so it is stretched), rather than shrinking it to 1."""
    scale = min(1.0, PREVIEW_SIDE / max(picture.size))
    width, height = (max(round(side * scale), min(side, PREVIEW_SHORT_SIDE)) for side in picture.size)
    size = (width, height)
    small = picture if size == picture.size else picture.resize(
        size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    lossless = size[0] * size[1] <= PREVIEW_PNG_PIXELS
    buffer = io.BytesIO()
    small.save(buffer, format="PNG" if lossless else "JPEG", quality=85)
    media_type = "image/png" if lossless else "image/jpeg"
    return f"data:{media_type};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def model_identity(captioner: Captioner) -> dict[str, Any]:
    """The checkpoint's identity (`OpenCheckpoint.identity`) and what it was trained on, as
    it records them (None: not recorded): what /v1/info and every /v1/captions answer say."""
    identity = captioner.opened.members[0].identity()
    record, features = captioner.record, identity["features"]
    profile = record.feature_profile
    return {**identity, "training": {
        "dataset": dataset_name(record.annotations),
        "images": profile["training_images"] if profile else None,
        "vocabulary_size": identity["vocabulary_size"], "extractors": features,
        "validation_cider_d": _times_100((record.validation or {}).get("CIDEr-D")),
        "familiarity_check": bool(profile)}}


def recorded_path(recorded: str | None, checkpoint: str | Path) -> Path | None:
    """A path the checkpoint's training recorded (e.g. `data.annotations`), as it is if
    absolute, else from the checkpoint's folder or the nearest of its parents where it
    exists (a run folder sits below the folder training ran in); never from the server's
    working folder. None when it is not found."""
    if not recorded:
        return None
    path = Path(recorded)
    if path.is_absolute():
        return path if path.exists() else None
    for folder in Path(checkpoint).resolve().parents:
        if (folder / path).exists():
            return folder / path
    return None


def demo_pictures(annotations_recorded: str | None, checkpoint: str | Path,
                  limit: int = DEMO_PICTURES) -> list[Path]:
    """Up to `limit` pictures of the test split of the data the checkpoint was trained from
    (its recorded `data.annotations`, read as training reads it: the split files hold caption
    ids, mapped to images by the annotations), found by their file names anywhere in that
    data folder; none when the annotations or pictures are not there."""
    annotations = recorded_path(annotations_recorded, checkpoint)
    if annotations is None:
        return []
    try:
        split = load_split(annotations, "test")
    except (HINError, OSError):
        return []
    folder = annotations if annotations.is_dir() else annotations.parent
    wanted = {record.file_name: image_id for image_id, record in split.images.items()}
    found: dict[int, Path] = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.name in wanted and path.is_file():
            found.setdefault(wanted[path.name], path)
    return [found[image_id] for image_id in sorted(found)[:limit]]


def _times_100(score: float | None) -> float | None:
    """A score as every report of hin prints it: x100, one decimal (CIDEr-D 3.534 -> 353.4)."""
    return None if score is None else round(100 * float(score), 1)
