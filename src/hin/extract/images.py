"""Pictures on disk -> (image id, RGB picture), and CLIP's exact picture preparation.

Image ids follow the released feature files, whose entries are named `<integer id>_features`:
the id is the integer after the last `_` of the file stem (`COCO_val2014_000000391895.jpg`
-> 391895), or the whole stem when it is all digits (`391895.png` -> 391895). Any other name
is refused up front, naming the file, rather than hashed or numbered: an id must let a user
find the picture again. The same rule reads VinVL's TSV keys.

CLIP's preparation is re-implemented with Pillow and NumPy (torchvision must never be
imported here): shorter side to `size` with bicubic resampling, centre crop `size` x `size`,
scale to [0, 1], subtract CLIP's mean and divide by its std, channels first. The crop offset
is rounded as OpenAI's CLIP package rounds it (torchvision's `round((h - size) / 2)`, ties to
even), which is what the released features used; transformers' CLIPImageProcessor floors it
instead, so the two differ by one pixel when the excess is 3 modulo 4 (e.g. 640x427 COCO
pictures).

Every reader (caption, explain, extract, serve) turns a decoded picture into RGB pixels by one
rule, `as_rgb`, so all of them see the picture a page shows:
- orientation `exif` (user pictures): an EXIF orientation tag is applied, so a phone photo
  stored sideways is read upright; `stored` reads the pixels as stored, as the reference's
  extraction did (`hin extract --orientation`, recorded in the feature file). Every size and
  box hin records is in the pixels of the picture as read;
- transparency (RGBA, LA, palette or colour-key transparency) is composited onto white;
- 16-bit grey (`I;16*`, and `I`, Pillow's older mode for it) is scaled to 8 bits,
  round(v * 255 / 65535), exact for multiples of 257, instead of being clipped at 255
  (Pillow already reduces 48-bit RGB to its high bytes).
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from hin.config import DATASET_ORIENTATION, ORIENTATIONS
from hin.errors import HINError, UsageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_TRAILING_INTEGER = re.compile(r"(?:^|_)(\d+)$")
MAX_PIXELS_ENV = "HIN_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000   # a 64 MP picture decodes to ~200 MB of RGB; COCO's are ~0.3 MP
ORIENTATION_KEY = "orientation"      # feature file attribute: the rule its pictures were read by
SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I"})


class ImageListError(HINError, ValueError):
    """Pictures that cannot be listed or named: the message names the files and the fix."""


class PictureError(HINError, ValueError):
    """One picture that could not be read or decoded (the run records it and goes on)."""


def image_id_from_name(name: str) -> int:
    """`COCO_val2014_000000391895` or `391895` (a file stem or a TSV key) -> 391895."""
    match = _TRAILING_INTEGER.search(name)
    if match is None:
        raise ImageListError(
            f"cannot read an image id from {name!r}: ids are the integer after the last '_' "
            f"(COCO_val2014_000000391895 -> 391895) or an all-digit name (391895); rename it")
    return int(match.group(1))


@dataclass(frozen=True)
class ImageFile:
    image_id: int
    path: Path


def list_images(source: str | Path | Sequence[str | Path],
                ids_from: str | Path | None = None) -> list[ImageFile]:
    """A directory (its pictures, by name), a text file (one path per line, relative paths
    from the file's folder) or a list of paths -> pictures sorted by id, ids checked unique.
    Ids come from the file names, or with `ids_from` from that caption file, by file name
    (Flickr's `1000268201_693b08cb0e.jpg` holds no id; its `imgid` is the id)."""
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.is_dir():
            paths = folder_pictures(source)
        elif source.is_file() and source.suffix.lower() not in IMAGE_SUFFIXES:
            paths = _read_list_file(source)
        elif source.is_file():
            paths = [source]
        else:
            raise ImageListError(f"{source} does not exist: give a folder of pictures, a "
                                 "text file listing one picture path per line, or pictures")
    else:
        paths = [Path(p) for p in source]
    return _named(paths) if ids_from is None else _named_by(paths, Path(ids_from))


def _named_by(paths: Sequence[Path], annotations: Path) -> list[ImageFile]:
    from hin.data.coco import image_file_names

    ids = image_file_names(annotations)
    unknown = [path.name for path in paths if path.name not in ids]
    if unknown:
        raise ImageListError(f"{len(unknown)} picture(s) are not named in {annotations} (first: "
                             f"{', '.join(unknown[:5])}); give a folder or list of its pictures only")
    return sorted((ImageFile(ids[path.name], path) for path in paths), key=lambda file: file.image_id)


def folder_pictures(folder: Path) -> list[Path]:
    """A folder's entries named like pictures, by name. Links that lead nowhere (dangling or
    looping) and folders named like pictures are kept: reading them fails and says why (an
    extraction lists them in its failure report) instead of skipping them unseen. A folder
    without any is refused."""
    paths = sorted(path for path in folder.iterdir() if path.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ImageListError(f"{folder} holds no pictures (looked for "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def _read_list_file(list_file: Path) -> list[Path]:
    lines = list_file.read_text(encoding="utf-8").splitlines()
    paths = [Path(line.strip()) for line in lines if line.strip()]
    if not paths:
        raise ImageListError(f"list file {list_file} names no pictures")
    return [path if path.is_absolute() else list_file.parent / path for path in paths]


def _named(paths: Iterable[Path]) -> list[ImageFile]:
    files, problems, seen = [], [], dict[int, Path]()
    for path in paths:
        try:
            image_id = image_id_from_name(path.stem)
        except ImageListError as error:
            problems.append(f"{path}: {error}")
            continue
        if image_id in seen:
            problems.append(f"{path} and {seen[image_id]} both give image id {image_id}")
            continue
        seen[image_id] = path
        files.append(ImageFile(image_id, path))
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ImageListError(f"{len(problems)} picture name problem(s):\n  {shown}{more}")
    return sorted(files, key=lambda file: file.image_id)


def max_pixels() -> int:
    """The largest picture (width x height) hin decodes: $HIN_MAX_PIXELS, else 64 million."""
    configured = os.environ.get(MAX_PIXELS_ENV)
    if configured is None:
        return DEFAULT_MAX_PIXELS
    if re.fullmatch(r"[0-9]+", configured.strip()) is None or int(configured) <= 0:
        raise UsageError(f"{MAX_PIXELS_ENV}={configured!r} is not a positive whole number of pixels")
    return int(configured)


def check_orientation(orientation: str) -> str:
    if orientation not in ORIENTATIONS:
        raise UsageError(f"orientation must be one of {', '.join(ORIENTATIONS)}, got {orientation!r}")
    return orientation


def recorded_orientation(attributes: dict[str, Any]) -> str:
    """How a feature file's pictures were read: its `orientation` attribute; files that record
    none (older hin files, the released ones) read the pixels as stored."""
    return check_orientation(str(attributes.get(ORIENTATION_KEY, DATASET_ORIENTATION)))


def as_rgb(picture: Image.Image, orientation: str = "exif") -> Image.Image:
    """The one reading rule (module docstring): a picture -> an RGB picture as a page shows it
    (upright for `exif`, transparency on white, 16-bit scaled); one already so is returned as
    it is. Decodes the picture fully, so a truncated file fails here, in the caller's `try`."""
    picture.load()
    turned = picture.getexif().get(ExifTags.Base.Orientation, 1) != 1
    if check_orientation(orientation) == "exif" and turned:
        picture = ImageOps.exif_transpose(picture)       # a copy without the orientation tag
    if picture.mode in SIXTEEN_BIT_MODES:
        values = np.clip(np.asarray(picture), 0, 65535).astype(np.uint32)
        grey = ((values * 255 + 32767) // 65535).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if picture.has_transparency_data:
        white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, picture.convert("RGBA")).convert("RGB")
    return picture if picture.mode == "RGB" else picture.convert("RGB")


def load_rgb(path: str | Path, limit: int | None = None, orientation: str = "exif") -> Image.Image:
    """Decode a picture fully by the reading rule (`as_rgb`), or raise PictureError saying why.
    Pictures over `limit` pixels (default `max_pixels()`) are refused from their header,
    before any decoding."""
    limit = max_pixels() if limit is None else limit
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # we say it below
            with Image.open(path) as picture:
                width, height = picture.size
                if width * height > limit:
                    raise PictureError(
                        f"{path}: {width}x{height} is {width * height:,} pixels, over the limit of "
                        f"{limit:,} (it would decode to {3 * width * height / 1e6:,.0f} MB of RGB); "
                        f"shrink the picture, or raise the limit with "
                        f"{MAX_PIXELS_ENV}={width * height}")
                return as_rgb(picture, orientation)
    except PictureError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise PictureError(f"{path}: {type(error).__name__}: {error}") from error


@dataclass(frozen=True)
class ClipPreprocessor:
    """CLIP's picture preparation for square inputs of side `size` (224 for ViT-L/14)."""

    size: int = 224
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD

    def resized_shape(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) with the shorter side `size`, the longer truncated like CLIP's."""
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size

    def crop_offset(self, width: int, height: int) -> tuple[int, int]:
        """(left, top) of the centre crop in the resized picture."""
        resized_width, resized_height = self.resized_shape(width, height)
        return round((resized_width - self.size) / 2), round((resized_height - self.size) / 2)

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """The part of a `width` x `height` picture that the prepared square shows, in its own
        pixels (x1, y1, x2, y2): where the grid's cells lie on the picture."""
        resized_width, resized_height = self.resized_shape(width, height)
        left, top = self.crop_offset(width, height)
        scale_x, scale_y = width / resized_width, height / resized_height
        return (left * scale_x, top * scale_y, (left + self.size) * scale_x, (top + self.size) * scale_y)

    def __call__(self, picture: Image.Image) -> np.ndarray:
        """RGB picture -> float32 [3, size, size]."""
        width, height = self.resized_shape(*picture.size)
        resized = picture.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
        left, top = self.crop_offset(*picture.size)
        cropped = np.asarray(resized, dtype=np.float32)[top:top + self.size, left:left + self.size]
        scaled = cropped / np.float32(255.0)
        normalised = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))
