"""The captioning side of the server: one `Captioner`, its dynamic batcher, the checkpoint's
identity and demo pictures. Knows nothing of HTTP."""

from __future__ import annotations

import hashlib
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from hin.caption import Captioner
from hin.data.coco import SPLIT_ID_FILES
from hin.decoding import search
from hin.errors import HINError
from hin.evaluate import sha256
from hin.extract.images import IMAGE_SUFFIXES, ImageListError, image_id_from_name
from hin.files import atomic_write
from hin.serve.batching import DynamicBatcher
from hin.serve.explanations import explain_available, explain_batch
from hin.serve.inputs import Options, RequestError
from hin.serve.settings import ServeSettings

DEMO_PICTURES = 12


class CaptionService:
    """Loads the checkpoint once. A checkpoint whose features cannot be computed from
    pictures still loads: `unavailable` then says why, and captioning is refused with it."""

    def __init__(self, settings: ServeSettings) -> None:
        self.settings = settings
        self.captioner = Captioner(settings.checkpoint, device=settings.device,
                                   decoding=settings.decoding)
        self.sha256 = sha256(settings.checkpoint)
        try:
            self.captioner.extractors()
            self.unavailable: str | None = None
        except HINError as error:
            self.unavailable = str(error)
        self.demo_pictures = [] if self.unavailable else demo_pictures(self.captioner.extra)
        self.keep_uploads = Path(settings.keep_uploads) if settings.keep_uploads else None
        if self.keep_uploads:
            self.keep_uploads.mkdir(parents=True, exist_ok=True)
        self.batcher = DynamicBatcher(self._run_batch, max_batch=settings.max_batch,
                                      max_wait_s=settings.max_wait_ms / 1000)

    def identity(self) -> dict[str, Any]:
        config = self.captioner.model.config
        features = self.captioner.extra.get("features") or {}
        return {"checkpoint": Path(self.settings.checkpoint).name, "sha256": self.sha256,
                "layers": config.num_layers, "d_model": config.d_model,
                "vocabulary_size": config.vocab_size,
                "features": {kind: {key: (features.get(kind) or {}).get(key)
                                    for key in ("extractor", "model")}
                             for kind in ("grid", "region")}}

    def submit(self, picture: Image.Image, options: Options) -> Future:
        """Queue a decoded picture; the future gives {"captions": [...], "explanation"?}."""
        if self.unavailable:
            raise RequestError(503, f"this server cannot caption pictures: {self.unavailable}")
        if options.explain and not explain_available():
            raise RequestError(501, "explain=true needs hin.explain (the attention-map API), "
                                    "which this installation of hin does not have")
        return self.batcher.submit(options, picture)

    def keep(self, data: bytes, picture_format: str) -> None:
        """With --keep-uploads DIR: the upload, named by its content's sha256."""
        if self.keep_uploads:
            name = f"{hashlib.sha256(data).hexdigest()}.{picture_format.lower()}"
            with atomic_write(self.keep_uploads / name, "wb") as file:
                file.write(data)

    def close(self) -> None:
        self.batcher.close()

    def _run_batch(self, options: Options, pictures: list[Image.Image]) -> list[dict[str, Any]]:
        captioner = self.captioner
        # Features of same-size pictures together: an extractor may pad a batch to its largest
        # picture (DETR does), and a caption must not depend on who else was asking.
        grids: list = [None] * len(pictures)
        regions: list = [None] * len(pictures)
        for size in dict.fromkeys(picture.size for picture in pictures):
            group = [i for i, picture in enumerate(pictures) if picture.size == size]
            grid_entries, region_entries = captioner.picture_entries([pictures[i] for i in group])
            for i, grid_entry, region_entry in zip(group, grid_entries, region_entries):
                grids[i], regions[i] = grid_entry, region_entry
        grid, region = captioner.batch([entry["features"] for entry in grids],
                                       [entry["features"] for entry in regions])
        ids, logprobs = search(captioner.model, grid, region, options.decoding)
        captioned = captioner.captioned(["upload"] * len(pictures), ids, logprobs)
        answers = [{"captions": result.to_dict()["captions"]} for result in captioned]
        if options.explain:
            explained = explain_batch(captioner, grid, region, ids[:, 0], grids, regions)
            for answer, explanation in zip(answers, explained):
                answer["explanation"] = explanation
        return answers


def demo_pictures(extra: dict[str, Any], limit: int = DEMO_PICTURES) -> list[Path]:
    """Up to `limit` pictures of the test split found in the data folder the checkpoint was
    trained from (its recorded `data.annotations`), by image id; none when it has none."""
    folder = Path(((extra.get("config") or {}).get("data") or {}).get("annotations") or "")
    split_files = [folder / name for name in SPLIT_ID_FILES["test"]]
    if not folder.is_dir() or not all(path.is_file() for path in split_files):
        return []
    test_ids = {int(i) for path in split_files for i in np.load(path)}
    found = {}
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            try:
                image_id = image_id_from_name(path.stem)
            except ImageListError:
                continue
            if image_id in test_ids:
                found.setdefault(image_id, path)
    return [found[image_id] for image_id in sorted(found)[:limit]]
