"""Very long and very tall pictures (10000x10, 10x10000): every extractor that tests can
build either extracts them or refuses them with hin.extract.resize's one message, and every
reader reports that refusal like an unreadable picture: `hin extract` and `hin caption` list
it and go on, `hin explain` stops in one line, `hin serve` answers JSON 422. A battery of odd
pictures never gets a 5xx from `hin serve`."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from extract_models import write_picture_checkpoint, write_tiny_clip, write_tiny_detr
from hin.cli import main
from hin.extract import build_extractor, prepare_pictures
from hin.extract.images import PictureError
from hin.extract.resize import PictureShapeError

pytest.importorskip("transformers")

VINVL_WEIGHTS = Path(__file__).parent / "fixtures" / "vinvl" / "vinvl_x152c4_small.pth"
LONG, TALL = (10000, 10), (10, 10000)
PICTURES = {"COCO_val2014_000000000011.png": (40, 60), "12.png": (50, 30)}


def _refusal(extractor: str, size: tuple[int, int], ratio: str, name: str = "the picture") -> str:
    return re.escape(f"{name} is {size[0]}x{size[1]} pixels: after resizing for {extractor} "
                     f"its short side would be 0 pixels; crop it or pad it to less than "
                     f"{ratio}:1 (long side to short side)")


def _picture(size: tuple[int, int]) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.fixture(scope="module")
def extractors(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {"clip-grid": build_extractor("clip-grid", model=str(write_tiny_clip(root / "clip")),
                                         device="cpu"),
            "detr": build_extractor("detr", model=str(write_tiny_detr(root / "detr")),
                                    revision=None, device="cpu"),
            "synth-grid": build_extractor("synth-grid"),
            "synth-regions": build_extractor("synth-regions"),
            "vinvl-x152c4": build_extractor("vinvl-x152c4", weights=str(VINVL_WEIGHTS),
                                            device="cpu")}


@pytest.mark.parametrize("size", [LONG, TALL], ids=["10000x10", "10x10000"])
@pytest.mark.parametrize("name", ["clip-grid", "synth-grid", "synth-regions", "vinvl-x152c4"])
def test_extractors_that_take_any_ratio_extract_long_and_tall_pictures(extractors, name, size):
    """CLIP's long side grows (32000x32 here, under the pixel limit), the synthetic world
    squeezes the picture to its canvas, VinVL's short side stays 1 pixel at 1000:1."""
    entry, = prepare_pictures(extractors[name], [_picture(size)])
    assert np.isfinite(entry["features"].astype(np.float32)).all()
    if "size" in entry:
        assert entry["size"].tolist() == [size[1], size[0]]


@pytest.mark.parametrize("size", [LONG, TALL], ids=["10000x10", "10x10000"])
def test_detr_refuses_a_picture_its_resize_would_shrink_to_nothing(extractors, size):
    """The tiny DETR caps the long side at 96 pixels: from 192:1 the short side rounds to 0
    (at 191:1 it is 1, and transformers then keeps the picture as it is)."""
    with pytest.raises(PictureShapeError, match=_refusal("DETR", size, "192")):
        extractors["detr"].preprocess(_picture(size))
    assert extractors["detr"].preprocess(_picture((191, 1))).pixels.shape == (3, 1, 191)


def test_clip_refuses_a_picture_its_resize_would_make_larger_than_the_pixel_limit(
        extractors, monkeypatch):
    """At 32 pixels across, 10000x10 becomes 32000x32 (1,024,000 pixels)."""
    monkeypatch.setenv("HIN_MAX_PIXELS", "1000000")
    message = re.escape("the picture is 10000x10 pixels: after resizing for CLIP it would be "
                        "32,000x32 pixels, over the limit of 1,000,000 ($HIN_MAX_PIXELS); crop "
                        "it or pad it to less than 976:1 (long side to short side)")
    with pytest.raises(PictureShapeError, match=message):
        extractors["clip-grid"].preprocess(_picture(LONG))
    assert extractors["clip-grid"].preprocess(_picture((975, 1))).pixels.shape == (3, 32, 32)


def test_vinvl_refuses_from_two_thousand_to_one(extractors):
    with pytest.raises(PictureError, match=_refusal("VinVL", (1, 2000), "2,000")):
        extractors["vinvl-x152c4"].preprocess(_picture((1, 2000)))
