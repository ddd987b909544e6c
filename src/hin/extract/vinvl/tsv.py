"""Import VinVL's released region features (what the paper used) from its TSV files.

A features line is `image_key<TAB>n<TAB>base64(float32 [n, 2054])`, or the variant
`image_key<TAB>{"num_boxes": n, "features": base64}`; each row is 2048 appearance values
followed by 6 box-geometry values, which are dropped. A predictions line is
`image_key<TAB>{"objects": [{"rect": [x1, y1, x2, y2], "class": ..., "conf": ...}, ...],
"image_h": h, "image_w": w}`, and both files list the same keys in the same order (checked
line by line). The image id is the integer after the key's last `_`.

Written per image: `<id>_features` [n, 2048], and with predictions `<id>_boxes` [n, 4],
`<id>_size` (h, w), `<id>_cls_prob` [n]; an image with no objects gets empty arrays of those
shapes. Without a predictions file only the features are written: boxes are never guessed.
The files are tens of GB, so they are read one line at a time, and written through
`FeatureWriter` a chunk at a time (re-running resumes; a kill never corrupts the output).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from tqdm import tqdm

from hin.errors import HINError
from hin.extract.hf import storage_dtype
from hin.extract.images import ImageListError, image_id_from_name
from hin.extract.pipeline import ExtractionReport
from hin.extract.registry import ImageEntry
from hin.extract.writer import FeatureWriter

VINVL_APPEARANCE_DIM = 2048
VINVL_ROW_DIM = VINVL_APPEARANCE_DIM + 6
FLOAT16_MAX = float(np.finfo(np.float16).max)


class VinVLFormatError(HINError, ValueError):
    """A TSV line that does not follow VinVL's format: the message names file, line and key."""


def _lines(handle: TextIO | None) -> Iterator[str | None]:
    if handle is None:
        while True:
            yield None
    yield from handle
    yield None


def _parse_features(text: str, where: str) -> tuple[str, np.ndarray]:
    columns = text.rstrip("\r\n").split("\t")
    try:
        if len(columns) == 3:
            key, count, encoded = columns[0], int(columns[1]), columns[2]
        elif len(columns) == 2:
            record = json.loads(columns[1])
            key, count, encoded = columns[0], int(record["num_boxes"]), record["features"]
        else:
            raise VinVLFormatError(f"{where}: expected 2 or 3 tab-separated columns, found "
                                   f"{len(columns)}")
        values = np.frombuffer(base64.b64decode(encoded, validate=True), dtype=np.float32)
    except (ValueError, KeyError, TypeError, binascii.Error) as error:
        if isinstance(error, VinVLFormatError):
            raise
        raise VinVLFormatError(f"{where}: not a VinVL features line ({type(error).__name__}: "
                               f"{error})") from error
    if count < 0 or values.size != count * VINVL_ROW_DIM:
        raise VinVLFormatError(f"{where} (key {key}): {values.size} float32 values for "
                               f"num_boxes={count}; expected {count} x {VINVL_ROW_DIM}")
    return key, values.reshape(count, VINVL_ROW_DIM)[:, :VINVL_APPEARANCE_DIM]


def _parse_predictions(text: str, where: str) -> tuple[str, dict[str, Any]]:
    key, _, payload = text.rstrip("\r\n").partition("\t")
    try:
        record = json.loads(payload)
        objects = record["objects"]
        return key, {
            "boxes": np.array([obj["rect"] for obj in objects],
                              dtype=np.float32).reshape(len(objects), 4),
            "size": np.array([record["image_h"], record["image_w"]], dtype=np.int64),
            "cls_prob": np.array([obj["conf"] for obj in objects], dtype=np.float32),
        }
    except (ValueError, KeyError, TypeError) as error:
        raise VinVLFormatError(f"{where} (key {key}): not a VinVL predictions line "
                               f"({type(error).__name__}: {error})") from error


