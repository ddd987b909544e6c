"""The one reading rule for pictures, for paths and bytes (hin.extract.images.read_picture),
as `hin caption`, `hin extract` and `hin serve` apply it: only JPEG, PNG, WebP, GIF, BMP and
TIFF are decoded (an EPS never reaches Ghostscript), truncated pictures are refused, a
multi-frame file says which frame was read, and `--images` is told apart by content."""

from __future__ import annotations

import io
import os
import struct
import subprocess
import zlib

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image

from helpers.extract_models import write_picture_checkpoint
from hin.cli import main
from hin.extract.images import ImageListError, PictureError, find_images, read_picture

pytest.importorskip("transformers")
PICTURES = {"12.png": (50, 30), "13.png": (32, 32)}
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n"
       b"newpath 0 0 moveto 16 16 lineto stroke\nshowpage\n%%EOF\n")
AVIF = b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf" + b"\x00" * 40
HEIC = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 40
SVG = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8"/>\n'


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("reading")
    path, _, _ = write_picture_checkpoint(root, PICTURES)
    return path, root


@pytest.fixture
def ghostscript(tmp_path, monkeypatch):
    """A stand-in `gs` first on PATH that records every call: the file it writes must never
    appear. Pillow's cached lookup is cleared so that it would find this one."""
    folder, record = tmp_path / "bin", tmp_path / "gs-calls"
    folder.mkdir()
    (folder / "gs").write_text(f'#!/bin/sh\necho "$@" >> {record}\n[ "$1" = --version ]\n')
    (folder / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)
    return record


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(width: int, height: int, raw: bytes, interlaced: bool = False) -> bytes:
    """An 8-bit RGB PNG of `raw` (filter bytes included), however many rows that is."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, int(interlaced))
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw))
            + _chunk(b"IEND", b""))


def _one_row_of(width: int, height: int) -> bytes:
    """A PNG declaring width x height whose (complete) compressed data holds one row."""
    return _png(width, height, b"\x00" + b"\x80" * 3 * width)


def _adam7_bytes(width: int, height: int) -> int:
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
              (0, 1, 1, 2))
    total = 0
    for x0, y0, dx, dy in passes:
        columns, rows = len(range(x0, width, dx)), len(range(y0, height, dy))
        total += rows * (1 + 3 * columns) if columns else 0
    return total


def test_the_stand_in_ghostscript_is_what_pillow_would_start(tmp_path, ghostscript):
    """The test of the test: opened as Pillow opens any file, the EPS starts `gs` (the
    stand-in answers `--version` and fails the conversion)."""
    (tmp_path / "drawing.eps").write_bytes(EPS)
    with pytest.raises(subprocess.CalledProcessError), Image.open(tmp_path / "drawing.eps") as picture:
        picture.load()
    assert "-sOutputFile=" in ghostscript.read_text()        # through a temporary file


def test_an_eps_never_reaches_ghostscript_in_caption_extract_or_serve(checkpoint, tmp_path,
                                                                     ghostscript, capsys):
    ckpt, root = checkpoint
    folder = tmp_path / "pictures"
    folder.mkdir()
    (folder / "7.jpg").write_bytes(EPS)                # the name says JPEG, the bytes EPS
    (folder / "8.png").write_bytes((root / "pictures" / "12.png").read_bytes())
    (tmp_path / "9.eps").write_bytes(EPS)
    assert main(["caption", "--checkpoint", str(ckpt), str(folder / "7.jpg"), str(folder / "8.png"),
                 str(tmp_path / "9.eps")]) == 1
    err = capsys.readouterr().err
    assert "2 of 3 pictures could not be read" in err
    assert f"{folder / '7.jpg'}: its format is EPS/PostScript, which hin does not read" in err
    assert "(unsupported format)" in err and "Traceback" not in err

    out = tmp_path / "grid.h5"
    assert main(["extract", "grid", "--images", str(folder), "--out", str(out),
                 "--extractor", "synth-grid", "--workers", "0"]) == 1
    assert "1 pictures could not be read" in capsys.readouterr().out
    assert "EPS/PostScript" in (tmp_path / "grid.h5.failed.tsv").read_text()
    assert main(["extract", "grid", "--images", str(tmp_path / "9.eps"), "--out", str(out),
                 "--extractor", "synth-grid", "--workers", "0"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"hin extract: error: {tmp_path / '9.eps'}: its "
                                                   "format is EPS/PostScript")

    from fastapi.testclient import TestClient

    from hin.serve import ServeSettings, create_app

    settings = ServeSettings(ckpt, device="cpu", allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        for body, kind in ((EPS, "image/png"), (EPS, "application/postscript")):
            response = client.post("/v1/captions", content=body, headers={"content-type": kind})
            assert response.status_code == 400
            assert "the upload: its format is EPS/PostScript" in response.json()["detail"]
        form = client.post("/v1/captions", files={"file": ("x.eps", EPS, "image/x-eps")})
        assert form.status_code == 400 and "EPS/PostScript" in form.json()["detail"]
    assert not ghostscript.exists()


def test_a_png_whose_data_ends_after_one_row_is_refused_in_the_cli_and_serve(checkpoint, tmp_path,
                                                                          capsys):
    ckpt, _ = checkpoint
    data = _one_row_of(7999, 7999)
    with Image.open(io.BytesIO(data)) as opened:      # what Pillow alone makes of it
        opened.load()
        assert opened.size == (7999, 7999)
    with pytest.raises(PictureError, match=r"the picture: the PNG is truncated: its image data "
                                           r"ends before the 7999 rows its header declares"):
        read_picture(data)
    (tmp_path / "5.png").write_bytes(data)
    assert main(["caption", "--checkpoint", str(ckpt), str(tmp_path / "5.png")]) == 1
    assert f"  {tmp_path / '5.png'}: the PNG is truncated" in capsys.readouterr().err

    from fastapi.testclient import TestClient

    from hin.serve import ServeSettings, create_app

    settings = ServeSettings(ckpt, device="cpu", allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/captions", content=data)
    assert response.status_code == 400
    assert response.json()["detail"].startswith("the upload: the PNG is truncated")


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGB", "RGBA", "I;16"])
def test_complete_pngs_of_every_layout_are_accepted(tmp_path, mode):
    """The row count knows every bit depth and colour type (odd widths: partial bytes)."""
    picture = Image.fromarray(np.arange(13 * 7 * 3, dtype=np.uint8).reshape(7, 13, 3)).convert(mode)
    picture.save(tmp_path / "1.png")
    assert read_picture(tmp_path / "1.png").rgb.size == (13, 7)


def test_interlaced_pngs_are_counted_pass_by_pass():
    width, height = 13, 11
    complete = b"\x00" * _adam7_bytes(width, height)
    assert read_picture(_png(width, height, complete, interlaced=True)).rgb.size == (width, height)
    last_row = 1 + 3 * width                   # pass 7 holds whole rows: 5 of them here
    with pytest.raises(PictureError, match="the PNG is truncated"):
        read_picture(_png(width, height, complete[:-last_row], interlaced=True))


def test_a_multi_frame_picture_says_its_first_frame_was_read(checkpoint, tmp_path, capsys):
    ckpt, root = checkpoint
    frames = [Image.new("RGB", (40, 30), colour) for colour in ("white", "red", "blue")]
    frames[0].save(tmp_path / "3.gif", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "4.tif", save_all=True, append_images=frames[1:2])
    gif, tif = read_picture(tmp_path / "3.gif"), read_picture(tmp_path / "4.tif")
    assert (gif.frames, tif.frames) == (3, 2)
    assert gif.note == "a GIF of 3 frames: frame 1 was read, the others ignored"
    assert np.asarray(gif.rgb).min() == 255                   # the first frame: white
    assert read_picture(root / "pictures" / "12.png").note is None
    assert main(["caption", "--checkpoint", str(ckpt), str(tmp_path / "3.gif")]) == 0
    assert (f"hin caption: note: {tmp_path / '3.gif'}: a GIF of 3 frames: frame 1 was read"
            in capsys.readouterr().err)

    from fastapi.testclient import TestClient

    from hin.serve import ServeSettings, create_app

    settings = ServeSettings(ckpt, device="cpu", allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        answer = client.post("/v1/captions", content=(tmp_path / "3.gif").read_bytes()).json()
    assert answer["picture"] == {"width": 40, "height": 30, "format": "GIF", "frames": 3}
    assert main(["extract", "grid", "--images", str(tmp_path), "--out", str(tmp_path / "g.h5"),
                 "--extractor", "synth-grid", "--workers", "0"]) == 0
    assert (f"note: {tmp_path / '3.gif'}: a GIF of 3 frames: frame 1 was read, the others "
            "ignored (and 1 more like it)" in capsys.readouterr().out)


@pytest.mark.parametrize(("name", "content", "what"), [
    ("photo.avif", AVIF, "AVIF"), ("photo.heic", HEIC, "HEIC/HEIF"), ("drawing.svg", SVG, "SVG"),
    ("drawing.txt", EPS, "EPS/PostScript")])
def test_a_picture_of_another_format_given_as_images_is_refused_by_content(tmp_path, capsys, name,
                                                                          content, what):
    (tmp_path / name).write_bytes(content)
    code = main(["extract", "grid", "--images", str(tmp_path / name), "--out",
                 str(tmp_path / "grid.h5"), "--extractor", "synth-grid"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert err.startswith(f"hin extract: error: {tmp_path / name}: its format is {what}")
    assert "(unsupported format)" in err


def test_images_is_a_picture_or_a_list_by_content_and_folders_list_what_they_skip(tmp_path):
    picture = tmp_path / "pics" / "21.png"
    picture.parent.mkdir()
    Image.new("RGB", (8, 8)).save(picture)
    renamed = tmp_path / "22.txt"                     # a PNG however it is named
    renamed.write_bytes(picture.read_bytes())
    assert [f.path for f in find_images(renamed).files] == [renamed]
    listing = tmp_path / "list.txt"
    listing.write_text("\ufeff# my pictures\npics/21.png\n\n  # not this one: pics/9.png\n",
                       encoding="utf-8")
    assert [f.path for f in find_images(listing).files] == [tmp_path / "pics" / "21.png"]
    (tmp_path / "latin.txt").write_bytes("pics/caf\xe9_21.png\n".encode("latin-1"))
    with pytest.raises(ImageListError, match=r"latin.txt is neither a picture hin reads nor a "
                                             r"UTF-8 text file listing picture paths \(byte 8 "
                                             r"is not UTF-8\): save the list as UTF-8"):
        find_images(tmp_path / "latin.txt")
    for name, content in (("a.avif", AVIF), ("b.heic", HEIC), ("c.svg", SVG), ("notes.md", b"x")):
        (picture.parent / name).write_bytes(content)
    found = find_images(picture.parent)
    assert [f.path for f in found.files] == [picture]
    assert found.skipped_note() == ("skipped 4 entries not named like pictures (.bmp, .gif, .jpeg, "
                                    ".jpg, .png, .tif, .tiff, .webp): a.avif, b.heic, c.svg, "
                                    "notes.md")


def test_hin_extract_names_what_a_folder_skipped(tmp_path, capsys):
    folder = tmp_path / "pics"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(folder / "21.png")
    (folder / "22.avif").write_bytes(AVIF)
    assert main(["extract", "grid", "--images", str(folder), "--out", str(tmp_path / "grid.h5"),
                 "--extractor", "synth-grid", "--workers", "0"]) == 0
    assert (f"hin extract: note: {folder}: skipped 1 entries not named like pictures"
            in capsys.readouterr().err)


def test_re_extracting_refuses_pictures_changed_since_and_force_starts_over(tmp_path, capsys):
    """An edited picture (or another one under the same id) is not silently kept with its old
    features: the run names its id; --force extracts every picture again."""
    import h5py

    folder, out = tmp_path / "pics", tmp_path / "grid.h5"
    folder.mkdir()
    for image_id, colour in ((1, "red"), (2, "blue")):
        Image.new("RGB", (30, 30), colour).save(folder / f"{image_id}.png")
    arguments = ["extract", "grid", "--images", str(folder), "--out", str(out),
                 "--extractor", "synth-grid", "--workers", "0"]
    assert main(arguments) == 0
    assert main(arguments) == 0 and "skipped 2 already present" in capsys.readouterr().out
    with h5py.File(out) as handle:
        before = handle["2_features"][()]
    Image.new("RGB", (40, 40), "green").save(folder / "2.png")        # edited in place
    assert main(arguments) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"hin extract: error: 1 pictures changed since their features were written to {out} "
        "(image ids 2: the file's size or modification time differs); re-extract every picture "
        "with --force, or write to another --out")
    assert main([*arguments, "--force"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    with h5py.File(out) as handle:
        assert not np.array_equal(handle["2_features"][()], before)
        assert handle["2_features"].attrs["hin_source"] == \
            f"{(folder / '2.png').stat().st_size}:{(folder / '2.png').stat().st_mtime_ns}"
    assert main(arguments) == 0 and "skipped 2 already present" in capsys.readouterr().out


def test_serve_checks_boxes_against_region_features_as_explain_does(checkpoint, monkeypatch):
    """One geometry rule (hin.explain.explanations.picture_geometry): a region extractor that
    returns more boxes than features gets no boxes drawn, and says why, in serve's answer."""
    from fastapi.testclient import TestClient

    from hin.serve import ServeSettings, create_app

    ckpt, root = checkpoint
    app = create_app(ServeSettings(ckpt, device="cpu", allow_hosts=("testserver",)))
    _, region_extractor = app.state.service.captioner.extractors()
    extract = type(region_extractor).__call__

    def one_box_too_many(self, prepared):
        return [{**entry, "boxes": np.concatenate([entry["boxes"], entry["boxes"][:1] * 0 + 1])}
                for entry in extract(self, prepared)]

    monkeypatch.setattr(type(region_extractor), "__call__", one_box_too_many)
    with TestClient(app) as client:
        answer = client.post("/v1/captions?explain", content=(root / "pictures" / "12.png").read_bytes())
    assert answer.status_code == 200, answer.text
    explanation = answer.json()["explanation"]
    assert explanation["regions"] is None
    assert any("boxes but" in reason for reason in explanation["missing"])


