"""Caption your own pictures, or precomputed features, with a trained checkpoint.

    from hin import Captioner
    captioner = Captioner("hin.pt")
    print(captioner("photo.jpg"))

A checkpoint records which features it was trained on (`extra["features"]`: the attributes
`hin.data.features.read_attributes` reads from the grid and region files it was trained with).
Pictures are turned into exactly those features by rebuilding the same extractors (from
`hin.extract`, which knows nothing of captioning); when a checkpoint was trained on features
that cannot be computed here (VinVL's, or files not made by `hin extract`), the Captioner says
so and what to pass instead. It never guesses an extractor and never substitutes other
features.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hin.checkpoint import CheckpointError, load, max_regions_for
from hin.config import DecodingConfig
from hin.data.familiarity import unfamiliar
from hin.data.features import FeatureStore, pad_regions, stack_grids
from hin.data.vocab import vocabulary_for
from hin.decoding import CaptionedImage, Ensemble, caption
from hin.devices import resolve_device
from hin.errors import UsageError
from hin.extract.images import as_rgb, folder_pictures, load_rgb
from hin.extract.pipeline import prepare_pictures
from hin.extract.registry import EXTRACTORS, ImageEntry, extractor_from_attributes

Picture = str | Path | Image.Image | np.ndarray
FEATURES_INSTEAD = ("extract the features it was trained with yourself and caption them with "
                    "`hin caption --checkpoint CKPT --grid grid.h5 --region region.h5 --ids ...` "
                    "(Captioner.caption_features)")
VINVL_INSTEAD = ("VinVL region features come from VinVL's Faster R-CNN "
                 "(microsoft/scene_graph_benchmark), which does not run here: run it on your "
                 "pictures, import its TSV with `hin extract regions --vinvl-tsv features.tsv "
                 "--predictions predictions.tsv --out region.h5`, make grid features with "
                 "`hin extract grid --images DIR --out grid.h5`, then caption with "
                 "`hin caption --checkpoint CKPT --grid grid.h5 --region region.h5 --ids ...`")


class Captioner:
    """A checkpoint, its vocabulary and (for pictures) its feature extractors, ready to caption."""

    def __init__(self, checkpoint: str | Path, *, vocab: str | Path | None = None,
                 device: str = "auto", decoding: DecodingConfig = DecodingConfig(),
                 batch_size: int = 8, max_regions: int | None = None) -> None:
        """`max_regions`: None (the default) gives the model as many regions per image as it
        was trained with; a number overrides that, and `notes` then says so."""
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.model, self.extra = load(self.checkpoint, map_location=self.device)
        self.vocab = vocabulary_for(self.checkpoint, self.extra, vocab, self.model.config.vocab_size)
        self.ensemble = Ensemble(self.model)     # its cast copies are kept for every request
        self.ensemble.check(decoding, batch_size)
        self.decoding, self.batch_size = decoding, batch_size
        self.max_regions, note = max_regions_for(self.checkpoint, self.extra, max_regions)
        self.notes = [note] if note else []
        self._extractors: tuple[Any, Any] | None = None

    def __call__(self, pictures: Picture | Sequence[Picture]) -> list[CaptionedImage]:
        """Caption one picture or several (paths, PIL images or numpy arrays of pixels)."""
        if isinstance(pictures, (str, Path, Image.Image, np.ndarray)):
            pictures = [pictures]
        if isinstance(pictures, (bytes, bytearray)) or not isinstance(pictures, Sequence):
            raise UsageError(f"pictures must be a path, a PIL image, a numpy array of pixels or a "
                             f"list of them, got {type(pictures).__name__}"
                             + (" (open encoded bytes first: PIL.Image.open(io.BytesIO(data)))"
                                if isinstance(pictures, (bytes, bytearray)) else ""))
        return self.caption_pictures(pictures)

    def caption_pictures(self, pictures: Sequence[Picture]) -> list[CaptionedImage]:
        results = []
        for start in range(0, len(pictures), self.batch_size):
            chunk = pictures[start:start + self.batch_size]
            grid_entries, region_entries = self.picture_entries([load_picture(p) for p in chunk])
            names = [_name(p, start + i) for i, p in enumerate(chunk)]
            captioned = self.caption_arrays(names, [e["features"] for e in grid_entries],
                                            [e["features"] for e in region_entries])
            results += [replace(result, unfamiliar=self.unfamiliar(entry["features"]))
                        for result, entry in zip(captioned, grid_entries)]
        return results

    def unfamiliar(self, grid: np.ndarray) -> str | None:
        """Why a picture with these grid features looks unlike this checkpoint's training
        pictures, or None (hin.data.familiarity: the rule, and what it can tell)."""
        return unfamiliar(self.extra.get("feature_profile"), grid)

    def picture_entries(self, pictures: Sequence[Image.Image]) -> tuple[list[ImageEntry], list[ImageEntry]]:
        """What the recorded grid and region extractors make of each picture: `features` and,
        where the extractor provides them, `size`, `crop`, `boxes`, ..."""
        grid_extractor, region_extractor = self.extractors()
        return prepare_pictures(grid_extractor, pictures), prepare_pictures(region_extractor, pictures)

    def caption_features(self, grid_path: str | Path, region_path: str | Path,
                         image_ids: Sequence[int]) -> list[CaptionedImage]:
        """Caption precomputed features (the released HDF5 layout) of the given image ids."""
        config = self.model.config
        store = FeatureStore(grid_path, region_path, max_regions=self.max_regions,
                             grid_dim=config.grid_dim, region_dim=config.region_dim)
        try:
            results = []
            for start in range(0, len(image_ids), self.batch_size):
                chunk = list(image_ids[start:start + self.batch_size])
                grids, regions = zip(*(store[image_id] for image_id in chunk))
                results += self.caption_arrays([str(i) for i in chunk], grids, regions)
            return results
        finally:
            store.close()

    def caption_arrays(self, names: Sequence[str], grids: Sequence[np.ndarray],
                       regions: Sequence[np.ndarray]) -> list[CaptionedImage]:
        """Grid [Ng, Dg] and region [n, Dr] arrays per image. Regions are padded with zero
        rows (or cut) to `max_regions`, exactly as the training loader does."""
        return self.caption_batch(*self.batch(grids, regions, names), names)

    def caption_batch(self, grid: torch.Tensor, region: torch.Tensor, names: Sequence[str],
                      decoding: DecodingConfig | None = None) -> list[CaptionedImage]:
        """A batch as `batch` makes it -> each image's captions (`hin.decoding.caption`), with
        this captioner's settings or `decoding`."""
        decoding = decoding or self.decoding
        return caption(self.ensemble, grid, region, self.vocab, decoding, names)

    def batch(self, grids: Sequence[np.ndarray], regions: Sequence[np.ndarray],
              names: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image arrays -> the model's float32 batch, regions padded with zero rows (or cut)
        to `max_regions` exactly as the training loader does. `names` name the images in
        messages (default: their position)."""
        region_dim = self.model.config.region_dim
        region = np.stack([pad_regions(rows, self.max_regions, region_dim) for rows in regions])
        names = names if names is not None else [f"#{i + 1}" for i in range(len(grids))]
        return (torch.from_numpy(stack_grids(grids, names).astype(np.float32)),
                torch.from_numpy(region.astype(np.float32)))

    def extractors(self) -> tuple[Any, Any]:
        """The grid and region extractors this checkpoint's features came from (built once)."""
        if self._extractors is None:
            self._extractors = (self._extractor("grid"), self._extractor("region"))
        return self._extractors

    def _extractor(self, kind: str) -> Any:
        recorded = (self.extra.get("features") or {}).get(kind) or {}
        made_by = recorded.get("extractor")
        if made_by == "vinvl-tsv":
            raise CheckpointError(f"{self.checkpoint} was trained on VinVL {kind} features, "
                                  f"which cannot be computed from pictures here. {VINVL_INSTEAD}")
        if made_by not in EXTRACTORS:
            what = (f"{kind} features made by {made_by!r}" if made_by else
                    f"{kind} features that were not made by `hin extract` (the checkpoint "
                    "records no extractor for them)")
            raise CheckpointError(f"{self.checkpoint} was trained on {what}, so hin cannot "
                                  f"compute them from pictures; {FEATURES_INSTEAD}")
        extractor = extractor_from_attributes(recorded, device=str(self.device),
                                              precision=self.decoding.precision)
        expected = getattr(self.model.config, f"{kind}_dim")
        if extractor.kind != kind or extractor.feature_dim != expected:
            raise CheckpointError(
                f"{self.checkpoint} expects {kind} features of size {expected}, but its recorded "
                f"{kind} extractor {made_by!r} ({recorded.get('model')}) makes "
                f"{extractor.kind} features of size {extractor.feature_dim}; the checkpoint's "
                "feature record is inconsistent with its weights")
        return extractor


def picture_paths(sources: Sequence[str | Path]) -> list[Path]:
    """Picture paths, each folder replaced by its pictures (the listing rule of `hin extract`:
    entries named like pictures, by name)."""
    return [path for source in map(Path, sources)
            for path in (folder_pictures(source) if source.is_dir() else [source])]


def load_picture(picture: Picture) -> Image.Image:
    """A user's picture (a file, a picture already decoded, or its pixels as a numpy array
    [height, width] or [height, width, 3 or 4] of uint8) read by hin's reading rule."""
    if isinstance(picture, np.ndarray):
        if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or \
                (picture.ndim == 3 and picture.shape[-1] not in (3, 4)):
            raise UsageError("a picture given as a numpy array must hold uint8 pixels [height, "
                             f"width] or [height, width, 3 or 4], got {picture.dtype} "
                             f"{list(picture.shape)}")
        return as_rgb(Image.fromarray(picture))
    if isinstance(picture, Image.Image):
        return as_rgb(picture)
    if not isinstance(picture, (str, Path)):
        raise UsageError(f"each picture must be a path, a PIL image or a numpy array of pixels, "
                         f"got {type(picture).__name__}")
    return load_rgb(picture)


def _name(picture: Picture, index: int) -> str:
    if isinstance(picture, Image.Image):
        return getattr(picture, "filename", "") or f"picture {index + 1}"
    return str(picture)
