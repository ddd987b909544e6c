"""`hin explain --paper`: the paper's Fig. 6 as one table, a row per picture.

The layout is checked on the figure's own axes (each is labelled with its row and column) and
texts; the files are read back (PNG with Pillow, PDF by its header)."""

from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image

from helpers.corner_world import corner_picture, corner_view, figure_arguments, tiny_checkpoint
from hin.cli import main
from hin.errors import UsageError
from hin.explain import ImageExplanation
from hin.explain.figures import BOX_COLOUR, render
from hin.explain.paper import PaperStyle, differing_words, paper_marks, render_paper, write_paper_figure

matplotlib = pytest.importorskip("matplotlib")


def two_models(name, baseline, ours, cider=(0.5, 1.25)):
    views = (replace(corner_view("Baseline"), caption=baseline, cider=cider[0]),
             replace(corner_view("HIN"), caption=ours, cider=cider[1]))
    return ImageExplanation(name, None, corner_picture(), views, references=("a red square on white",))


def texts(axes):
    return [(t.get_text().strip(), t.get_color()) for t in axes.texts]


def axes_by_label(figure):
    return {axes.get_label(): axes for axes in figure.axes}


def runs(figure, row=0):
    """The caption runs of row `row`: (text, colour, weight, x, y) in figure coordinates."""
    return [(t.get_text(), t.get_color(), t.get_fontweight(), *t.get_position()) for t in figure.texts
            if t.get_label() == f"run:text:{row}"]


def red_words(figure, row=0):
    return [word for text, colour, *_ in runs(figure, row) if colour == BOX_COLOUR for word in text.split()]


def test_the_paper_figure_has_a_row_per_picture_and_column_titles_from_the_labels():
    rows = [two_models(f"/data/pictures/{i}.png", "a red square", "a red square on white") for i in range(3)]
    figure = render_paper(rows)
    found = axes_by_label(figure)
    for row in range(3):
        assert {f"image:{row}", f"text:{row}", f"label:{row}", *(f"{kind}:{row}:{model}" for kind in ("grid", "region")
                                                                 for model in (0, 1))} <= found.keys()
    assert "image:3" not in found
    assert [text for text, _ in texts(found["header"])] == [
        "Image", "Grid feature map", "Region feature map", "Text", "Baseline", "HIN", "Baseline", "HIN"]
    assert [[text for text, _ in texts(found[f"label:{row}"])][0] for row in range(3)] == ["(a)", "(b)", "(c)"]
    everything = " ".join(t.get_text() for t in [*figure.texts, *(t for a in figure.axes for t in a.texts)])
    assert "/data/pictures" not in everything                       # never a file path
    widths = {round(found[f"{kind}:{row}:{model}"].get_position().width, 6)
              for kind in ("grid", "region") for row in range(3) for model in (0, 1)}
    assert len(widths) == 1
    matplotlib.pyplot.close(figure)


def test_the_figure_is_sized_for_a_column_with_text_of_at_least_7_points():
    rows = [two_models("1.png", "a blue square", "a red square on white")]
    for width in (7.16, 3.5):
        figure = render_paper(rows, style=PaperStyle(width_in=width))
        assert figure.get_figwidth() == pytest.approx(width)
        sizes = [t.get_fontsize() for t in [*figure.texts, *(t for a in figure.axes for t in a.texts)]]
        assert sizes and min(sizes) >= 7.0
        matplotlib.pyplot.close(figure)
    with pytest.raises(UsageError, match="--width-in 1.0: give the printed width in inches"):
        PaperStyle(width_in=1.0)


def test_each_caption_line_is_colour_runs_on_one_baseline():
    figure = render_paper([two_models("1.png", "a blue square", "a red square on white")])
    pieces = runs(figure)
    assert all(t.get_verticalalignment() == "baseline" for t in figure.texts if t.get_label().startswith("run:"))
    lines = {}
    for text, _, _, x, y in pieces:
        lines.setdefault(round(y, 9), []).append((x, text))
    assert len(lines) == 3                                         # GT, two captions: one line each
    hin = next(line for line in lines.values() if any(text == "HIN:" for _, text in line))
    assert [text for _, text in sorted(hin)] == ["HIN:", "a", "red", "square on", "white", "#125.0"]
    assert [x for x, _ in sorted(hin)] == sorted(x for x, _ in hin)    # runs left to right, not stacked
    matplotlib.pyplot.close(figure)


