"""The ground every configuration module stands on: the error type, the checks settings share
and the named choices (precisions, orientations, ...) that other parts of hin offer as flags.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, TypeVar

from hin.errors import HINError

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Settings = TypeVar("Settings", bound="DataclassInstance")

POSITION_TABLES = ("frozen-random", "sinusoid")

MAX_SEED = 2**63   # torch.Generator.manual_seed takes seeds below this

PRECISIONS = ("fp32", "bf16", "auto")
# Feature extraction also offers fp16: the weights in float16, on CUDA only. The reference
# computed the released CLIP grids in fp32 (and stored float32): fp32 is the faithful choice.
EXTRACTION_PRECISIONS = ("fp32", "bf16", "fp16", "auto")
# How extracted features are stored (`--store-as`): float16 halves the files; float32 keeps
# every bit the arithmetic gave, as the reference's grids were stored.
STORAGE_DTYPES = ("float16", "float32")
# How pictures are turned upright (hin.extract.images.as_rgb): `exif` applies the EXIF
# orientation tag, as caption, explain and serve read pictures, and so `hin extract`'s default
# (features of one's own photos must be what captioning them later sees); `stored` reads pixels
# as stored, as the reference's extraction of COCO did: the rule of files that record none.
ORIENTATIONS = ("exif", "stored")
DATASET_ORIENTATION = "stored"
EXTRACT_ORIENTATION = "exif"
# `hin explain --paper`: how the paper's figure marks words and draws maps, and its default
# printed width (a two-column figure in the common conference styles), hin.explain.paper.
PAPER_MARKINGS = ("paper", "diff")
PAPER_MAP_STYLES = ("contour", "tint")
TWO_COLUMN_INCHES = 7.16


class ConfigError(HINError, ValueError):
    """A configuration value or key that cannot be used, with what would be accepted."""


def require_positive_ints(config: Any, *names: str, least: int = 1) -> None:
    """Each named field an int (not a bool) of at least `least` (1, or 0 for a count)."""
    for name in names:
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            what = "a positive integer" if least else "a non-negative integer"
            raise ConfigError(f"{type(config).__name__}.{name} must be {what}, got {value!r}")


def require_non_negative_ints(config: Any, *names: str) -> None:
    require_positive_ints(config, *names, least=0)


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_precision(name: str, choices: tuple[str, ...] = PRECISIONS,
                    what: str = "precision") -> str:
    """The one check of a precision name (decoding, training, extraction) -> the name."""
    if name not in choices:
        raise ConfigError(f"{what} must be one of {', '.join(choices)}, got {name!r}")
    return name


def require_choice(config: Any, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise ConfigError(f"{type(config).__name__}.{name} must be one of {choices}, got {value!r}")
