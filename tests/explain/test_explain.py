"""`hin explain`: figures of the model's attention, from feature files and from pictures.

Placement is checked on a picture with one object in a known corner: the PNG is read back
with Pillow and the pixels where the figure's own axes put a grid cell or a box are compared
with the colour the overlay must give there.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from helpers.corner_world import (
    corner_picture,
    corner_view,
    figure_arguments,
    tiny_checkpoint,
    write_corner_features,
)
from helpers.extract_models import CLIP_HIDDEN, DETR_D_MODEL, write_tiny_clip, write_tiny_detr
from hin.caption import Captioner
from hin.checkpoint import save
from hin.cli import main
from hin.config import HINConfig
from hin.data.features import FeatureStore
from hin.data.vocab import Vocabulary
from hin.errors import MissingExtraError
from hin.explain import MAP_COLORMAP, ImageExplanation, explain, write_figures
from hin.explain.figures import OVERLAY_ALPHA, region_heat, render
from hin.extract import build_extractor, extract_to_file, list_images, read_attributes
from hin.model import HIN

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: several intra-op threads only contend on a shared, loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def pixel_at(figure, image, label, x, y):
    """The PNG's RGB at picture coordinates (x, y) of the axes labelled `label`."""
    axes = next(a for a in figure.axes if a.get_label() == label)
    column, row = axes.transData.transform((x, y))
    return np.asarray(image)[int(round(image.height - row)), int(round(column)), :3].astype(float)


def overlay(value, under):
    """The map's colour at `value` (0 = the map's lowest, 1 = its peak) over the picture: as
    opaque as the weight is high, so an unattended pixel keeps the picture's own colour."""
    rgb = np.array(matplotlib.colormaps[MAP_COLORMAP](value)[:3]) * 255
    alpha = OVERLAY_ALPHA * value
    return alpha * rgb + (1 - alpha) * np.asarray(under, float)


def test_grid_cells_and_boxes_land_where_the_object_is(tmp_path):
    explanation = ImageExplanation("corner.png", None, corner_picture(), (corner_view(),))
    figure = render(explanation)
    path = tmp_path / "corner.png"
    figure.savefig(path, dpi=figure.dpi)
    image = Image.open(path).convert("RGB")
    width, height = figure.get_size_inches() * figure.dpi
    assert image.size == (round(width), round(height))
    red, white = (220, 30, 30), (255, 255, 255)
    # The hot cell covers the object; every other cell is at the colormap's bottom.
    np.testing.assert_allclose(pixel_at(figure, image, "grid:0", 12, 12), overlay(1.0, red), atol=6)
    np.testing.assert_allclose(pixel_at(figure, image, "grid:0", 37, 12), white, atol=6)   # untouched
    np.testing.assert_allclose(pixel_at(figure, image, "grid:0", 87, 87), overlay(0.0, white), atol=6)
    # Regions: 0.9 on the object's box (the peak), 0.1 on the bottom-right box, nothing elsewhere.
    np.testing.assert_allclose(pixel_at(figure, image, "region:0", 12, 12), overlay(1.0, red), atol=6)
    np.testing.assert_allclose(pixel_at(figure, image, "region:0", 75, 75), overlay(0.1 / 0.9, white), atol=6)
    np.testing.assert_allclose(pixel_at(figure, image, "region:0", 75, 12), overlay(0.0, white), atol=6)
    matplotlib.pyplot.close(figure)


def test_region_heat_sums_the_boxes_covering_each_pixel():
    heat = region_heat(np.array([0.5, 0.25]), np.array([[0, 0, 4, 4], [2, 2, 8, 6]]), (6, 8))
    assert heat.shape == (6, 8)
    assert heat[0, 0] == 0.5 and heat[3, 3] == 0.75 and heat[5, 7] == 0.25 and heat[5, 0] == 0


def test_missing_boxes_give_a_grid_figure_that_says_why(tmp_path):
    explanation = ImageExplanation("corner.png", None, corner_picture(), (corner_view(boxes=False),))
    figure = render(explanation)
    texts = " ".join(" ".join(t.get_text() for a in figure.axes for t in a.texts).split())
    assert "region map not placed on the picture" in texts and "no region boxes" in texts
    region_axes = next(a for a in figure.axes if a.get_label() == "region:0")
    assert len(region_axes.patches) == 2 and not region_axes.images       # one bar per region
    figure.savefig(tmp_path / "f.png", dpi=figure.dpi)
    image = Image.open(tmp_path / "f.png").convert("RGB")
    red = (220, 30, 30)
    np.testing.assert_allclose(pixel_at(figure, image, "grid:0", 12, 12), overlay(1.0, red), atol=6)
    matplotlib.pyplot.close(figure)


