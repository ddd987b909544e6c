"""The folder `hin explain` writes: one PNG per image, optionally the paper's table, and an
index page (index.html, from the package's page template) listing them."""

from __future__ import annotations

import string
from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from hin.explain.explanations import ImageExplanation
from hin.explain.figures import DPI, load_pyplot, render
from hin.explain.paper import PAPER_STYLE, PaperStyle, write_paper_figure
from hin.files import atomic_write, write_text

INDEX_FILE = "index.html"
INDEX_TEMPLATE = "index.html"   # package data: the page with $count, $paper_link, $header, $rows


def figure_name(explanation: ImageExplanation, index: int) -> str:
    stem = Path(explanation.name).stem if explanation.image_id is None else str(explanation.image_id)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return f"{index:04d}_{safe}.png"


def write_figures(explanations: Sequence[ImageExplanation], out: str | Path,
                  layer_label: str = "mean over layers", paper: bool = False,
                  paper_style: PaperStyle = PAPER_STYLE) -> list[Path]:
    """One PNG per image in `out`, and `out/index.html` listing them (sortable by CIDEr-D);
    with `paper`, also the paper-layout figure of them all (set by `paper_style`), shown at the
    top of the index."""
    pyplot = load_pyplot()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, explanation in enumerate(explanations):
        figure = render(explanation, layer_label)
        path = out / figure_name(explanation, index)
        with atomic_write(path, "wb") as file:
            figure.savefig(file, format="png", dpi=DPI)
        pyplot.close(figure)
        paths.append(path)
    paper_figures = write_paper_figure(explanations, out, layer_label, paper_style) if paper else ()
    write_index(explanations, paths, out / INDEX_FILE, paper_figures)
    return paths


def write_index(explanations: Sequence[ImageExplanation], figures: Sequence[Path], path: Path,
                paper: Sequence[Path] = ()) -> Path:
    """A self-contained page (no network) listing every figure with its captions and CIDEr-D;
    a click on a CIDEr-D or # heading sorts by it, a click on a thumbnail opens the figure.
    `paper`: the paper-layout figure's files, linked at the top."""
    from html import escape

    labels = [view.label for view in explanations[0].views] if explanations else []
    header = ["<th onclick='sortBy(0)'>#</th>", "<th>figure</th>", "<th>image</th>"]
    for offset, label in enumerate(labels):
        header.append(f"<th>{escape(label)} caption</th>")
        header.append(f"<th onclick='sortBy({4 + 2 * offset})'>{escape(label)} CIDEr-D ×100</th>")
    rows = []
    for index, (explanation, figure) in enumerate(zip(explanations, figures)):
        cells = [f"<td data-sort='{index}'>{index}</td>",
                 f"<td><a href='{escape(figure.name)}' title='open the full figure'>"
                 f"<img src='{escape(figure.name)}' loading='lazy'></a></td>",
                 f"<td>{escape(explanation.name)}<br><small>{'<br>'.join(map(escape, explanation.references))}"
                 "</small></td>"]
        for view in explanation.views:
            score = "" if view.cider is None else f"{100 * view.cider:.1f}"
            cells.append(f"<td>{escape(view.caption)}</td>")
            cells.append(f"<td data-sort='{score}'>{score or '–'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    paper_link = "" if not paper else (
        "<h2>All pictures in the paper's layout (Fig. 6)</h2>\n"
        f"<p><a href='{escape(paper[0].name)}'><img class='paper' src='{escape(paper[0].name)}' "
        "alt='the paper-layout figure'></a></p>\n<p>Files: " + " · ".join(
            f"<a href='{escape(p.name)}'>{escape(p.name)}</a>" for p in paper) + "</p>\n")
    page = string.Template(resources.files("hin.explain").joinpath(INDEX_TEMPLATE).read_text(encoding="utf-8"))
    return write_text(path, page.substitute(count=len(rows), paper_link=paper_link, header="".join(header),
                                            rows="\n".join(rows)))
