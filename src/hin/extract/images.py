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

Every reader (caption, explain, extract, serve) reads a file or an upload's bytes with one
function, `read_picture`, so all of them accept the same pictures and see what a page shows:
- formats: JPEG, PNG, WebP, GIF, BMP and TIFF only (`hin.extract.formats`), chosen from these
  when the file is opened; nothing else is ever decoded (no EPS or PDF: Pillow would start
  Ghostscript for them). Anything else is refused as an unsupported format, naming what it is;
- size: one limit, hin's ($HIN_MAX_PIXELS, 64 million by default), checked from the header
  before decoding (Pillow's own guard is raised to it, so its words never reach a user);
- truncated or damaged files are refused, a PNG whose data ends before its last row included;
- a file of several frames or pages (animated GIF, multi-page TIFF) gives its first, and the
  caller is told (`ReadPicture.note`);
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

import io
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from hin.config import DATASET_ORIENTATION, ORIENTATIONS
from hin.errors import HINError, UsageError
from hin.extract.formats import HEAD_BYTES, READ_FORMATS, not_readable, other_format, png_rows_complete

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


@dataclass(frozen=True)
class ImageListing:
    """The pictures a source names, and the entries of its folders that were left out."""

    files: list[ImageFile]
    skipped: list[Path]

    def skipped_note(self) -> str | None:
        """One line naming what was left out (at most 10 names), or None."""
        if not self.skipped:
            return None
        names = ", ".join(path.name for path in self.skipped[:10])
        more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
        return (f"skipped {len(self.skipped)} entries not named like pictures "
                f"({', '.join(sorted(IMAGE_SUFFIXES))}): {names}{more}")


def list_images(source: str | Path | Sequence[str | Path],
                ids_from: str | Path | None = None) -> list[ImageFile]:
    """`find_images`' pictures, sorted by id."""
    return find_images(source, ids_from).files


def find_images(source: str | Path | Sequence[str | Path],
                ids_from: str | Path | None = None) -> ImageListing:
    """A directory (its pictures, by name), a file (a picture, or a UTF-8 text file listing one
    picture path per line, relative paths from the file's folder, `#` comment lines ignored;
    told apart by content) or a list of paths -> pictures sorted by id, ids checked unique.
    Ids come from the file names, or with `ids_from` from that caption file, by file name
    (Flickr's `1000268201_693b08cb0e.jpg` holds no id; its `imgid` is the id)."""
    skipped: list[Path] = []
    if isinstance(source, (str, Path)):
        source = Path(source)
        if source.is_dir():
            paths, skipped = folder_listing(source)
        elif source.is_file():
            paths = _picture_or_list(source)
        else:
            raise ImageListError(f"{source} does not exist: give a folder of pictures, a "
                                 "text file listing one picture path per line, or pictures")
    else:
        paths = [Path(p) for p in source]
    named = _named(paths) if ids_from is None else _named_by(paths, Path(ids_from))
    return ImageListing(named, skipped)


def _named_by(paths: Sequence[Path], annotations: Path) -> list[ImageFile]:
    from hin.data.coco import image_file_names

    ids = image_file_names(annotations)
    unknown = [path.name for path in paths if path.name not in ids]
    if unknown:
        raise ImageListError(f"{len(unknown)} picture(s) are not named in {annotations} (first: "
                             f"{', '.join(unknown[:5])}); give a folder or list of its pictures only")
    return _named(paths, id_of=lambda path: ids[path.name])


def folder_listing(folder: Path) -> tuple[list[Path], list[Path]]:
    """A folder's entries named like pictures, by name, and the others (to be listed as
    skipped). Links that lead nowhere (dangling or looping) and folders named like pictures
    are kept: reading them fails and says why instead of skipping them unseen. A folder
    without any is refused."""
    entries = sorted(folder.iterdir())
    paths = [path for path in entries if path.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise ImageListError(f"{folder} holds no pictures (looked for "
                             f"{', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths, [path for path in entries if path.suffix.lower() not in IMAGE_SUFFIXES]


def folder_pictures(folder: Path) -> list[Path]:
    """`folder_listing`'s pictures."""
    return folder_listing(folder)[0]


def pictures_by_id(source: str | Path, wanted: Iterable[int]) -> dict[int, Path]:
    """The pictures of `source` (a folder, list file or picture) whose names give one of the
    `wanted` ids; other entries, named with an id or not, are not looked at."""
    wanted = set(wanted)
    source = Path(source)
    paths = folder_pictures(source) if source.is_dir() else _picture_or_list(source)
    found: dict[int, Path] = {}
    for path in paths:
        match = _TRAILING_INTEGER.search(path.stem)
        if match is None or int(match.group(1)) not in wanted:
            continue
        image_id = int(match.group(1))
        if image_id in found:
            raise ImageListError(f"{path} and {found[image_id]} both give image id {image_id}; "
                                 "rename or remove one")
        found[image_id] = path
    return found


def _picture_or_list(path: Path) -> list[Path]:
    """A file given as `--images`: a picture (by its content, whatever its name), a picture of
    a format hin does not read (refused), or a list file."""
    kind = is_picture(path)
    if kind:
        return [path]
    if kind is False:
        raise ImageListError(f"{path}: {not_readable(_head(path))}")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return [path]            # named like a picture but unreadable: its reading says why
    return _read_list_file(path)


def _read_list_file(list_file: Path) -> list[Path]:
    data = list_file.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ImageListError(
            f"{list_file} is neither a picture hin reads nor a UTF-8 text file listing picture "
            f"paths (byte {error.start} is not UTF-8): save the list as UTF-8, or give the "
            "folder of pictures") from None
    if "\x00" in text:
        raise ImageListError(f"{list_file} is neither a picture hin reads nor a text file "
                             f"listing picture paths (it holds NUL bytes): {not_readable(data[:HEAD_BYTES])}")
    lines = [line.strip() for line in text.splitlines()]
    paths = [Path(line) for line in lines if line and not line.startswith("#")]
    if not paths:
        raise ImageListError(f"list file {list_file} names no pictures")
    return [path if path.is_absolute() else list_file.parent / path for path in paths]


def _named(paths: Iterable[Path], id_of: Callable[[Path], int] | None = None) -> list[ImageFile]:
    """Pictures with their ids (by `id_of`; by default the number their name ends in), sorted;
    names that give no id or an id twice are refused together."""
    files, problems, seen = [], [], dict[int, Path]()
    for path in paths:
        try:
            image_id = image_id_from_name(path.stem) if id_of is None else id_of(path)
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


@dataclass(frozen=True)
class ReadPicture:
    """A picture read by the rule: its RGB pixels, the format it was stored in, and how many
    frames (GIF, APNG, WebP) or pages (TIFF) the file holds; only the first is ever read."""

    rgb: Image.Image
    format: str
    frames: int = 1

    @property
    def note(self) -> str | None:
        """What a user should be told about this picture (a multi-frame file), or None."""
        if self.frames == 1:
            return None
        return f"a {self.format} of {self.frames} frames: frame 1 was read, the others ignored"


def read_picture(source: str | Path | bytes, *, name: str | None = None, limit: int | None = None,
                 orientation: str = "exif") -> ReadPicture:
    """A file or bytes -> the picture by the reading rule, or PictureError naming `name` (the
    path by default) and saying why: not one of READ_FORMATS (the format is chosen from
    those only, when the file is opened, so no other decoder ever runs), over `limit` pixels
    (default `max_pixels()`, checked from the header before any decoding), truncated, or
    damaged."""
    limit = max_pixels() if limit is None else limit
    name = name if name is not None else str(source) if not isinstance(source, bytes) else "the picture"
    _let_pillow_decode(limit)
    try:
        file = io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")
    except OSError as error:
        raise PictureError(f"{name}: cannot be read ({error.strerror or error})") from None
    with file:
        try:
            return _decode(file, name, limit, orientation)
        except PictureError:
            raise
        except UnidentifiedImageError:
            file.seek(0)
            raise PictureError(f"{name}: {not_readable(file.read(HEAD_BYTES))}") from None
        except Image.DecompressionBombError:
            declared = f"its header declares more than {2 * (Image.MAX_IMAGE_PIXELS or limit):,} pixels"
            raise PictureError(_over_limit(name, declared, limit, None)) from None
        except (OSError, ValueError, SyntaxError, EOFError, zlib.error) as error:
            raise PictureError(f"{name}: cannot be decoded ({type(error).__name__}: {error}); is "
                               "it truncated or corrupt?") from error


def _decode(file: BinaryIO, name: str, limit: int, orientation: str) -> ReadPicture:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)   # the check is ours
        with Image.open(file, formats=READ_FORMATS) as picture:
            width, height = picture.size
            if width * height > limit:
                raise PictureError(_over_limit(name, f"{width}x{height} is {width * height:,} pixels",
                                               limit, width * height))
            frames = int(getattr(picture, "n_frames", 1))
            picture_format = str(picture.format)
            rgb = as_rgb(picture, orientation)
    if picture_format == "PNG" and not png_rows_complete(file):
        raise PictureError(f"{name}: the PNG is truncated: its image data ends before the "
                           f"{height} rows its header declares; re-save or re-download it")
    return ReadPicture(rgb, picture_format, frames)


def load_rgb(path: str | Path, limit: int | None = None, orientation: str = "exif") -> Image.Image:
    """The RGB pixels of the picture at `path` by the reading rule (`read_picture`)."""
    return read_picture(path, limit=limit, orientation=orientation).rgb


def picture_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a picture of READ_FORMATS, without decoding it; None
    when the header cannot be read (`read_picture` then says why)."""
    return _header_size(io.BytesIO(data))


def is_picture(path: Path) -> bool | None:
    """True for a file of READ_FORMATS, False for one of another known picture or document
    format (AVIF, HEIC, SVG, EPS, PDF, ...), None for anything else (text, perhaps): from the
    header, nothing decoded."""
    if _header_size(path) is not None:
        return True
    return False if other_format(_head(path)) else None


def _header_size(source: Path | BinaryIO) -> tuple[int, int] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(source, formats=READ_FORMATS) as picture:
                return picture.size
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
        return None


def _over_limit(name: str, size: str, limit: int, pixels: int | None) -> str:
    decoded = f" (it would decode to {3 * pixels / 1e6:,.0f} MB of RGB)" if pixels else ""
    return (f"{name}: {size}, over the limit of {limit:,}{decoded}; shrink the picture, or raise "
            f"the limit with {MAX_PIXELS_ENV}={pixels if pixels else 'N'}")


def _let_pillow_decode(limit: int) -> None:
    """Pillow has its own pixel guard (an error past twice Image.MAX_IMAGE_PIXELS, ~179 MP),
    which would make hin's limit unraisable past it and show Pillow's words: it is raised to
    hin's limit when below it (never lowered), so `read_picture`'s check is the one in force."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < limit:
        Image.MAX_IMAGE_PIXELS = limit


def _head(source: str | Path | bytes) -> bytes:
    if isinstance(source, bytes):
        return source[:HEAD_BYTES]
    with open(source, "rb") as file:
        return file.read(HEAD_BYTES)


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
        cropped = np.asarray(resized)[top:top + self.size, left:left + self.size]
        scaled = cropped.astype(np.float32) / np.float32(255.0)
        normalised = (scaled - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.ascontiguousarray(normalised.transpose(2, 0, 1))
