"""The paper's Fig. 6 for two models: one table, a row per picture (image | grid maps |
region maps | captions with the words that differ in red)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from hin.errors import UsageError
from hin.explain.explanations import ImageExplanation
from hin.explain.figures import (
    BOX_COLOUR,
    DPI,
    colour_bar,
    draw_canvas,
    draw_grid,
    draw_regions,
    load_pyplot,
    no_ticks,
    wrapped,
)
from hin.files import atomic_write

PAPER_FILE = "paper_figure"     # .png and .pdf
PAPER_PANEL_INCHES = 1.9
PAPER_TEXT_INCHES = 3.6
PAPER_FONT = 9


def differing_words(words: Sequence[str], other: Sequence[str]) -> list[bool]:
    """For each of `words`: True when it is not part of what it shares, in order, with `other`
    (difflib's matching blocks): the words the paper prints in red."""
    import difflib

    differs = [True] * len(words)
    for block in difflib.SequenceMatcher(a=list(words), b=list(other), autojunk=False).get_matching_blocks():
        differs[block.a:block.a + block.size] = [False] * block.size
    return differs


def _word_line(axes: Any, y: float, pieces: Sequence[tuple[str, str, str]]) -> float:
    """Draw (text, colour, weight) pieces word by word from the left at axes height `y`,
    wrapping at the axes' right edge; -> the height below the last line."""
    renderer = axes.figure.canvas.get_renderer()
    box = axes.get_window_extent(renderer)
    line = PAPER_FONT * 1.35 / 72 * axes.figure.dpi / box.height
    x = 0.0
    for text, colour, weight in pieces:
        for word in text.split():
            artist = axes.text(x, y, word + " ", color=colour, fontweight=weight, fontsize=PAPER_FONT,
                               va="top", transform=axes.transAxes)
            width = artist.get_window_extent(renderer).width / box.width
            if x > 0 and x + width > 1.0:
                x, y = 0.0, y - line
                artist.set_position((x, y))
            x += width
    return y - line * 1.25


def _paper_text(axes: Any, explanation: ImageExplanation) -> None:
    """Ground truth, then each caption with its CIDEr-D x100, words the other caption lacks in red."""
    axes.axis("off")
    y = 1.0
    if explanation.references:
        y = _word_line(axes, y, [("GT:", "black", "bold"), (explanation.references[0], "black", "normal")])
    first, second = (view.caption.split() for view in explanation.views)
    for view, words, other in zip(explanation.views, (first, second), (second, first)):
        score = "" if view.cider is None else f" ({100 * view.cider:.1f})"
        pieces = [(f"{view.label}{score}:", "black", "bold")]
        pieces += [(word, BOX_COLOUR if red else "black", "normal")
                   for word, red in zip(words, differing_words(words, other))]
        y = _word_line(axes, y, pieces)
    for note in explanation.notes:
        y = _word_line(axes, y, [(note, "dimgray", "normal")])


def render_paper(explanations: Sequence[ImageExplanation], layer_label: str = "mean over layers") -> Any:
    """The paper's Fig. 6 for two models: a row per picture; columns Image | grid feature map
    of each model | region feature map of each model | text. Axes are labelled `image:<row>`,
    `grid:<row>:<model>`, `region:<row>:<model>`, `text:<row>`."""
    if not explanations or any(len(e.views) != 2 for e in explanations):
        raise UsageError("the paper's figure compares two models: give --compare BASE.pt OURS.pt "
                         "(or --checkpoint with one --compare)")
    pyplot = load_pyplot()
    labels = [view.label for view in explanations[0].views]
    header, bar = 0.45, 0.75
    heights = [header] + [PAPER_PANEL_INCHES] * len(explanations) + [bar]
    widths = [PAPER_PANEL_INCHES] * 5 + [PAPER_TEXT_INCHES]
    figure = pyplot.figure(figsize=(sum(widths) + 0.4, sum(heights) + 0.3), dpi=DPI)
    layout = figure.add_gridspec(len(heights), len(widths), height_ratios=heights, width_ratios=widths,
                                 hspace=0.06, wspace=0.04, left=0.3 / figure.get_figwidth(), right=0.99,
                                 top=0.99, bottom=0.15 / figure.get_figheight())
    groups = [((0, 1), "Image", ()), ((1, 3), f"Grid feature map ({layer_label})", labels),
              ((3, 5), f"Region feature map ({layer_label})", labels), ((5, 6), "Text", ())]
    for (start, stop), title, subtitles in groups:
        axes = figure.add_subplot(layout[0, start:stop], label=f"header:{start}")
        axes.axis("off")
        axes.text(0.5, 1.0, title, ha="center", va="top", fontsize=PAPER_FONT + 1, fontweight="bold")
        for index, subtitle in enumerate(subtitles):
            axes.text((index + 0.5) / len(subtitles), 0.1, subtitle, ha="center", va="bottom",
                      fontsize=PAPER_FONT + 1)
    for row, explanation in enumerate(explanations, start=1):
        picture = figure.add_subplot(layout[row, 0], label=f"image:{row - 1}")
        no_ticks(picture)
        if draw_canvas(picture, explanation, explanation.views[0].geometry) is None:
            picture.text(0.5, 0.5, "no picture", ha="center", va="center", transform=picture.transAxes)
        picture.set_ylabel(wrapped(explanation.name, 24), fontsize=PAPER_FONT - 1)
        notes = list(explanation.notes)
        for model, view in enumerate(explanation.views):
            grid = figure.add_subplot(layout[row, 1 + model], label=f"grid:{row - 1}:{model}")
            region = figure.add_subplot(layout[row, 3 + model], label=f"region:{row - 1}:{model}")
            for problem in (draw_grid(grid, explanation, view, view.grid_map),
                            draw_regions(region, explanation, view, view.region_map, outline=2)):
                if problem and f"{view.label}: {problem}" not in notes:
                    notes.append(f"{view.label}: {problem}")
        _paper_text(figure.add_subplot(layout[row, 5], label=f"text:{row - 1}"),
                    replace(explanation, notes=tuple(notes)))
    for start, kind in ((1, "grid"), (3, "region")):
        scale = layout[-1, start:start + 2].subgridspec(3, 3, height_ratios=[0.3, 0.25, 0.45],
                                                        width_ratios=[0.1, 0.8, 0.1])
        colour_bar(figure, figure.add_subplot(scale[1, 1], label=f"scale:{kind}"),
                    f"global {kind} token's attention, per map", PAPER_FONT)
    return figure


def write_paper_figure(explanations: Sequence[ImageExplanation], out: str | Path,
                       layer_label: str = "mean over layers") -> tuple[Path, Path]:
    """`out/paper_figure.png` and `.pdf`: the paper-layout table of `explanations`."""
    pyplot = load_pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    figure = render_paper(explanations, layer_label)
    paths = out / f"{PAPER_FILE}.png", out / f"{PAPER_FILE}.pdf"
    try:
        for path in paths:
            with atomic_write(path, "wb") as handle:
                figure.savefig(handle, dpi=DPI, format=path.suffix[1:])
    finally:
        pyplot.close(figure)
    return paths
