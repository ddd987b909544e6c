"""Caption your own pictures, or precomputed features, with a trained checkpoint.

    from hin import Captioner
    captioner = Captioner("hin.pt")
    print(captioner("photo.jpg"))

A checkpoint records which features it was trained on (`CheckpointRecord.features`: the
attributes `hin.data.features.read_attributes` reads from the grid and region files it was
trained with, or the extractors `hin import-checkpoint` recorded for the authors' model).
Pictures are turned into exactly those features by rebuilding the same extractors (from
`hin.extract`, which knows nothing of captioning); when a checkpoint was trained on features
that cannot be computed here (VinVL's, or files not made by `hin extract`), the Captioner says
so and what to pass instead. It never guesses an extractor and never substitutes other
features.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from hin.checkpoint import CheckpointError
from hin.checkpoint.opening import open_for_decoding
from hin.checkpoint.record import REFERENCE
from hin.config import DecodingConfig
from hin.data.familiarity import unfamiliar
from hin.data.features import FeatureStore, pad_regions, stack_grids
from hin.decoding import CaptionedImage, Ensemble, caption
from hin.devices import resolve_device
from hin.errors import UsageError
from hin.extract.images import (
    ImageListing,
    PictureError,
    ReadPicture,
    as_rgb,
    folder_listing,
    read_picture,
)
from hin.extract.registry import EXTRACTORS, ImageEntry, extractor_from_attributes
from hin.extract.resize import PictureShapeError

Picture = str | Path | bytes | Image.Image | np.ndarray
Prepared = tuple[Any, Any]       # a picture as its grid and its region extractor prepare it
FEATURES_INSTEAD = ("extract the features it was trained with yourself and caption them with "
                    "`hin caption --checkpoint CKPT --grid grid.h5 --region region.h5 --ids ...` "
                    "(Captioner.caption_features)")
VINVL_INSTEAD = ("a TSV records no detector weights: extract your pictures' regions with hin's "
                 "port of the same detector, `hin extract regions --extractor vinvl-x152c4 "
                 "--weights vinvl_vg_x152c4.pth --images DIR --out region.h5`, their grids with "
                 "`hin extract grid --images DIR --out grid.h5`, then caption them with "
                 "`hin caption --checkpoint CKPT --grid grid.h5 --region region.h5 --ids ...`")


@dataclass
class CaptionedPictures:
    """What `Captioner.caption_readable` made of pictures: the captions of those read, why
    each other one could not be read (its name first), and notes (a multi-frame file)."""

    results: list[CaptionedImage] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Captioner:
    """A checkpoint, its vocabulary and (for pictures) its feature extractors, ready to caption."""

    def __init__(self, checkpoint: str | Path, *, vocab: str | Path | None = None,
                 device: str = "auto", decoding: DecodingConfig = DecodingConfig(),
                 batch_size: int = 8, max_regions: int | None = None,
                 extractor_weights: Mapping[str, str | Path] | None = None) -> None:
        """`max_regions`: None (the default) gives the model as many regions per image as it
        was trained with; a number overrides that, and `notes` then says so.
        `extractor_weights`: kind ("grid", "region") -> a weights file used instead of the one
        the checkpoint records for that extractor."""
        self.checkpoint = Path(checkpoint)
        self.device = resolve_device(device)
        self.opened = open_for_decoding([self.checkpoint], self.device, vocab=vocab,
                                        max_regions=max_regions)
        member = self.opened.members[0]
        self.model, self.record, self.sha256 = member.model, member.record, member.sha256
        self.vocab = self.opened.vocab
        self.ensemble = Ensemble(self.model)     # its cast copies are kept for every request
        self.ensemble.check(decoding, batch_size)
        self.decoding, self.batch_size = decoding, batch_size
        self.max_regions = self.opened.max_regions
        self.notes = list(self.opened.notes)
        self.extractor_weights = _weights_overrides(extractor_weights)
        self._extractors: tuple[Any, Any] | None = None

    def __call__(self, pictures: Picture | Sequence[Picture]) -> list[CaptionedImage]:
        """Caption one picture or several (paths, a file's encoded bytes, PIL images or numpy
        arrays of pixels)."""
        if isinstance(pictures, (str, Path, bytes, Image.Image, np.ndarray)):
            return self.caption_pictures([pictures])
        if isinstance(pictures, (list, tuple)):
            return self.caption_pictures(pictures)
        raise UsageError(f"pictures must be a path, a file's bytes, a PIL image, a numpy array of "
                         f"pixels or a list of them, got {type(pictures).__name__}")

    def caption_pictures(self, pictures: Sequence[Picture]) -> list[CaptionedImage]:
        """Captions in order; the first picture that cannot be read stops it (PictureError),
        where `caption_readable` goes on past it."""
        return self._caption(pictures, keep_going=False).results

    def caption_readable(self, pictures: Sequence[Picture]) -> CaptionedPictures:
        """The captions of every picture that can be read, and why each other one cannot."""
        return self._caption(pictures, keep_going=True)

    def _caption(self, pictures: Sequence[Picture], keep_going: bool) -> CaptionedPictures:
        done = CaptionedPictures()
        batch: list[tuple[str, Prepared]] = []
        for index, picture in enumerate(pictures):
            name = _name(picture, index)
            try:
                read = read_user_picture(picture, name)
                prepared = self.prepare_picture(read.rgb, name)
            except (PictureError, UsageError) as error:    # unreadable, or not a picture at all
                if not keep_going:
                    raise
                done.failed.append(f"{name}: {error}" if isinstance(error, UsageError) else str(error))
                continue
            if read.note:
                done.notes.append(f"{name}: {read.note}")
            batch.append((name, prepared))
            if len(batch) == self.batch_size:
                done.results += self._caption_read(batch)
                batch = []
        if batch:
            done.results += self._caption_read(batch)
        return done

    def _caption_read(self, batch: Sequence[tuple[str, Prepared]]) -> list[CaptionedImage]:
        names = [name for name, _ in batch]
        grid_entries, region_entries = self.prepared_entries([prepared for _, prepared in batch])
        captioned = self.caption_arrays(names, [e["features"] for e in grid_entries],
                                        [e["features"] for e in region_entries])
        return [replace(result, unfamiliar=self.unfamiliar(entry["features"]))
                for result, entry in zip(captioned, grid_entries)]

    def unfamiliar(self, grid: np.ndarray) -> str | None:
        """Why a picture with these grid features looks unlike this checkpoint's training
        pictures, or None (hin.data.familiarity: the rule, and what it can tell)."""
        return unfamiliar(self.record.feature_profile, grid)

    def picture_entries(self, pictures: Sequence[Image.Image],
                        names: Sequence[str] | None = None) -> tuple[list[ImageEntry], list[ImageEntry]]:
        """What the recorded grid and region extractors make of each picture: `features` and,
        where the extractor provides them, `size`, `crop`, `boxes`, ... A picture an extractor
        cannot resize is refused by `names` (PictureShapeError)."""
        names = names or [f"picture {index + 1}" for index in range(len(pictures))]
        return self.prepared_entries([self.prepare_picture(picture, name)
                                      for picture, name in zip(pictures, names)])

    def prepare_picture(self, picture: Image.Image, name: str) -> Prepared:
        """The picture as the grid and region extractors read it; one they cannot resize
        (hin.extract.resize) is refused naming it."""
        grid_extractor, region_extractor = self.extractors()
        try:
            return grid_extractor.preprocess(picture), region_extractor.preprocess(picture)
        except PictureShapeError as error:
            raise error.named(name) from None

    def prepared_entries(self, prepared: Sequence[Prepared]) -> tuple[list[ImageEntry], list[ImageEntry]]:
        """`prepare_picture`'s results -> the grid and region entries of each picture."""
        grid_extractor, region_extractor = self.extractors()
        return (grid_extractor([grid for grid, _ in prepared]),
                region_extractor([region for _, region in prepared]))

    def caption_features(self, grid_path: str | Path, region_path: str | Path,
                         image_ids: Sequence[int]) -> list[CaptionedImage]:
        """Caption precomputed features (the released HDF5 layout) of the given image ids."""
        self.opened.require_features(grid_path, region_path)
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
        recorded = dict(self.record.features.get(kind) or {})
        made_by = recorded.get("extractor")
        if made_by == "vinvl-tsv":
            raise CheckpointError(f"{self.checkpoint} was trained on VinVL {kind} features "
                                  f"imported from VinVL's TSV files; {VINVL_INSTEAD}")
        if made_by is None and self.record.origin == REFERENCE:
            raise CheckpointError(
                f"{self.checkpoint} was imported without the {kind} extractor its features came "
                f"from: import it again with `hin import-checkpoint ... --{kind}-extractor NAME "
                "[KEY=VALUE ...]` (docs/evaluation.md, Caption any picture with the published "
                f"checkpoint), or {FEATURES_INSTEAD}")
        if made_by not in EXTRACTORS:
            what = (f"{kind} features made by {made_by!r}" if made_by else
                    f"{kind} features that were not made by `hin extract` (the checkpoint "
                    "records no extractor for them)")
            raise CheckpointError(f"{self.checkpoint} was trained on {what}, so hin cannot "
                                  f"compute them from pictures; {FEATURES_INSTEAD}")
        if kind in self.extractor_weights:
            recorded["weights"] = str(self.extractor_weights[kind])
        weights = recorded.get("weights")
        if weights is not None and not Path(weights).is_file():
            given = "given with --extractor-weights" if kind in self.extractor_weights else (
                f"where {self.checkpoint} records it")
            raise CheckpointError(
                f"the {kind} extractor {made_by!r} needs its weights file {weights}, which is not "
                f"there ({given}): put the file there, or point to it with "
                f"--extractor-weights {kind}=PATH")
        extractor = shared_extractor(recorded, str(self.device), self.decoding.precision)
        expected = getattr(self.model.config, f"{kind}_dim")
        if extractor.kind != kind or extractor.feature_dim != expected:
            raise CheckpointError(
                f"{self.checkpoint} expects {kind} features of size {expected}, but its recorded "
                f"{kind} extractor {made_by!r} ({recorded.get('model')}) makes "
                f"{extractor.kind} features of size {extractor.feature_dim}; the checkpoint's "
                "feature record is inconsistent with its weights")
        return extractor


