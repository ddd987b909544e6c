"""Caption metrics: the standard COCO scores via pycocoevalcap, and a fast CIDEr-D for rewards.

Metrics take strings and ids; they know nothing of models, vocabularies or datasets.
"""

from hin.metrics.cider import CiderDTable, CiderError, cider_d
from hin.metrics.coco import (
    CORENLP_ENV,
    METRIC_NAMES,
    JavaNotFoundError,
    MetricsError,
    MetricsReport,
    find_corenlp,
    find_java,
    ptb_tokenize,
    read_coco_results,
    score_captions,
)
from hin.metrics.postprocess import collapse_repeats

__all__ = [
    "CORENLP_ENV", "METRIC_NAMES", "CiderDTable", "CiderError", "JavaNotFoundError", "MetricsError",
    "MetricsReport", "cider_d", "collapse_repeats", "find_corenlp", "find_java", "ptb_tokenize",
    "read_coco_results", "score_captions",
]