def _image_id(key: str, where: str) -> int:
    try:
        return image_id_from_name(key)
    except ImageListError as error:
        raise VinVLFormatError(f"{where}: {error}") from error


def import_vinvl(features_tsv: str | Path, out: str | Path,
                 predictions_tsv: str | Path | None = None, *, dtype: str = "float16",
                 chunk_size: int = 1000, progress: bool = True) -> ExtractionReport:
    """Stream VinVL TSV file(s) into the region HDF5 layout; see the module docstring."""
    storage_dtype(dtype)
    features_tsv = Path(features_tsv)
    for path in (features_tsv, predictions_tsv):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"VinVL file {path} does not exist")
    started = time.perf_counter()
    writer = FeatureWriter(out, {
        "extractor": "vinvl-tsv", "kind": "region", "feature_dim": VINVL_APPEARANCE_DIM,
        "source": features_tsv.name, "has_boxes": int(predictions_tsv is not None),
        "storage_dtype": dtype})
    report = ExtractionReport(Path(out))
    seen: dict[int, int] = {}
    chunk: dict[int, ImageEntry] = {}
    with ExitStack() as stack:
        features_file = stack.enter_context(features_tsv.open(encoding="utf-8"))
        predictions_file = (stack.enter_context(Path(predictions_tsv).open(encoding="utf-8"))
                            if predictions_tsv is not None else None)
        bar = stack.enter_context(tqdm(desc="importing VinVL regions", unit="img",
                                       disable=not progress))
        for number, (line, prediction) in enumerate(
                zip(_lines(features_file), _lines(predictions_file)), start=1):
            if line is None and prediction is None:
                break
            where = f"{features_tsv}:{number}"
            if line is None or (predictions_file is not None and prediction is None):
                shorter = features_tsv if line is None else predictions_tsv
                raise VinVLFormatError(f"{shorter} ends at line {number - 1} but the other file "
                                       "goes on: the two files must list the same images")
            if not line.strip():
                continue
            key = line.partition("\t")[0]
            image_id = _image_id(key, where)
            if image_id in seen:
                raise VinVLFormatError(f"{where}: image id {image_id} (key {key}) already came "
                                       f"on line {seen[image_id]}")
            seen[image_id] = number
            if prediction is not None and prediction.partition("\t")[0] != key:
                raise VinVLFormatError(
                    f"line {number}: {features_tsv} has key {key!r} but {predictions_tsv} has "
                    f"{prediction.partition(chr(9))[0]!r}; the two files must list the same "
                    "keys in the same order")
            bar.update(1)
            if image_id in writer.done_ids:
                report.skipped += 1
                continue
            chunk[image_id] = _entry(line, prediction, where, image_id, dtype,
                                     f"{predictions_tsv}:{number}")
            if len(chunk) >= chunk_size:
                writer.write_chunk(chunk)
                report.written += len(chunk)
                chunk = {}
        writer.write_chunk(chunk)
        report.written += len(chunk)
    report.images_in_file = writer.finish()
    report.seconds = time.perf_counter() - started
    return report


def _entry(line: str, prediction: str | None, where: str, image_id: int, dtype: str,
           prediction_where: str) -> ImageEntry:
    key, appearance = _parse_features(line, where)
    if dtype == "float16" and appearance.size and np.abs(appearance).max() > FLOAT16_MAX:
        raise VinVLFormatError(f"{where} (image {image_id}): values exceed the float16 range; "
                               "import with `--store-as float32` (dtype='float32')")
    entry: ImageEntry = {"features": appearance.astype(storage_dtype(dtype))}
    if prediction is not None:
        _, predicted = _parse_predictions(prediction, prediction_where)
        if len(predicted["boxes"]) != len(appearance):
            raise VinVLFormatError(
                f"{prediction_where} (key {key}): {len(predicted['boxes'])} objects but the "
                f"features line has {len(appearance)} boxes")
        entry.update(predicted)
    return entry
