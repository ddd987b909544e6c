"""The synthetic world's picture extractors, `synth-grid` and `synth-regions`.

They compute, from any picture, exactly what `hin data synth` writes for its own pictures
(hin.data.shape_features: pixel cells through a fixed projection; regions = the objects
found as connected blobs of non-background colour, with their boxes). So a model trained on
the synthetic world captions and explains a picture drawn in a paint program, and
`synth-regions` gives region boxes for any picture with a plain background. Plain NumPy on
the CPU: `device` and `precision` are accepted for the common extractor interface and unused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, fields

from hin.data.shape_features import (
    GRID_EXTRACTOR,
    REGION_EXTRACTOR,
    PreparedPicture,
    ShapeFeatures,
)
from hin.errors import UsageError
from hin.extract.registry import ImageEntry, register_extractor


class _ShapeExtractor:
    name: str
    kind: str

    def __init__(self, device: str = "auto", precision: str = "fp32", **settings: object) -> None:
        known = [f.name for f in fields(ShapeFeatures)]
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise UsageError(f"the {self.name} extractor has no option {', '.join(unknown)}; "
                             f"its options: {', '.join(known)}")
        self.features = ShapeFeatures(**settings)
        self.preprocess = self.features.prepare

    @classmethod
    def from_attributes(cls, recorded: dict[str, object], device: str = "auto",
                        precision: str = "fp32") -> _ShapeExtractor:
        """The extractor that wrote a file with these attributes (see `attributes`)."""
        return cls(**asdict(ShapeFeatures.from_attributes(recorded)))


@register_extractor(GRID_EXTRACTOR)
class ShapeGridExtractor(_ShapeExtractor):
    """Grid cells computed from the pixels: `features` [cells, grid_dim] fp16."""

    kind = "grid"

    @property
    def feature_dim(self) -> int:
        return self.features.grid_dim

    def attributes(self) -> dict[str, object]:
        return self.features.grid_attributes()

    def __call__(self, prepared: Sequence[PreparedPicture]) -> list[ImageEntry]:
        return [self.features.grid_entry(picture) for picture in prepared]


@register_extractor(REGION_EXTRACTOR)
class ShapeRegionExtractor(_ShapeExtractor):
    """One region per object found in the picture: features, boxes (picture pixels), size."""

    kind = "region"

    @property
    def feature_dim(self) -> int:
        return self.features.region_dim

    def attributes(self) -> dict[str, object]:
        return self.features.region_attributes()

    def __call__(self, prepared: Sequence[PreparedPicture]) -> list[ImageEntry]:
        return [self.features.region_entry(picture) for picture in prepared]
