"""Features from pictures, in the released HDF5 layout: CLIP grid features, region features
(VinVL TSV import, VinVL's own X152-C4 detector, or the built-in DETR extractor), the
synthetic world's own extractors (`synth-grid`, `synth-regions`), written resumably and never
half-written.

Importing this package registers the built-in extractors; `transformers` is imported only
when a model is loaded, so the TSV import works without it.
"""

from hin.data.features import read_attributes
from hin.extract.grid import ClipGridExtractor
from hin.extract.images import ClipPreprocessor, ImageFile, image_id_from_name, list_images
from hin.extract.pipeline import ExtractionReport, extract_to_file, prepare_pictures
from hin.extract.regions import DetrRegionExtractor
from hin.extract.registry import (
    EXTRACTORS,
    PictureExtractor,
    build_extractor,
    extractor_from_attributes,
    extractor_record,
    register_extractor,
)
from hin.extract.shapes import ShapeGridExtractor, ShapeRegionExtractor
from hin.extract.shards import Shard, choose_shard
from hin.extract.vinvl import VinVLExtractor, import_vinvl, nms_mode_report
from hin.extract.writer import FeatureWriter, merge_shards

__all__ = ["EXTRACTORS", "ClipGridExtractor", "ClipPreprocessor", "DetrRegionExtractor",
           "ExtractionReport", "FeatureWriter", "ImageFile", "PictureExtractor", "Shard",
           "ShapeGridExtractor", "ShapeRegionExtractor", "VinVLExtractor", "build_extractor",
           "choose_shard", "extract_to_file", "extractor_from_attributes", "extractor_record", "image_id_from_name",
           "import_vinvl", "list_images", "merge_shards", "nms_mode_report", "prepare_pictures",
           "read_attributes", "register_extractor"]