def test_explain_compare_extracts_each_picture_once_for_checkpoints_of_the_same_features(
        checkpoint, tmp_path, monkeypatch, capsys):
    import hin

    ckpt, root = checkpoint
    other = tmp_path / "b" / "best.pt"
    other.parent.mkdir()
    other.write_bytes(ckpt.read_bytes())
    first, second = hin.Captioner(ckpt, device="cpu"), hin.Captioner(other, device="cpu")
    assert first.extractors()[0] is second.extractors()[0]
    assert first.extractors()[1] is second.extractors()[1]
    calls: list[str] = []
    for extractor in first.extractors():
        kind, extract = extractor.kind, type(extractor).__call__
        monkeypatch.setattr(type(extractor), "__call__",
                            lambda self, prepared, kind=kind, extract=extract:
                            calls.append(kind) or extract(self, prepared))
    assert main(["explain", str(root / "pictures" / "12.png"), "--checkpoint", str(ckpt),
                 "--compare", str(other), "--out", str(tmp_path / "figures")]) == 0
    assert "wrote 1 figure " in capsys.readouterr().out
    assert sorted(calls) == ["grid", "region"]


def test_a_path_that_cannot_be_read_says_so_not_truncated(tmp_path):
    with pytest.raises(PictureError, match=r"missing.png: cannot be read \(No such file or directory\)$"):
        read_picture(tmp_path / "missing.png")
    (tmp_path / "7.png").mkdir()
    with pytest.raises(PictureError, match=r"7.png: cannot be read \(Is a directory\)$"):
        read_picture(tmp_path / "7.png")
