"""`hin explain --paper`: the paper's Fig. 6 as one table, a row per picture.

The layout is checked on the figure's own axes (each is labelled with its row and column) and
texts; the files are read back (PNG with Pillow, PDF by its header)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from hin.cli import main
from hin.errors import UsageError
from hin.explain import ImageExplanation
from hin.explain.figures import BOX_COLOUR, render
from hin.explain.paper import differing_words, render_paper, write_paper_figure
from test_explain import corner_picture, corner_view, figure_arguments, make_corner_data, tiny_checkpoint

matplotlib = pytest.importorskip("matplotlib")


@pytest.fixture(scope="module")
def corner_data(tmp_path_factory):
    return make_corner_data(tmp_path_factory.mktemp("corner"))


def two_models(name, baseline, ours, cider=(0.5, 1.25)):
    views = (replace(corner_view("Baseline"), caption=baseline, cider=cider[0]),
             replace(corner_view("HIN"), caption=ours, cider=cider[1]))
    return ImageExplanation(name, None, corner_picture(), views, references=("a red square on white",))


def texts(axes):
    return [(t.get_text().strip(), t.get_color()) for t in axes.texts]


def axes_by_label(figure):
    return {axes.get_label(): axes for axes in figure.axes}


def test_the_paper_figure_has_a_row_per_picture_and_column_titles_from_the_labels():
    rows = [two_models(f"/data/pictures/{i}.png", "a red square", "a red square on white") for i in range(3)]
    figure = render_paper(rows)
    found = axes_by_label(figure)
    for row in range(3):
        assert {f"image:{row}", f"text:{row}", *(f"{kind}:{row}:{model}" for kind in ("grid", "region")
                                                  for model in (0, 1))} <= found.keys()
    assert "image:3" not in found
    headers = [text for label, axes in found.items() if label.startswith("header:") for text, _ in texts(axes)]
    assert headers == ["Image", "Grid feature map (mean over layers)", "Baseline", "HIN",
                       "Region feature map (mean over layers)", "Baseline", "HIN", "Text"]
    everything = " ".join(t.get_text() for axes in figure.axes for t in axes.texts)
    assert "/data/pictures" not in everything                       # never a file path
    assert {"scale:grid", "scale:region"} <= found.keys()           # a colour bar per map type
    widths = {round(found[f"{kind}:{row}:{model}"].get_position().width, 6)
              for kind in ("grid", "region") for row in range(3) for model in (0, 1)}
    assert len(widths) == 1
    matplotlib.pyplot.close(figure)


def test_red_words_are_the_words_that_differ_from_the_other_caption():
    assert differing_words("a red square on white".split(), "a blue square".split()) == [
        False, True, False, True, True]
    assert differing_words("a blue square".split(), "a red square on white".split()) == [False, True, False]
    assert differing_words("a red square".split(), "a red square".split()) == [False, False, False]
    figure = render_paper([two_models("1.png", "a blue square", "a red square on white")])
    text = axes_by_label(figure)["text:0"]
    red = [word for word, colour in texts(text) if colour == BOX_COLOUR]
    assert red == ["blue", "red", "on", "white"]
    assert [word for word, _ in texts(text)][:6] == ["GT:", "a", "red", "square", "on", "white"]
    matplotlib.pyplot.close(figure)


def test_captions_carry_their_cider_d_times_100():
    figure = render_paper([two_models("1.png", "a square", "a red square", cider=(0.4567, 1.2346))])
    words = [word for word, _ in texts(axes_by_label(figure)["text:0"])]
    assert "(45.7):" in words and "(123.5):" in words
    assert words[words.index("(45.7):") - 1] == "Baseline" and words[words.index("(123.5):") - 1] == "HIN"
    matplotlib.pyplot.close(figure)


def test_the_paper_figure_is_written_as_png_and_pdf(tmp_path):
    rows = [two_models(f"{i}.png", "a square", "a red square") for i in range(2)]
    png, pdf = write_paper_figure(rows, tmp_path / "out")
    assert (png.name, pdf.name) == ("paper_figure.png", "paper_figure.pdf")
    assert pdf.read_bytes()[:5] == b"%PDF-"
    pixels = np.asarray(Image.open(png).convert("L"), float)
    assert pixels.shape[1] > pixels.shape[0] and pixels.std() > 20      # a wide table, drawn


def test_the_paper_figure_needs_two_models():
    alone = ImageExplanation("1.png", None, corner_picture(), (corner_view(),))
    with pytest.raises(UsageError, match="compares two models"):
        render_paper([alone])


def test_word_strips_have_one_size_and_one_colour_scale():
    short = replace(corner_view("XE"), words=("a", "square"), word_maps=np.eye(2, 16))
    long = replace(corner_view("SCST"), words=("a", "red", "square", "on", "a", "white", "ground", "here"),
                   word_maps=np.eye(8, 16))
    figure = render(ImageExplanation("1.png", None, corner_picture(), (short, long)))
    found = axes_by_label(figure)
    words = [axes for label, axes in found.items() if label.startswith("word:")]
    assert len(words) == 10
    assert len({(round(a.get_position().width, 6), round(a.get_position().height, 6)) for a in words}) == 1
    assert [label for label in found if label.startswith("scale")] == ["scale"]
    assert found["scale"].get_xlabel().startswith("attention, per map")
    matplotlib.pyplot.close(figure)


def test_explain_paper_from_the_command_line(corner_data, tmp_path, capsys):
    root, grid, region, pictures = corner_data
    second = tiny_checkpoint(tmp_path / "scst" / "best.pt", seed=1)
    arguments = figure_arguments(root, grid, region, pictures, "--ids", "11", "12", "13", "--compare",
                                 str(second), "--labels", "Baseline", "HIN", "--paper", "--out",
                                 str(tmp_path / "out"))
    assert main(arguments) == 0
    assert "paper_figure.png and .pdf" in capsys.readouterr().out
    png, pdf = tmp_path / "out" / "paper_figure.png", tmp_path / "out" / "paper_figure.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-"
    three = Image.open(png).size
    index = (tmp_path / "out" / "index.html").read_text()
    assert "href='paper_figure.png'" in index and "href='paper_figure.pdf'" in index
    assert "Baseline CIDEr-D ×100" in index and "HIN CIDEr-D ×100" in index

    one = figure_arguments(root, grid, region, pictures, "--ids", "11", "--compare", str(second),
                           "--paper", "--out", str(tmp_path / "one"))
    assert main(one) == 0
    smaller = Image.open(tmp_path / "one" / "paper_figure.png").size
    assert smaller[0] == three[0] and three[1] - smaller[1] > 300          # two rows fewer
    index = (tmp_path / "one" / "index.html").read_text()
    assert f"{root.name} CIDEr-D" in index and "scst CIDEr-D" in index     # default: folder names


def test_explain_paper_usage_errors(corner_data, tmp_path, capsys):
    root, grid, region, pictures = corner_data
    checkpoint = str(tiny_checkpoint(tmp_path / "a.pt", seed=0))
    cases = [
        (["--checkpoint", checkpoint, "--paper"], "--paper compares two models, got 1 checkpoints"),
        (["--compare", checkpoint, checkpoint, "--labels", "only-one"], "--labels gives 1 names for 2"),
        ([], "give --checkpoint CKPT"),
    ]
    for arguments, message in cases:
        assert main(["explain", "--grid", str(grid), "--region", str(region), "--ids", "11",
                     "--out", str(tmp_path / "out"), *arguments]) == 2
        assert message in capsys.readouterr().err
