"""The synthetic world's picture extractors: components, features equal to the generator's,
any picture size, the extract and caption commands on a picture drawn here with PIL."""

import json

import h5py
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from hin.caption import Captioner
from hin.checkpoint import save
from hin.cli import main
from hin.config import HINConfig
from hin.data.errors import DataError
from hin.data.features import read_attributes
from hin.data.vocab import Vocabulary
from hin.extract import (
    EXTRACTORS,
    build_extractor,
    extractor_from_attributes,
    prepare_pictures,
    register_extractor,
)
from hin.extract.images import load_rgb
from hin.extract.shapes import (
    GRID_DIM,
    REGION_DIM,
    PreparedPicture,
    ShapeFeatures,
    connected_components,
)
from hin.model import HIN
from hin.synth import COLOURS, IMAGES_DIR, SceneObject, generate, render

# Two shapes whose pixels ImageDraw.rectangle reproduces exactly (see `_drawn_with_pil`).
SCENE = [SceneObject("red", "square", True, row=1, col=0, cx=20.0, cy=52.0, radius=10.0),
         SceneObject("blue", "cross", False, row=0, col=2, cx=70.0, cy=30.0, radius=9.0)]


def _drawn_with_pil(path):
    """SCENE painted with PIL: the square's pixel centres |x + 0.5 - 20| <= 8 are x = 12..27."""
    picture = Image.new("RGB", (96, 96), "white")
    draw = ImageDraw.Draw(picture)
    draw.rectangle([12, 44, 27, 59], fill=COLOURS["red"])
    draw.rectangle([67, 21, 72, 38], fill=COLOURS["blue"])     # cross: |dx| <= 3, |dy| <= 9
    draw.rectangle([61, 27, 78, 32], fill=COLOURS["blue"])
    picture.save(path)
    return path


def test_connected_components_join_diagonals_and_number_in_reading_order():
    mask = np.array([[0, 0, 0, 0, 1, 1],
                     [1, 1, 0, 0, 0, 1],
                     [0, 0, 1, 0, 0, 0],
                     [0, 0, 0, 0, 1, 0],
                     [1, 0, 0, 1, 1, 0]], dtype=bool)
    assert connected_components(mask).tolist() == [[0, 0, 0, 0, 1, 1],
                                                   [2, 2, 0, 0, 0, 1],
                                                   [0, 0, 2, 0, 0, 0],
                                                   [0, 0, 0, 0, 3, 0],
                                                   [4, 0, 0, 3, 3, 0]]
    ring = np.ones((5, 5), dtype=bool)
    ring[1:4, 1:4] = False
    assert connected_components(ring).max() == 1
    assert connected_components(np.zeros((3, 4), dtype=bool)).tolist() == [[0] * 4] * 3


def test_a_picture_drawn_with_pil_gives_the_synthetic_worlds_features(tmp_path):
    drawn = load_rgb(_drawn_with_pil(tmp_path / "drawn.png"))
    assert np.array_equal(np.asarray(drawn), render(SCENE))
    world = ShapeFeatures()
    rendered = PreparedPicture(render(SCENE), 96, 96)
    grid_entry = prepare_pictures(build_extractor("synth-grid"), [drawn])[0]
    region_entry = prepare_pictures(build_extractor("synth-regions"), [drawn])[0]
    assert np.array_equal(grid_entry["features"], world.grid_entry(rendered)["features"])
    assert grid_entry["features"].shape == (64, GRID_DIM)
    expected_regions = world.region_entry(rendered)
    assert expected_regions.keys() == region_entry.keys()
    for key, array in expected_regions.items():
        assert np.array_equal(region_entry[key], array), key
    # reading order: the cross (top right) starts on an earlier row than the square
    assert region_entry["boxes"].tolist() == [[61, 21, 79, 39], [12, 44, 28, 60]]
    assert region_entry["features"].shape == (2, REGION_DIM)
    assert region_entry["size"].tolist() == [96, 96]


def test_generated_features_are_what_the_extractors_compute_from_the_written_pictures(tmp_path):
    generate(tmp_path, train=12, val=3, test=3, min_freq=1, progress=False)
    pictures = sorted((tmp_path / IMAGES_DIR).glob("*.png"))
    grid_extractor = extractor_from_attributes(read_attributes(tmp_path / "grid.hdf5"))
    region_extractor = extractor_from_attributes(read_attributes(tmp_path / "region.hdf5"))
    loaded = [load_rgb(path) for path in pictures]
    grids = prepare_pictures(grid_extractor, loaded)
    regions = prepare_pictures(region_extractor, loaded)
    with h5py.File(tmp_path / "grid.hdf5") as grid_file, \
            h5py.File(tmp_path / "region.hdf5") as region_file:
        for path, grid, region in zip(pictures, grids, regions):
            assert np.array_equal(grid["features"], grid_file[f"{path.stem}_features"][()])
            for key, array in region.items():
                assert np.array_equal(array, region_file[f"{path.stem}_{key}"][()]), key


def test_any_picture_size_is_resized_and_boxes_come_back_in_its_pixels():
    picture = Image.new("RGB", (300, 150), "white")
    ImageDraw.Draw(picture).rectangle([200, 50, 249, 99], fill=COLOURS["green"])
    ImageDraw.Draw(picture).point([(10, 10)], fill=COLOURS["black"])      # a speck: dropped
    entry = prepare_pictures(build_extractor("synth-regions"), [picture])[0]
    assert entry["size"].tolist() == [150, 300]
    np.testing.assert_allclose(entry["boxes"], [[200, 50, 250, 100]], atol=300 / 96)
    empty = prepare_pictures(build_extractor("synth-regions"), [Image.new("RGB", (40, 40), "white")])
    assert empty[0]["features"].shape == (0, REGION_DIM) and empty[0]["boxes"].shape == (0, 4)


