"""The extractor registry: what every picture extractor provides (`PictureExtractor`), the
names they are registered under, and building one by name or from a file's recorded
attributes. Light on purpose (no torch): extractors register as their modules are imported
(`import hin.extract` imports the built-in ones)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import numpy as np
from PIL import Image

from hin.errors import UsageError

ImageEntry = dict[str, np.ndarray]


class PictureExtractor(Protocol):
    """What every registered extractor provides."""

    name: str                                    # set by register_extractor

    @property
    def kind(self) -> str:
        """"grid" or "region"."""

    @property
    def feature_dim(self) -> int:
        """The size of each feature vector."""

    @property
    def preprocess(self) -> Callable[[Image.Image], Any]:
        """Picture -> what `__call__` batches; picklable, as it runs in loader workers. A
        picture its resize cannot take is refused by `hin.extract.resize.check_resized`."""

    @classmethod
    def from_attributes(cls, recorded: dict[str, Any], device: str = "auto",
                        precision: str = "fp32") -> PictureExtractor:
        """Rebuild the extractor that wrote `recorded` (a file's `attributes()`)."""

    def attributes(self) -> dict[str, Any]:
        """What made these features (recorded in the output file, and so in checkpoints)."""

    def __call__(self, prepared: Sequence[Any]) -> list[ImageEntry]:
        """Prepared pictures -> per image `{"features": [n, feature_dim], ...}` (numpy)."""


Extractor = TypeVar("Extractor", bound=PictureExtractor)
EXTRACTORS: dict[str, type[PictureExtractor]] = {}


def register_extractor(name: str) -> Callable[[type[Extractor]], type[Extractor]]:
    """Class decorator: make an extractor available by name (`build_extractor(name, ...)`)."""
    def register(cls: type[Extractor]) -> type[Extractor]:
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


def extractor_from_attributes(recorded: dict[str, Any], device: str = "auto",
                              precision: str = "fp32") -> PictureExtractor:
    """The registered extractor that wrote features with these attributes, rebuilt."""
    name = recorded.get("extractor")
    if name not in EXTRACTORS:
        raise UsageError(f"features made by {name!r} cannot be computed from pictures here; "
                         f"picture extractors: {sorted(EXTRACTORS)}")
    return EXTRACTORS[name].from_attributes(recorded, device=device, precision=precision)