def test_the_paper_marks_content_words_of_ours_found_in_a_reference_and_not_in_the_baseline():
    assert paper_marks("a red square on white".split(), "a blue square".split(), ["a red square on white"]) == [
        False, True, False, False, True]                  # "a" and "on" are stop words; "square" is shared
    assert paper_marks("a Red, square".split(), [], ["A red square."]) == [False, True, True]
    assert paper_marks("a green square".split(), [], ["a red square"]) == [False, False, True]   # not in GT
    figure = render_paper([two_models("1.png", "a blue square", "a red square on white")])
    assert red_words(figure) == ["red", "white"]
    assert "content words of HIN's caption that occur in a reference caption" in " ".join(
        t.get_text() for t in figure.texts)
    matplotlib.pyplot.close(figure)


def test_the_diff_marking_marks_the_words_that_differ_from_the_other_caption():
    assert differing_words("a red square on white".split(), "a blue square".split()) == [
        False, True, False, True, True]
    assert differing_words("a blue square".split(), "a red square on white".split()) == [False, True, False]
    assert differing_words("a red square".split(), "a red square".split()) == [False, False, False]
    figure = render_paper([two_models("1.png", "a blue square", "a red square on white")],
                          style=PaperStyle(marking="diff"))
    assert red_words(figure) == ["blue", "red", "on", "white"]
    assert "the other caption lacks" in " ".join(t.get_text() for t in figure.texts)
    matplotlib.pyplot.close(figure)


def test_captions_end_with_their_cider_d_times_100():
    figure = render_paper([two_models("1.png", "a square", "a red square", cider=(0.4567, 1.2346))])
    texts_ = [text for text, *_ in runs(figure)]
    assert texts_[texts_.index("Baseline:") + 2] == "#45.7" and texts_[-1] == "#123.5"
    matplotlib.pyplot.close(figure)


def test_contour_maps_keep_the_picture_colours_and_tint_colours_them(tmp_path):
    rows = [two_models("1.png", "a square", "a red square")]
    colours = {}
    for map_style in ("contour", "tint"):
        png, _ = write_paper_figure(rows, tmp_path / map_style, style=PaperStyle(map_style=map_style))
        figure = render_paper(rows, style=PaperStyle(map_style=map_style))
        grid = axes_by_label(figure)["grid:0:1"]
        figure.canvas.draw()
        x, y = grid.transData.transform((12, 12))                 # inside the red square, the map's peak
        colours[map_style] = np.asarray(Image.open(png).convert("RGB"))[
            round(Image.open(png).size[1] - y), round(x)]
        matplotlib.pyplot.close(figure)
    assert tuple(colours["contour"]) == (220, 30, 30)              # the picture's own red
    assert tuple(colours["tint"]) != (220, 30, 30)


def test_the_paper_figure_is_written_as_png_and_a_pdf_with_truetype_fonts(tmp_path):
    rows = [two_models(f"{i}.png", "a square", "a red square") for i in range(2)]
    png, pdf = write_paper_figure(rows, tmp_path / "out")
    assert (png.name, pdf.name) == ("paper_figure.png", "paper_figure.pdf")
    content = pdf.read_bytes()
    assert content[:5] == b"%PDF-"
    fonts = set(re.findall(rb"/Subtype\s*/(Type3|TrueType|Type1|CIDFontType2|CIDFontType0)", content))
    assert fonts and fonts <= {b"TrueType", b"CIDFontType2"}, fonts      # Type 42, never Type 3
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
    assert "wrote 1 figure, " in capsys.readouterr().out                   # one figure, not "1 figures"
    smaller = Image.open(tmp_path / "one" / "paper_figure.png").size
    assert smaller[0] == three[0] and three[1] - smaller[1] > 250          # two rows fewer
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