def test_a_plain_background_of_another_colour_and_recorded_settings():
    extractor = build_extractor("synth-regions", background="#000000", max_regions=1)
    picture = Image.new("RGB", (96, 96), "black")
    ImageDraw.Draw(picture).rectangle([10, 10, 19, 19], fill="white")
    ImageDraw.Draw(picture).rectangle([50, 50, 79, 79], fill="white")
    entry = prepare_pictures(extractor, [picture])[0]
    assert entry["boxes"].tolist() == [[50, 50, 80, 80]]                  # the largest one kept
    rebuilt = extractor_from_attributes(extractor.attributes())
    assert rebuilt.attributes() == extractor.attributes()
    with pytest.raises(DataError, match="#rrggbb"):
        build_extractor("synth-regions", background="white")
    with pytest.raises(DataError, match="regenerate"):
        extractor_from_attributes({"extractor": "synth-grid", "canvas": 96})


def test_extract_commands_write_the_files_the_generator_writes(tmp_path, capsys):
    data = tmp_path / "synth"
    generate(data, train=6, val=2, test=2, min_freq=1, progress=False)
    images = str(data / IMAGES_DIR)
    assert main(["extract", "grid", "--extractor", "synth-grid", "--images", images,
                 "--out", str(tmp_path / "grid.h5"), "--workers", "0"]) == 0
    assert main(["extract", "regions", "--extractor", "synth-regions", "--images", images,
                 "--out", str(tmp_path / "region.h5"), "--workers", "0"]) == 0
    assert "wrote 10 images" in capsys.readouterr().out
    for name, written in (("grid.hdf5", "grid.h5"), ("region.hdf5", "region.h5")):
        # the generator draws its pictures upright; extraction records how it read them: by
        # default upright by EXIF, as captioning reads pictures
        assert read_attributes(tmp_path / written) == {**read_attributes(data / name),
                                                       "orientation": "exif"}
        with h5py.File(data / name) as expected, h5py.File(tmp_path / written) as extracted:
            assert set(expected) == set(extracted)
            for key in expected:
                assert np.array_equal(expected[key][()], extracted[key][()]), key


@pytest.fixture(scope="module")
def synth_checkpoint(tmp_path_factory):
    """A tiny random HIN whose checkpoint records the synthetic extractors, as the demo's do."""
    root = tmp_path_factory.mktemp("synth")
    generate(root, train=8, val=2, test=2, min_freq=1, progress=False)
    vocab = Vocabulary.load(root / "vocab.json")
    torch.manual_seed(0)
    model = HIN(HINConfig(vocab_size=len(vocab), num_layers=1, d_model=32, num_heads=4, d_ff=64,
                          grid_dim=GRID_DIM, region_dim=REGION_DIM))
    features = {"grid": read_attributes(root / "grid.hdf5"),
                "region": read_attributes(root / "region.hdf5")}
    return save(root / "tiny.pt", model.eval(), vocabulary=vocab.to_dict(), features=features)


def test_caption_a_picture_drawn_with_pil(synth_checkpoint, tmp_path, capsys):
    drawn = _drawn_with_pil(tmp_path / "my.png")
    assert main(["caption", str(drawn), "--checkpoint", str(synth_checkpoint), "--json",
                 "--max-len", "6", "--device", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["image"] == str(drawn) and printed[0]["captions"][0]["caption"]
    captioner = Captioner(synth_checkpoint, device="cpu")
    from_file = captioner(drawn)[0].captions[0]
    from_features = captioner.caption_arrays(
        ["scene"], [ShapeFeatures().grid(render(SCENE))],
        [ShapeFeatures().regions(PreparedPicture(render(SCENE), 96, 96)).features])[0].captions[0]
    assert from_file == from_features


def test_explain_a_picture_drawn_with_pil(synth_checkpoint, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    drawn = _drawn_with_pil(tmp_path / "my.png")
    out = tmp_path / "figures"
    other = tmp_path / "other.pt"
    other.write_bytes(synth_checkpoint.read_bytes())
    assert main(["explain", str(drawn), "--checkpoint", str(synth_checkpoint), "--compare",
                 str(other), "--words", "--max-len", "4", "--device", "cpu",
                 "--out", str(out)]) == 0
    assert "wrote 1 figure and" in capsys.readouterr().out      # one figure, not "1 figures"
    [figure] = sorted(out.glob("*.png"))
    with Image.open(figure) as image:
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 600 and pixels.std() > 10
    assert (out / "index.html").is_file()


def test_extract_help_names_the_registered_extractors_of_its_kind(capsys):
    """The --extractor help is read from the registry, so a newly registered one is listed."""
    @register_extractor("testgrid")
    class _HelpTest:
        kind = "grid"

    try:
        for kind, listed, unlisted in [("grid", "clip-grid, synth-grid, testgrid", "detr"),
                                       ("regions", "detr, synth-regions, vinvl-x152c4", "testgrid")]:
            with pytest.raises(SystemExit):
                main(["extract", kind, "--help"])
            help_text = " ".join(capsys.readouterr().out.split())
            assert f"extractor: {listed} (default" in help_text
            assert unlisted not in help_text
    finally:
        del EXTRACTORS["testgrid"]
