"""VinVL: importing its released TSV features (tsv.py) and computing them from pictures with
a pure-PyTorch port of its X152-C4 detector (registered as `vinvl-x152c4`, extractor.py)."""

from hin.extract.vinvl.extractor import VinVLExtractor
from hin.extract.vinvl.modes import nms_mode_report
from hin.extract.vinvl.tsv import (
    VINVL_APPEARANCE_DIM,
    VINVL_ROW_DIM,
    VinVLFormatError,
    import_vinvl,
)

__all__ = ["VINVL_APPEARANCE_DIM", "VINVL_ROW_DIM", "VinVLExtractor", "VinVLFormatError",
           "import_vinvl", "nms_mode_report"]