def test_without_matplotlib_the_extra_is_named(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    explanation = ImageExplanation("corner.png", None, corner_picture(), (corner_view(),))
    with pytest.raises(MissingExtraError, match=r"pip install 'hin-caption\[plot\]'"):
        write_figures([explanation], tmp_path)


# ---- end to end from feature files ----------------------------------------------------------


def test_explain_feature_split_writes_figures_and_a_sortable_index(corner_data, tmp_path, capsys):
    root, grid, region, pictures = corner_data
    out = tmp_path / "figures"
    assert main(figure_arguments(root, grid, region, pictures, "--limit", "3", "--words", "--layer", "2",
                                 "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "wrote 3 figures" in printed and "CIDEr-D" in printed
    figures = sorted(out.glob("*.png"))
    assert [f.name for f in figures] == ["0000_11.png", "0001_12.png", "0002_13.png"]
    for figure in figures:
        image = np.asarray(Image.open(figure).convert("L"), float)
        assert image.shape[0] > 600 and image.shape[1] >= 600 and image.std() > 20     # drawn, not blank
    index = (out / "index.html").read_text()
    assert index.count("<tr>") == 4 and "sortBy(" in index and "http" not in index
    assert "a.pt" not in index and f"{root.name} CIDEr-D ×100" in index and "a red square on white" in index


def test_explain_images_looks_only_at_the_pictures_it_needs(corner_data, tmp_path, capsys):
    """A cover picture without an id, and two files giving an id not explained, are left
    alone; two files giving an explained id are refused by name."""
    root, grid, region, pictures = corner_data
    folder = tmp_path / "pictures"
    shutil.copytree(pictures, folder)
    Image.new("RGB", (8, 8)).save(folder / "cover.jpg")
    for name in ("99.png", "COCO_val2014_000000000099.png"):
        Image.new("RGB", (8, 8)).save(folder / name)
    out = tmp_path / "figures"
    assert main(figure_arguments(root, grid, region, folder, "--ids", "11", "--out", str(out))) == 0
    assert "wrote 1 figure " in capsys.readouterr().out
    Image.new("RGB", (8, 8)).save(folder / "11.png")
    assert main(figure_arguments(root, grid, region, folder, "--ids", "11", "--out", str(out))) == 2
    assert f"{folder / 'COCO_val2014_000000000011.png'} and {folder / '11.png'} both give image id 11" \
        in capsys.readouterr().err


def test_explain_compare_draws_a_second_column(corner_data, tmp_path, capsys):
    root, grid, region, pictures = corner_data
    second = tiny_checkpoint(tmp_path / "b.pt", seed=1)
    out = tmp_path / "figures"
    assert main(figure_arguments(root, grid, region, pictures, "--ids", "11", "--compare", str(second),
                                 "--out", str(out))) == 0
    single = tmp_path / "single"
    assert main(figure_arguments(root, grid, region, pictures, "--ids", "11", "--out", str(single))) == 0
    compared, alone = Image.open(out / "0000_11.png"), Image.open(single / "0000_11.png")
    assert compared.width > alone.width and compared.height == alone.height
    index = (out / "index.html").read_text()
    assert f"{root.name} CIDEr-D" in index and f"{tmp_path.name} CIDEr-D" in index     # folder names
    assert capsys.readouterr().out.count("CIDEr-D") >= 2


def test_a_model_compared_with_itself_draws_two_equal_columns_and_word_strips(corner_data, tmp_path):
    root, grid, region, pictures = corner_data
    first = root / "a.pt"
    out = tmp_path / "same"
    assert main(figure_arguments(root, grid, region, pictures, "--ids", "11", "--compare", str(first),
                                 "--words", "grid", "--out", str(out))) == 0
    assert Image.open(out / "0000_11.png").width > 0


def test_explain_without_boxes_draws_the_grid_and_says_what_is_missing(tmp_path, capsys):
    grid, region = write_corner_features(tmp_path, with_boxes=False)
    checkpoint = tiny_checkpoint(tmp_path / "a.pt", seed=0)
    [explanation] = explain([checkpoint], ids=[11], grid=grid, region=region)
    view = explanation.views[0]
    assert view.geometry.grid_placement is not None and view.geometry.boxes is None
    assert any("has no region boxes ('11_boxes')" in m for m in view.geometry.missing)
    assert "no picture of image 11 (no --images folder given)" in explanation.notes[0]
    assert view.caption == Captioner(checkpoint).caption_features(grid, region, [11])[0].captions[0].text
    assert main(["explain", "--checkpoint", str(checkpoint), "--grid", str(grid), "--region", str(region),
                 "--ids", "11", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "0000_11.png").is_file()


def test_explain_cli_without_matplotlib_names_the_extra(corner_data, tmp_path, monkeypatch, capsys):
    root, grid, region, pictures = corner_data
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(figure_arguments(root, grid, region, pictures, "--ids", "11", "--out", str(tmp_path))) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'hin-caption[plot]'" in error


# ---- end to end from pictures (the checkpoint's recorded extractors) ------------------------

def test_explain_pictures_reruns_the_recorded_extractors(tmp_path, capsys):
    pytest.importorskip("transformers")

    picture = tmp_path / "pictures" / "7.png"
    picture.parent.mkdir()
    Image.fromarray(np.asarray(corner_picture().resize((60, 40)))).save(picture)     # 40 high, 60 wide
    grid = build_extractor("clip-grid", model=str(write_tiny_clip(tmp_path / "clip")), device="cpu")
    region = build_extractor("detr", model=str(write_tiny_detr(tmp_path / "detr")), revision=None,
                             device="cpu", threshold=0.0, max_regions=4)
    for extractor, out in ((grid, tmp_path / "grid.h5"), (region, tmp_path / "region.h5")):
        extract_to_file(extractor, list_images(picture.parent), out, workers=0, progress=False)
    vocab = Vocabulary.from_counts({"a": 9, "red": 8, "square": 7}, min_freq=1)
    torch.manual_seed(0)
    model = HIN(HINConfig(vocab_size=len(vocab), num_layers=2, d_model=32, num_heads=4, d_ff=64, dropout=0.0,
                          grid_dim=CLIP_HIDDEN, region_dim=DETR_D_MODEL)).eval()
    checkpoint = save(tmp_path / "tiny.pt", model, vocabulary=vocab.to_dict(),
                      features={"grid": read_attributes(tmp_path / "grid.h5"),
                                "region": read_attributes(tmp_path / "region.h5")})

    [explanation] = explain([checkpoint], pictures=[picture], words="region")
    view = explanation.views[0]
    geometry = view.geometry
    assert geometry.missing == () and geometry.size == (40, 60) and geometry.grid_layout == (4, 4)
    np.testing.assert_allclose(geometry.grid_box, (10, 0, 50, 40))         # CLIP's centre square
    assert geometry.boxes.shape == (4, 4) and len(view.region_map) == 4
    assert view.grid_map.shape == (16,) and view.grid_map.sum() == pytest.approx(1, abs=1e-5)
    assert view.word_maps.shape == (len(view.words), 4)
    written = FeatureStore(tmp_path / "grid.h5", tmp_path / "region.h5", grid_dim=CLIP_HIDDEN,
                           region_dim=DETR_D_MODEL).geometry(7)          # what `hin extract` wrote
    assert written.missing == () and (written.size, written.grid_layout) == (geometry.size, geometry.grid_layout)
    np.testing.assert_allclose(written.grid_box, geometry.grid_box)
    np.testing.assert_allclose(written.boxes, geometry.boxes)
    assert main(["explain", str(picture), "--checkpoint", str(checkpoint), "--words", "--out",
                 str(tmp_path / "out")]) == 0
    image = np.asarray(Image.open(tmp_path / "out" / "0000_7.png").convert("L"), float)
    assert image.std() > 20
    assert "0000_7.png" in (tmp_path / "out" / "index.html").read_text()


def test_explain_usage_errors_say_what_to_give(corner_data, tmp_path, capsys):
    root, grid, region, pictures = corner_data
    checkpoint = str(tiny_checkpoint(tmp_path / "a.pt", seed=0))
    features = ["--grid", str(grid), "--region", str(region)]
    cases = [
        (["--ids", "11", "--layer", "3", *features], "--layer must be between 1 and the model's 2 layers, got 3"),
        (["--annotations", str(root / "annotations"), "--ids", "11", *features], "--annotations needs --split"),
        (["--split", "test", "--annotations", str(root / "annotations"), "--ids", "99", *features],
         "image ids [99] are not in the test split"),
        (["--ids", "11"], "give pictures, or both --grid and --region"),
    ]
    for arguments, message in cases:
        assert main(["explain", "--checkpoint", checkpoint, "--out", str(tmp_path / "out"), *arguments]) == 2
        assert message in capsys.readouterr().err