_SHARED_EXTRACTORS: weakref.WeakValueDictionary[tuple[str, str, str], Any] = weakref.WeakValueDictionary()


def shared_extractor(recorded: dict[str, Any], device: str, precision: str) -> Any:
    """One extractor per recorded attributes, device and precision while any captioner holds
    it: checkpoints trained on the same features (`hin explain --compare`) load its model once
    and can share what it extracts."""
    key = (json.dumps(recorded, sort_keys=True, default=str), device, precision)
    extractor = _SHARED_EXTRACTORS.get(key)
    if extractor is None:
        extractor = extractor_from_attributes(recorded, device=device, precision=precision)
        _SHARED_EXTRACTORS[key] = extractor
    return extractor


def _weights_overrides(given: Mapping[str, str | Path] | None) -> dict[str, Path]:
    overrides = {kind: Path(path) for kind, path in (given or {}).items()}
    unknown = sorted(set(overrides) - {"grid", "region"})
    if unknown:
        raise UsageError(f"--extractor-weights takes grid=PATH or region=PATH, not "
                         f"{', '.join(unknown)}")
    return overrides


def picture_paths(sources: Sequence[str | Path]) -> list[Path]:
    """`picture_listing`'s paths."""
    return picture_listing(sources)[0]


def picture_listing(sources: Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Picture paths, each folder replaced by its pictures (the listing rule of `hin extract`:
    entries named like pictures, by name), and a note for each folder naming what it skipped."""
    paths: list[Path] = []
    notes = []
    for source in map(Path, sources):
        if not source.is_dir():
            paths.append(source)
            continue
        pictures, skipped = folder_listing(source)
        paths += pictures
        note = ImageListing([], skipped).skipped_note()
        if note:
            notes.append(f"{source}: {note}")
    return paths, notes


def load_picture(picture: Picture) -> Image.Image:
    """A user's picture (a file, a picture already decoded, or its pixels as a numpy array
    [height, width] or [height, width, 3 or 4] of uint8) read by hin's reading rule."""
    return read_user_picture(picture).rgb


