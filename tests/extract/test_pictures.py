"""The one picture reading rule (hin.extract.images.as_rgb) that caption, explain, extract and
serve share: EXIF orientation, transparency on white, 16-bit pictures scaled to 8 bits."""

import io
import struct
import zlib

import h5py
import numpy as np
import pytest
from PIL import Image, ImageDraw

from helpers.extract_models import CLIP_IMAGE, write_tiny_clip
from hin.caption import load_picture
from hin.cli import main
from hin.data.features import read_attributes
from hin.extract import build_extractor, extract_to_file, list_images, prepare_pictures
from hin.extract.images import ClipPreprocessor, as_rgb, load_rgb, recorded_orientation
from hin.serve.inputs import decode_picture

ORIENTATION = 0x0112
UPRIGHT_SIZE = (120, 96)          # width, height of the picture as a page shows it


def _upright() -> Image.Image:
    """Two shapes on white, placed so that turning the picture moves every box."""
    picture = Image.new("RGB", UPRIGHT_SIZE, "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([10, 8, 39, 29], fill=(220, 30, 30))
    draw.ellipse([70, 50, 109, 85], fill=(30, 30, 220))
    return picture


def _save_sideways(picture: Image.Image, path, **options):
    """Store `picture` turned 90 degrees anticlockwise with EXIF orientation 6 (rotate 90
    clockwise to show), as a phone held upright stores a photo."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    picture.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, **options)
    return path


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_exif_orientation_6_is_read_upright_and_stored_reads_the_stored_pixels(tmp_path, suffix):
    path = _save_sideways(_upright(), tmp_path / f"1{suffix}", **({"quality": 95} if suffix == ".jpg" else {}))
    with Image.open(path) as stored:
        assert stored.size == UPRIGHT_SIZE[::-1]
    upright, stored = load_rgb(path), load_rgb(path, orientation="stored")
    assert upright.size == UPRIGHT_SIZE and stored.size == UPRIGHT_SIZE[::-1]
    difference = np.abs(np.asarray(upright, np.int16) - np.asarray(_upright(), np.int16))
    if suffix == ".png":
        assert difference.max() == 0
    else:                                                  # JPEG blurs the shapes' edges
        assert difference.mean() < 3
        assert np.asarray(upright)[15, 20].tolist() == pytest.approx([220, 30, 30], abs=12)
        assert np.asarray(upright)[68, 90].tolist() == pytest.approx([30, 30, 220], abs=12)


def test_the_rule_is_applied_once_whoever_reads_the_picture(tmp_path):
    """caption (a path or an opened picture), serve (bytes) and a second pass all see the
    upright picture: the turned copy no longer carries the tag, so nothing turns twice."""
    path = _save_sideways(_upright(), tmp_path / "2.png")
    expected = np.asarray(_upright())
    read = decode_picture(path.read_bytes())
    served = read.rgb
    assert (read.format, read.frames, read.note) == ("PNG", 1, None)
    with Image.open(path) as opened:
        for picture in (load_picture(path), load_picture(opened), served, as_rgb(load_rgb(path))):
            assert np.array_equal(np.asarray(picture), expected)
    with pytest.raises(ValueError, match="orientation must be one of exif, stored"):
        load_rgb(path, orientation="upright")


def _extract(extractor, folder, out, **options):
    report = extract_to_file(extractor, list_images(folder), out, workers=0, progress=False, **options)
    assert report.written == 1 and not report.failed
    with h5py.File(out) as handle:
        return {name.split("_", 1)[1]: handle[name][()] for name in handle}


def test_extraction_records_its_orientation_and_its_boxes_are_in_the_pictures_pixels(tmp_path):
    """`exif` gives the regions of the upright picture, `stored` (the default, the reference's
    rule) those of the pixels as stored; each file says which."""
    folder = tmp_path / "pictures"
    folder.mkdir()
    _save_sideways(_upright(), folder / "3.png")
    regions = build_extractor("synth-regions")
    for orientation, seen in (("exif", _upright()), ("stored", load_rgb(folder / "3.png", orientation="stored"))):
        out = tmp_path / f"{orientation}.h5"
        entry = _extract(regions, folder, out, **({"orientation": "exif"} if orientation == "exif" else {}))
        expected = prepare_pictures(regions, [seen])[0]
        assert read_attributes(out)["orientation"] == orientation
        assert entry["size"].tolist() == [seen.height, seen.width]
        assert len(entry["boxes"]) == 2
        for key, array in expected.items():
            assert np.array_equal(entry[key], array), (orientation, key)
    assert main(["extract", "regions", "--extractor", "synth-regions", "--images", str(folder),
                 "--out", str(tmp_path / "cli.h5"), "--orientation", "exif", "--workers", "0"]) == 0
    assert read_attributes(tmp_path / "cli.h5")["orientation"] == "exif"
    with h5py.File(tmp_path / "cli.h5") as handle:
        assert handle["3_size"][()].tolist() == [UPRIGHT_SIZE[1], UPRIGHT_SIZE[0]]


def test_a_run_in_another_orientation_never_extends_a_file(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    _save_sideways(_upright(), folder / "3.png")
    _extract(build_extractor("synth-grid"), folder, tmp_path / "grid.h5")
    with pytest.raises(ValueError, match="orientation: file has 'stored', this run 'exif'"):
        extract_to_file(build_extractor("synth-grid"), list_images(folder), tmp_path / "grid.h5",
                        workers=0, progress=False, orientation="exif")


def test_the_clip_grid_crop_box_is_in_the_upright_pictures_pixels(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    _save_sideways(_upright(), folder / "4.png")
    clip = build_extractor("clip-grid", model=str(write_tiny_clip(tmp_path / "clip")), device="cpu")
    entry = _extract(clip, folder, tmp_path / "grid.h5", orientation="exif")
    width, height = UPRIGHT_SIZE
    assert entry["size"].tolist() == [height, width]
    assert entry["crop"].tolist() == pytest.approx(ClipPreprocessor(CLIP_IMAGE).crop_box(width, height))
    assert entry["crop"].tolist() == pytest.approx([12, 0, 108, 96])


# ---- transparency ------------------------------------------------------------------------

def test_a_transparent_png_is_composited_onto_white_so_the_shapes_world_sees_its_shapes(tmp_path):
    on_white = np.asarray(_upright())
    shapes = (on_white != 255).any(axis=-1)
    rgba = np.zeros(on_white.shape[:2] + (4,), np.uint8)      # transparent black around the shapes
    rgba[shapes, :3], rgba[shapes, 3] = on_white[shapes], 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "5.png")
    regions = build_extractor("synth-regions")
    read = load_rgb(tmp_path / "5.png")
    assert np.array_equal(np.asarray(read), on_white)
    found = prepare_pictures(regions, [read])[0]["boxes"]
    assert found.tolist() == prepare_pictures(regions, [_upright()])[0]["boxes"].tolist()
    assert len(found) == 2
    # what the picture was read as before: black around the shapes, one region covering it all
    blackened = prepare_pictures(regions, [Image.open(tmp_path / "5.png").convert("RGB")])[0]["boxes"]
    assert blackened.tolist() == [[0, 0, *UPRIGHT_SIZE]]


def test_grey_alpha_palette_and_colour_key_transparency_are_all_white(tmp_path):
    grey = np.full((4, 6), 90, np.uint8)
    alpha = np.zeros((4, 6), np.uint8)
    alpha[:, :3] = 255                   # left half opaque grey, right half transparent
    Image.fromarray(np.stack([grey, alpha], -1), "LA").save(tmp_path / "la.png")
    palette = Image.fromarray(np.array([[0, 1, 2, 0]] * 3, np.uint8), "P")
    palette.putpalette([0, 0, 0, 200, 10, 10, 10, 10, 200])
    palette.save(tmp_path / "p.png", transparency=0)
    Image.new("RGB", (3, 2), (7, 8, 9)).save(tmp_path / "key.png", transparency=(7, 8, 9))
    half = np.asarray(as_rgb(Image.fromarray(np.array([[[255, 0, 0, 128]]], np.uint8), "RGBA")))

    assert np.asarray(load_rgb(tmp_path / "la.png"))[0].tolist() == [[90] * 3] * 3 + [[255] * 3] * 3
    assert np.asarray(load_rgb(tmp_path / "p.png"))[0].tolist() == [
        [255, 255, 255], [200, 10, 10], [10, 10, 200], [255, 255, 255]]
    assert np.asarray(load_rgb(tmp_path / "key.png")).tolist() == [[[255] * 3] * 3] * 2
    assert half[0, 0].tolist() == [255, 127, 127]          # half-transparent red over white


# ---- 16-bit pictures -----------------------------------------------------------------------

GREYS_16 = np.array([[0, 257, 257 * 128, 257 * 255, 40000, 65535]], np.uint16)
GREYS_8 = [0, 1, 128, 255, 156, 255]          # round(v * 255 / 65535): 40000 -> 155.6 -> 156


def _png_48_bit(values: np.ndarray) -> bytes:
    """A 16-bit-per-channel RGB PNG written by hand (Pillow writes none)."""
    height, width, _ = values.shape
    rows = b"".join(b"\x00" + values[row].astype(">u2").tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
            + chunk(b"IEND", b""))


def test_16_bit_greys_are_scaled_to_8_bits_not_clipped(tmp_path):
    Image.fromarray(GREYS_16).save(tmp_path / "grey16.png")
    big_endian = Image.frombytes("I;16B", GREYS_16.shape[::-1], GREYS_16.astype(">u2").tobytes())
    big_endian.save(tmp_path / "grey16b.tif")
    with Image.open(tmp_path / "grey16.png") as png, Image.open(tmp_path / "grey16b.tif") as tiff:
        assert (png.mode, tiff.mode) == ("I;16", "I;16B")
    pictures = [load_rgb(tmp_path / "grey16.png"), load_rgb(tmp_path / "grey16b.tif"),
                as_rgb(Image.fromarray(GREYS_16.astype(np.int32)))]          # mode I
    for picture in pictures:
        assert picture.mode == "RGB"
        assert np.asarray(picture)[0].tolist() == [[grey] * 3 for grey in GREYS_8]
    assert 40000 >> 8 == GREYS_8[4]


def test_48_bit_rgb_keeps_its_high_bytes(tmp_path):
    values = np.stack([GREYS_16, GREYS_16[:, ::-1], np.full_like(GREYS_16, 40000)], axis=-1)
    (tmp_path / "rgb48.png").write_bytes(_png_48_bit(values))
    read = np.asarray(load_rgb(tmp_path / "rgb48.png"))
    assert read[0, :, 0].tolist() == [0, 1, 128, 255, 156, 255]
    assert read[0, :, 2].tolist() == [156] * 6


def test_a_picture_that_needs_no_change_is_returned_as_it_is():
    picture = Image.new("RGB", (3, 2), (1, 2, 3))
    assert as_rgb(picture) is picture
    assert as_rgb(Image.open(io.BytesIO(_png_bytes(picture)))).tobytes() == picture.tobytes()


def _png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, "PNG")
    return buffer.getvalue()


def test_files_that_record_no_orientation_were_read_as_stored():
    """The released files and older hin files record none: their boxes are in stored pixels,
    so `hin explain` over them draws the pictures as stored."""
    assert recorded_orientation({"extractor": "clip-grid"}) == "stored"
    assert recorded_orientation({"orientation": "exif"}) == "exif"
    with pytest.raises(ValueError, match="orientation must be one of"):
        recorded_orientation({"orientation": "sideways"})
