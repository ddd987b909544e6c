"""The paper's Fig. 6 for two models, typeset for a page: one table, a row per picture
((a), (b), ...: image | grid maps | region maps | captions), sized for a column width so that
its text is at least 7 pt when printed at that width.

Typography: each caption line is set as colour runs on one shared baseline (a run is the
longest stretch of words of one colour and weight), so words without ascenders do not sink.
Marking (`MARKINGS`): `paper`, the paper's rule, marks in red the content words of the second
model's caption that occur in a reference caption and not in the first model's caption (stop
words never); `diff` marks every word of each caption that the other caption lacks. Maps
(`MAP_STYLES`): `contour` outlines where each map is strong over the picture in its true
colours (the default: at column width pictures are small and a tint would change their
colours); `tint` lays the map over the picture as the single-image figures do. The PDF embeds
its fonts as TrueType (Type 42), which venue checkers accept (not Type 3).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hin.config import PAPER_MAP_STYLES, PAPER_MARKINGS, TWO_COLUMN_INCHES
from hin.errors import UsageError
from hin.explain.explanations import ImageExplanation
from hin.explain.figures import (
    BOX_COLOUR,
    colour_bar,
    draw_canvas,
    draw_grid,
    draw_regions,
    load_pyplot,
    no_ticks,
)
from hin.files import atomic_write

PAPER_FILE = "paper_figure"     # .png and .pdf
PAPER_DPI = 200
PAPER_FONT = 7.0                # points at the printed width: the smallest text of the figure
LEADING = 1.28
MARKINGS, MAP_STYLES = PAPER_MARKINGS, PAPER_MAP_STYLES
STOP_WORDS = frozenset("""a an the and or but nor of in on at to for with without from by over
under above below near next into onto upon up down out off as is are was were be been being am
it its this that these those there here their his her he she they them we you i my our your
while who whom which what where when some any each other another than then so very just has
have had having do does did can could will would should may might must not no""".split())
TINT_BAR_INCHES = 0.55          # the colour bar under a tinted table, its labels included
GROUP_GAP = 0.04                 # inches between the image, grid and region column groups
RULE = {"top": 0.8, "mid": 0.5, "row": 0.3}      # booktabs-style rule widths in points


@dataclass(frozen=True)
class PaperStyle:
    """How the paper's figure is set: printed width in inches, the marking rule, the map style,
    and a note printed under the table (e.g. what the two columns are)."""

    width_in: float = TWO_COLUMN_INCHES
    marking: str = "paper"
    map_style: str = "contour"
    note: str = ""

    def __post_init__(self) -> None:
        if not 3.0 <= self.width_in <= 20.0:
            raise UsageError(f"--width-in {self.width_in}: give the printed width in inches, "
                             f"3 to 20 (a two-column figure: {TWO_COLUMN_INCHES})")
        if self.marking not in MARKINGS:
            raise UsageError(f"--marking must be one of {', '.join(MARKINGS)}, got {self.marking!r}")
        if self.map_style not in MAP_STYLES:
            raise UsageError(f"--map-style must be one of {', '.join(MAP_STYLES)}, got {self.map_style!r}")


PAPER_STYLE = PaperStyle()


def _normal(word: str) -> str:
    return re.sub(r"[^\w']", "", word.lower())


def differing_words(words: Sequence[str], other: Sequence[str]) -> list[bool]:
    """For each of `words`: True when it is not part of what it shares, in order, with `other`
    (difflib's matching blocks): the `diff` marking."""
    import difflib

    differs = [True] * len(words)
    for block in difflib.SequenceMatcher(a=list(words), b=list(other), autojunk=False).get_matching_blocks():
        differs[block.a:block.a + block.size] = [False] * block.size
    return differs


def paper_marks(words: Sequence[str], baseline: Sequence[str], references: Sequence[str]) -> list[bool]:
    """The paper's marking of one caption's `words`: a content word (not a stop word) that
    occurs in some reference caption and not in the `baseline` caption, compared lower-cased
    without punctuation."""
    found = {_normal(word) for reference in references for word in reference.split()}
    theirs = {_normal(word) for word in baseline}
    return [bool(w) and w not in STOP_WORDS and w in found and w not in theirs
            for w in map(_normal, words)]


def marking_rule(style: PaperStyle, labels: Sequence[str]) -> str:
    if style.marking == "paper":
        return (f"Red: content words of {labels[1]}'s caption that occur in a reference caption "
                f"and not in {labels[0]}'s (stop words never).")
    return "Red: words of each caption that the other caption lacks."


def _marks(explanation: ImageExplanation, style: PaperStyle) -> list[list[bool]]:
    first, second = (view.caption.split() for view in explanation.views)
    if style.marking == "diff":
        return [differing_words(first, second), differing_words(second, first)]
    return [[False] * len(first), paper_marks(second, first, explanation.references)]


class _Typesetter:
    """Lines of (text, colour, weight) runs in one font size, wrapped to a width in pixels and
    drawn on a shared baseline per line."""

    def __init__(self, figure: Any, size: float = PAPER_FONT) -> None:
        from matplotlib.font_manager import FontProperties

        self.renderer = figure.canvas.get_renderer()
        self.size = size
        self.fonts = {weight: FontProperties(size=size, weight=weight) for weight in ("normal", "bold")}
        self.line_px = size * LEADING / 72 * figure.dpi

    def width(self, text: str, weight: str) -> float:
        """The advance of `text` (trailing spaces included) in pixels."""
        measure = self.renderer.get_text_width_height_descent
        return measure(text + "x", self.fonts[weight], ismath=False)[0] - \
            measure("x", self.fonts[weight], ismath=False)[0]

    def wrap(self, words: Sequence[tuple[str, str, str]], width_px: float) -> list[list[tuple[str, str, str]]]:
        lines: list[list[tuple[str, str, str]]] = [[]]
        used = 0.0
        for word in words:
            advance = self.width(word[0] + " ", word[2])
            if lines[-1] and used + advance - self.width(" ", word[2]) > width_px:
                lines.append([])
                used = 0.0
            lines[-1].append(word)
            used += advance
        return lines

    def draw(self, axes: Any, line: Sequence[tuple[str, str, str]], x_px: float, y_px: float) -> None:
        """One line as runs of equal colour and weight, each one text artist, on baseline `y_px`
        (display pixels from the figure's bottom left)."""
        runs: list[list[Any]] = []
        for text, colour, weight in line:
            if runs and runs[-1][1:] == [colour, weight]:
                runs[-1][0] += " " + text
            else:
                runs.append([text, colour, weight])
        to_figure = axes.figure.transFigure.inverted()
        for text, colour, weight in runs:
            x, y = to_figure.transform((x_px, y_px))
            axes.figure.text(x, y, text, color=colour, fontproperties=self.fonts[weight], va="baseline",
                             ha="left", label=f"run:{axes.get_label()}")
            x_px += self.width(text + " ", weight)


def _row_words(explanation: ImageExplanation, style: PaperStyle) -> list[list[tuple[str, str, str]]]:
    """The text column of one row: GT, then each model's caption with its marks and its score
    at the line's end, then notes; each a list of (word, colour, weight)."""
    paragraphs = []
    if explanation.references:
        paragraphs.append([("GT:", "black", "bold")] + [(w, "black", "normal")
                                                         for w in explanation.references[0].split()])
    for view, marks in zip(explanation.views, _marks(explanation, style)):
        words = [(f"{view.label}:", "black", "bold")]
        words += [(word, BOX_COLOUR if red else "black", "normal") for word, red in zip(view.caption.split(), marks)]
        if view.cider is not None:
            words.append((f"#{100 * view.cider:.1f}", "dimgray", "normal"))
        paragraphs.append(words)
    paragraphs += [[(word, "dimgray", "normal") for word in note.split()] for note in explanation.notes]
    return paragraphs


def _geometry(style: PaperStyle) -> dict[str, float]:
    """Column widths in inches for the printed width: a row-label column, five square panels
    and the text column (about 35% of the width)."""
    margin, label, gap = 0.04, 0.44, 0.03
    text = max(1.9, 0.35 * style.width_in)
    panel = (style.width_in - 2 * margin - label - text - 6 * gap - 2 * GROUP_GAP) / 5
    return {"margin": margin, "label": label, "gap": gap, "text": text, "panel": panel}


def _rule(figure: Any, y_in: float, left_in: float, right_in: float, width: float) -> None:
    from matplotlib.lines import Line2D

    height, full = figure.get_figheight(), figure.get_figwidth()
    figure.add_artist(Line2D([left_in / full, right_in / full], [y_in / height] * 2, color="black",
                             linewidth=width, solid_capstyle="butt"))


def render_paper(explanations: Sequence[ImageExplanation], layer_label: str = "mean over layers",
                 style: PaperStyle = PAPER_STYLE) -> Any:
    """The paper's Fig. 6 for two models (see the module docstring). Axes are labelled
    `image:<row>`, `grid:<row>:<model>`, `region:<row>:<model>`, `text:<row>`; the text runs
    are figure texts labelled `run:text:<row>`."""
    if not explanations or any(len(e.views) != 2 for e in explanations):
        raise UsageError("the paper's figure compares two models: give --compare BASE.pt OURS.pt "
                         "(or --checkpoint with one --compare)")
    pyplot = load_pyplot()
    sizes = _geometry(style)
    labels = [view.label for view in explanations[0].views]
    figure = pyplot.figure(figsize=(style.width_in, 4.0), dpi=PAPER_DPI)
    type_ = _Typesetter(figure)
    text_px = (sizes["text"] - sizes["gap"]) * figure.dpi
    rows = [[line for paragraph in _row_words(e, style) for line in type_.wrap(paragraph, text_px)]
            for e in explanations]
    line_in = type_.line_px / figure.dpi
    heights = [max(sizes["panel"], (len(lines) + 0.4) * line_in) + 2 * sizes["gap"] for lines in rows]
    caption = [marking_rule(style, labels), _map_legend(style, layer_label), style.note]
    caption_lines = [line for text in caption if text
                     for line in type_.wrap([(w, "black", "normal") for w in text.split()],
                                            (style.width_in - 2 * sizes["margin"]) * figure.dpi)]
    header = 2.3 * line_in
    footer = (len(caption_lines) + 0.8) * line_in + (TINT_BAR_INCHES if style.map_style == "tint" else 0.0)
    total = header + sum(heights) + footer + 2 * sizes["gap"]
    figure.set_size_inches(style.width_in, total)
    lefts = _column_lefts(sizes)
    top = total - sizes["gap"]
    _rule(figure, top, sizes["margin"], style.width_in - sizes["margin"], RULE["top"])
    _headers(figure, type_, lefts, sizes, top, labels, layer_label)
    y = top - header
    _rule(figure, y, sizes["margin"], style.width_in - sizes["margin"], RULE["mid"])
    for row, (explanation, lines, height) in enumerate(zip(explanations, rows, heights)):
        _draw_row(figure, type_, row, explanation, lines, lefts, sizes, y, style)
        y -= height
        width = RULE["top"] if row == len(rows) - 1 else RULE["row"]
        _rule(figure, y, sizes["margin"], style.width_in - sizes["margin"], width)
    if style.map_style == "tint":
        bar = figure.add_axes([lefts[2] / style.width_in, (y - 0.15) / total, 4 * sizes["panel"] / style.width_in,
                               0.05 / total], label="scale")
        colour_bar(figure, bar, "attention, per map: its lowest to its peak weight", PAPER_FONT + 1)
        y -= TINT_BAR_INCHES
    axes = figure.add_axes([0, 0, 1, 1], label="caption")
    axes.axis("off")
    for line in caption_lines:
        y -= line_in
        type_.draw(axes, line, sizes["margin"] * figure.dpi, y * figure.dpi)
    return figure


def _map_legend(style: PaperStyle, layer_label: str) -> str:
    what = f"Maps: the encoder's global grid and region tokens' attention ({layer_label})"
    if style.map_style == "contour":
        return (f"{what}, outlined at 50%, 75% and 90% of each map's range (thicker: stronger) over "
                "the picture in its true colours; red boxes: the strongest cell and regions.")
    return f"{what}, tinted over the picture; red boxes: the strongest cell and regions."


def _column_lefts(sizes: dict[str, float]) -> list[float]:
    """Left edges in inches: label, image, grid x2, region x2, text."""
    lefts = [sizes["margin"], sizes["margin"] + sizes["label"]]
    for _ in range(5):
        lefts.append(lefts[-1] + sizes["panel"] + sizes["gap"] + (GROUP_GAP if len(lefts) in (2, 4) else 0.0))
    return lefts


def _headers(figure: Any, type_: _Typesetter, lefts: list[float], sizes: dict[str, float], top: float,
             labels: Sequence[str], layer_label: str) -> None:
    axes = figure.add_axes([0, 0, 1, 1], label="header")
    axes.axis("off")
    dpi, panel = figure.dpi, sizes["panel"]
    first, second = top - 0.9 * type_.line_px / dpi, top - 1.95 * type_.line_px / dpi
    spans = [(lefts[1], panel, "Image"), (lefts[2], 2 * panel + sizes["gap"], "Grid feature map"),
             (lefts[4], 2 * panel + sizes["gap"], "Region feature map"), (lefts[6], sizes["text"], "Text")]
    for left, width, title in spans:
        axes.text((left + width / 2) / figure.get_figwidth(), first / figure.get_figheight(), title,
                  ha="center", va="baseline", fontsize=PAPER_FONT, fontweight="bold")
    for left, width, _ in spans[1:3]:
        _rule(figure, first - 0.35 * type_.line_px / dpi, left + 0.02, left + width - 0.02, RULE["row"])
    for column in (2, 3, 4, 5):
        axes.text((lefts[column] + panel / 2) / figure.get_figwidth(), second / figure.get_figheight(),
                  labels[(column - 2) % 2], ha="center", va="baseline", fontsize=PAPER_FONT)


def _draw_row(figure: Any, type_: _Typesetter, row: int, explanation: ImageExplanation,
              lines: list[list[tuple[str, str, str]]], lefts: list[float], sizes: dict[str, float],
              top: float, style: PaperStyle) -> None:
    width, height, panel = figure.get_figwidth(), figure.get_figheight(), sizes["panel"]
    bottom = top - sizes["gap"] - panel

    def panel_axes(column: int, label: str) -> Any:
        axes = figure.add_axes([lefts[column] / width, bottom / height, panel / width, panel / height],
                               label=label)
        for spine in axes.spines.values():
            spine.set_linewidth(0.3)
            spine.set_color("0.75")
        return axes

    label = figure.add_axes([lefts[0] / width, bottom / height, sizes["label"] / width, panel / height],
                            label=f"label:{row}")
    label.axis("off")
    label.text(0.0, 0.62, f"({_letter(row)})", fontsize=PAPER_FONT + 1, fontweight="bold", va="baseline")
    name = str(explanation.image_id) if explanation.image_id is not None else Path(explanation.name).stem
    label.text(0.0, 0.45, name[:8], fontsize=PAPER_FONT, color="dimgray", va="baseline")
    picture = panel_axes(1, f"image:{row}")
    no_ticks(picture)
    if draw_canvas(picture, explanation, explanation.views[0].geometry) is None:
        picture.text(0.5, 0.5, "no picture", ha="center", va="center", fontsize=PAPER_FONT,
                     transform=picture.transAxes)
    for model, view in enumerate(explanation.views):
        draw_grid(panel_axes(2 + model, f"grid:{row}:{model}"), explanation, view, view.grid_map,
                  style=style.map_style)
        draw_regions(panel_axes(4 + model, f"region:{row}:{model}"), explanation, view, view.region_map,
                     outline=2, style=style.map_style, numbers=False)
    text = figure.add_axes([lefts[6] / width, (top - sizes["gap"]) / height - 0.001, 0.001, 0.001],
                           label=f"text:{row}")
    text.axis("off")
    y = (top - sizes["gap"]) * figure.dpi - 0.9 * type_.line_px
    for line in lines:
        type_.draw(text, line, lefts[6] * figure.dpi, y)
        y -= type_.line_px


def _letter(row: int) -> str:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return letters[row] if row < len(letters) else letters[row // 26 - 1] + letters[row % 26]


def write_paper_figure(explanations: Sequence[ImageExplanation], out: str | Path,
                       layer_label: str = "mean over layers", style: PaperStyle = PAPER_STYLE) -> tuple[Path, Path]:
    """`out/paper_figure.png` and `.pdf` (fonts embedded as TrueType): the paper-layout table."""
    import matplotlib

    pyplot = load_pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with matplotlib.rc_context({"pdf.fonttype": 42, "ps.fonttype": 42}):
        figure = render_paper(explanations, layer_label, style)
        paths = out / f"{PAPER_FILE}.png", out / f"{PAPER_FILE}.pdf"
        try:
            for path in paths:
                with atomic_write(path, "wb") as handle:
                    figure.savefig(handle, dpi=PAPER_DPI, format=path.suffix[1:])
        finally:
            pyplot.close(figure)
    return paths