def read_user_picture(picture: Picture, name: str | None = None) -> ReadPicture:
    """A file or its encoded bytes by `hin.extract.images.read_picture` (its formats only); a
    picture already decoded (a PIL image, or uint8 pixels) by its rule's last step (`as_rgb`):
    whoever opened it chose its format. `name` names bytes in messages."""
    if isinstance(picture, np.ndarray):
        if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or \
                (picture.ndim == 3 and picture.shape[-1] not in (3, 4)):
            raise UsageError("a picture given as a numpy array must hold uint8 pixels [height, "
                             f"width] or [height, width, 3 or 4], got {picture.dtype} "
                             f"{list(picture.shape)}")
        return ReadPicture(as_rgb(Image.fromarray(picture)), "pixels", 1)
    if isinstance(picture, Image.Image):
        return ReadPicture(as_rgb(picture), str(picture.format or "unknown"),
                           int(getattr(picture, "n_frames", 1)))
    if isinstance(picture, bytes):
        return read_picture(picture, name=name)
    if not isinstance(picture, (str, Path)):
        raise UsageError(f"each picture must be a path, a file's bytes, a PIL image or a numpy "
                         f"array of pixels, got {type(picture).__name__}")
    return read_picture(picture)


def _name(picture: Picture, index: int) -> str:
    if isinstance(picture, (bytes, np.ndarray)):
        return f"picture {index + 1}"
    if isinstance(picture, Image.Image):
        return getattr(picture, "filename", "") or f"picture {index + 1}"
    return str(picture)
