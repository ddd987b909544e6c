"""Very long and very tall pictures (10000x10, 10x10000): every extractor that tests can
build either extracts them or refuses them with hin.extract.resize's one message, and every
reader reports that refusal like an unreadable picture: `hin extract` and `hin caption` list
it and go on, `hin explain` stops in one line, `hin serve` answers JSON 422. A battery of odd
pictures never gets a 5xx from `hin serve`."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image

from helpers.extract_models import write_picture_checkpoint, write_tiny_clip, write_tiny_detr
from helpers.paths import FIXTURES
from hin.cli import main
from hin.extract import build_extractor, prepare_pictures
from hin.extract.resize import PictureShapeError

pytest.importorskip("transformers")

VINVL_WEIGHTS = FIXTURES / "vinvl" / "vinvl_x152c4_small.pth"
LONG, TALL = (10000, 10), (10, 10000)
PICTURES = {"COCO_val2014_000000000011.png": (40, 60), "12.png": (50, 30)}


def _refusal(extractor: str, size: tuple[int, int], ratio: str, name: str = "the picture") -> str:
    """The refusal of a picture whose short side would be 0 pixels (as a pattern: `match`)."""
    return re.escape(_message(extractor, size, ratio, name))


def _message(extractor: str, size: tuple[int, int], ratio: str, name: str) -> str:
    return (f"{name} is {size[0]}x{size[1]} pixels: after resizing for {extractor} its short "
            f"side would be 0 pixels; crop it or pad it to less than {ratio}:1 (long side to "
            "short side)")


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


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _gradient(size: tuple[int, int]) -> Image.Image:
    """A picture that compresses well (uploads stay small)."""
    ramp = np.linspace(0, 255, size[0] * size[1]).astype(np.uint8).reshape(size[1], size[0])
    return Image.fromarray(ramp).convert("RGB")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny HIN recording the tiny CLIP and DETR as its extractors, and a folder holding
    one good picture, a 10000x10 and a 10x10000 one."""
    root = tmp_path_factory.mktemp("long")
    checkpoint, _, _ = write_picture_checkpoint(root, PICTURES)
    folder = root / "mixed"
    folder.mkdir()
    good = root / "pictures" / "12.png"
    (folder / good.name).write_bytes(good.read_bytes())
    for image_id, size in ((21, LONG), (22, TALL)):
        _gradient(size).save(folder / f"{image_id}.png")
    return checkpoint, folder


def test_hin_caption_lists_long_and_tall_pictures_and_captions_the_others(checkpoint, capsys):
    path, folder = checkpoint
    assert main(["caption", str(folder), "--checkpoint", str(path)]) == 1
    out, err = capsys.readouterr()
    assert out.startswith(str(folder / "12.png")) and len(out.strip().splitlines()) == 2
    assert "Traceback" not in err and "2 of 3 pictures could not be read" in err
    assert re.search(r"^  " + _refusal("DETR", LONG, "192", str(folder / "21.png")) + "$", err, re.M)
    assert re.search(r"^  " + _refusal("DETR", TALL, "192", str(folder / "22.png")) + "$", err, re.M)


def test_hin_extract_lists_them_in_its_failure_report_and_goes_on(checkpoint, tmp_path, capsys):
    _, folder = checkpoint
    detr = write_tiny_detr(tmp_path / "detr")
    out = tmp_path / "region.h5"
    assert main(["extract", "regions", "--images", str(folder), "--out", str(out), "--model",
                 str(detr), "--workers", "0", "--device", "cpu"]) == 1
    assert "wrote 1 images" in capsys.readouterr().out
    report = (tmp_path / "region.h5.failed.tsv").read_text().splitlines()
    assert report[1:] == [f"{folder / name}\t{_message('DETR', size, '192', str(folder / name))}"
                          for name, size in (("21.png", LONG), ("22.png", TALL))]


def test_hin_explain_stops_in_one_line_naming_the_picture(checkpoint, tmp_path, capsys):
    path, folder = checkpoint
    assert main(["explain", str(folder / "21.png"), "--checkpoint", str(path), "--out",
                 str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(_refusal("DETR", LONG, "192", str(folder / "21.png")) + "$", err.strip())


def _odd_pictures() -> dict[str, bytes]:
    """1x1, 3x1, very long, very tall, 16-bit grey, palette with a transparent colour."""
    sixteen = Image.fromarray(np.arange(0, 65536, 257, dtype=np.uint16).reshape(16, 16))
    palette = Image.new("P", (20, 12))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.paste(1, (5, 0, 20, 12))
    palette.info["transparency"] = 1
    return {"1x1": _png(_gradient((1, 1))), "3x1": _png(_gradient((3, 1))),
            "10000x10": _png(_gradient(LONG)), "10x10000": _png(_gradient(TALL)),
            "16-bit": _png(sixteen), "palette": _png(palette)}


def test_hin_serve_answers_json_for_odd_pictures_and_never_a_5xx(checkpoint):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    from fastapi.testclient import TestClient

    from hin.config import DecodingConfig
    from hin.serve import ServeSettings, create_app

    settings = ServeSettings(checkpoint[0], decoding=DecodingConfig(beam_size=2), device="cpu",
                             max_wait_ms=5, allow_hosts=("testserver",))
    refused = {"10000x10": LONG, "10x10000": TALL}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for name, data in _odd_pictures().items():
            for query in ("", "?explain=true"):
                response = client.post(f"/v1/captions{query}", content=data)
                assert response.headers["content-type"] == "application/json", (name, response.text)
                if name in refused:
                    assert response.status_code == 422, (name, response.text)
                    assert re.fullmatch(_refusal("DETR", refused[name], "192", "the upload"),
                                        response.json()["detail"])
                else:
                    assert response.status_code == 200, (name, response.text)
                    assert response.json()["captions"]
