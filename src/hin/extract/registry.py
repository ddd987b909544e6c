"""The extractor registry: what every picture extractor provides (`PictureExtractor`), the
names they are registered under, and building one by name or from a file's recorded
attributes. Light on purpose (no torch): extractors register as their modules are imported
(`import hin.extract` imports the built-in ones)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
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



def extractor_record(kind: str, spec: Sequence[str], device: str = "cpu"
                     ) -> tuple[dict[str, Any], int]:
    """`NAME [KEY=VALUE ...]` (a registered extractor and its build options, e.g.
    `vinvl-x152c4 weights=vinvl_vg_x152c4.pth nms_filter=1`) -> what a checkpoint records of
    it, and its feature size. The extractor is built once, so the record is exactly what it
    writes into feature files (`attributes()`), and rebuilds it later; a `weights` option is
    kept as an absolute path (`~` expanded, as the extractor reads it)."""
    if not spec:
        raise UsageError(f"--{kind}-extractor needs a registered extractor name")
    name, *settings = spec
    options: dict[str, Any] = {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if not equals or not key:
            raise UsageError(f"--{kind}-extractor {name}: options are KEY=VALUE, got {setting!r}")
        options[key] = _option_value(value)
    extractor = build_extractor(name, device=device, **options)
    if extractor.kind != kind:
        raise UsageError(f"--{kind}-extractor {name} makes {extractor.kind} features, "
                         f"not {kind} features")
    attributes = dict(extractor.attributes())
    if "weights" in options:
        attributes["weights"] = str(Path(str(options["weights"])).expanduser().resolve())
    return attributes, extractor.feature_dim


def _option_value(text: str) -> Any:
    """A KEY=VALUE option's value: an integer, a number, true/false, or the text itself."""
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)
