"""Figures of one image's explanation (matplotlib, the `plot` extra): the picture, each model's
global grid and region maps with its caption, optional per-word strips; the drawing helpers
the paper's table (paper.py) shares."""

from __future__ import annotations

from typing import Any

import numpy as np

from hin.data.features import ImageGeometry
from hin.errors import MissingExtraError, pip_install
from hin.explain.explanations import ImageExplanation, ModelView

MAP_COLORMAP = "viridis"   # every attention map hin draws (figures and the `hin serve` page)
OVERLAY_ALPHA = 0.45       # opacity of a map at its peak; where the model does not look, none
BOX_COLOUR = "red"         # the strongest regions and the peak grid cell, as in the paper
PANEL_INCHES = 3.2
CAPTION_INCHES = 0.7
WORD_INCHES = 1.6
SCALE_INCHES = 0.7
DPI = 100
HEAT_SIDE = 256      # region heat maps are painted at most this many pixels a side


def load_pyplot() -> Any:
    try:
        import matplotlib
    except ImportError as error:
        raise MissingExtraError(f"hin explain draws with matplotlib: {pip_install('plot')} "
                                "(or pip install matplotlib)") from error
    matplotlib.use("Agg")
    from matplotlib import pyplot
    return pyplot


def region_heat(weights: np.ndarray, boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Attention painted over the boxes: each pixel gets the summed weight of the boxes that
    cover it. -> [h', w'] over the whole (height, width) picture, h', w' <= HEAT_SIDE."""
    height, width = size
    scale = min(1.0, HEAT_SIDE / max(height, width))
    rows, cols = max(1, round(height * scale)), max(1, round(width * scale))
    heat = np.zeros((rows, cols), dtype=np.float64)
    for weight, (x1, y1, x2, y2) in zip(weights, boxes):
        left, right = int(np.floor(x1 * scale)), int(np.ceil(x2 * scale))
        top, bottom = int(np.floor(y1 * scale)), int(np.ceil(y2 * scale))
        heat[max(top, 0):max(bottom, 0), max(left, 0):max(right, 0)] += weight
    return heat


def draw_canvas(axes: Any, explanation: ImageExplanation,
            geometry: ImageGeometry) -> tuple[float, float, float, float] | None:
    """Show the picture (or a blank canvas of its size); -> extent (left, right, bottom, top)
    in picture pixels, or None when neither the picture nor its size is known."""
    size = picture_size(explanation, geometry)
    return None if size is None else _canvas(axes, explanation, size)


def picture_size(explanation: ImageExplanation, geometry: ImageGeometry) -> tuple[int, int] | None:
    """(height, width): the size the features record, else the picture's, else None."""
    if geometry.size is not None:
        return geometry.size
    if explanation.picture is None:
        return None
    width, height = explanation.picture.size
    return height, width


def _canvas(axes: Any, explanation: ImageExplanation, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """The picture, or without one a blank canvas of `size` (height, width); -> its extent."""
    if explanation.picture is not None:
        width, height = explanation.picture.size
        axes.imshow(explanation.picture, extent=(0, width, height, 0))
    else:
        height, width = size
        axes.imshow(np.full((2, 2, 3), 0.85), extent=(0, width, height, 0))
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    return (0, width, height, 0)


def no_ticks(axes: Any) -> None:
    axes.set_xticks([])
    axes.set_yticks([])


def overlay_colormap() -> Any:
    """MAP_COLORMAP with an opacity that grows with the weight (OVERLAY_ALPHA at the peak): the
    picture keeps its own colours wherever the model does not look."""
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    colours = colormaps[MAP_COLORMAP](np.linspace(0, 1, 256))
    colours[:, 3] = OVERLAY_ALPHA * np.linspace(0, 1, 256)
    return ListedColormap(colours, name=f"{MAP_COLORMAP}_overlay")


CONTOUR_LEVELS = (0.5, 0.75, 0.9)   # of a map's range, drawn thicker as they rise
CONTOUR_UPSAMPLE = 8                # grid cells are repeated so that outlines follow cell edges


def _overlay(axes: Any, heat: np.ndarray, extent: tuple[float, float, float, float],
             style: str = "tint") -> None:
    """`heat` over the picture, each map scaled from its lowest weight to its peak: a nearly
    uniform map still shows where it looks most. `tint` colours the picture (clear where the
    model does not look); `contour` outlines the map at CONTOUR_LEVELS in black on white and
    leaves the picture's colours true."""
    low, high = float(heat.min()), float(heat.max())
    if style == "contour":
        _contours(axes, heat, extent, low, high)
        return
    axes.imshow(heat, cmap=overlay_colormap(), vmin=low, vmax=high if high > low else low + 1.0,
                interpolation="nearest", extent=extent)


def _contours(axes: Any, heat: np.ndarray, extent: tuple[float, float, float, float],
              low: float, high: float) -> None:
    from matplotlib import patheffects

    if high <= low:
        return
    if max(heat.shape) < HEAT_SIDE // 4:
        heat = np.kron(heat, np.ones((CONTOUR_UPSAMPLE, CONTOUR_UPSAMPLE)))
    left, right, bottom, top = extent            # one cell of `low` around the map closes
    step_x, step_y = (right - left) / heat.shape[1], (bottom - top) / heat.shape[0]   # its outlines
    heat = np.pad(heat, 1, constant_values=low)
    levels = [low + level * (high - low) for level in CONTOUR_LEVELS]
    lines = axes.contour(heat, levels=levels, colors="black", linewidths=[0.5, 0.8, 1.2], origin="upper",
                         extent=(left - step_x, right + step_x, bottom + step_y, top - step_y))
    lines.set(path_effects=[patheffects.withStroke(linewidth=2.0, foreground="white")])


def _outlined(axes: Any, x: float, y: float, text: str, **style: Any) -> None:
    """White text with a black outline: readable on any colour of picture or map."""
    from matplotlib import patheffects

    axes.text(x, y, text, color="white", clip_on=True, **style,
              path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])


def _box(axes: Any, box: np.ndarray, linewidth: float = 1.4) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=BOX_COLOUR, linewidth=linewidth,
                             zorder=3))


def draw_grid(axes: Any, explanation: ImageExplanation, view: ModelView, weights: np.ndarray,
              style: str = "tint") -> str | None:
    """Grid attention as upsampled cells over the picture (`style`: see _overlay); -> what could
    not be placed, if anything."""
    geometry = view.geometry
    no_ticks(axes)
    peak = float(weights.max()) or 1.0
    placement = geometry.grid_placement
    if placement is not None and (extent := draw_canvas(axes, explanation, geometry)) is not None:
        (rows, cols), (x1, y1, x2, y2) = placement
        _overlay(axes, weights.reshape(rows, cols), (x1, x2, y2, y1), style)
        if weights.max() > 0:
            _box(axes, geometry.cell_boxes()[int(np.argmax(weights))])
        axes.set_xlim(extent[0], extent[1])
        axes.set_ylim(extent[2], extent[3])
        return None
    if geometry.grid_layout is not None:
        axes.imshow(weights.reshape(geometry.grid_layout), cmap=MAP_COLORMAP, vmin=0, vmax=peak,
                    interpolation="nearest")
    else:
        axes.imshow(weights[None], cmap=MAP_COLORMAP, vmin=0, vmax=peak, interpolation="nearest", aspect="auto")
    return "grid map not placed on the picture: " + "; ".join(
        m for m in geometry.missing if "grid" in m or "size" in m)


def draw_regions(axes: Any, explanation: ImageExplanation, view: ModelView, weights: np.ndarray,
                  outline: int = 3, style: str = "tint", numbers: bool = True) -> str | None:
    """Region attention painted over the boxes (the `outline` strongest outlined, with their
    weights written in them when `numbers`; `style`: see _overlay); without
    boxes, a bar per region slot. -> what could not be placed, if anything."""
    geometry = view.geometry
    boxes = geometry.boxes
    size = picture_size(explanation, geometry)
    if boxes is None or len(boxes) < len(weights) or size is None:
        if boxes is None:
            problem = "; ".join(m for m in geometry.missing if "box" in m)
        elif len(boxes) < len(weights):
            problem = f"{len(weights)} regions but only {len(boxes)} boxes recorded"
        else:
            problem = "; ".join(m for m in geometry.missing if "size" in m)
        axes.bar(np.arange(1, len(weights) + 1), weights, color="tab:purple")
        axes.set_xlabel("region slot")
        axes.tick_params(labelsize=6)
        return "region map not placed on the picture: " + problem
    no_ticks(axes)
    extent = _canvas(axes, explanation, size)
    heat = region_heat(weights, boxes[:len(weights)], size)
    _overlay(axes, heat, extent, style)
    for index in np.argsort(-weights, kind="stable")[:outline]:
        if weights[index] <= 0:
            break
        _box(axes, boxes[index])
        x1, y1 = boxes[index][:2]
        if numbers:
            _outlined(axes, x1 + 2, y1 + 2, f"{weights[index]:.2f}", fontsize=7, va="top", fontweight="bold")
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    return None


def wrapped(text: str, width: int) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width)) or "(empty caption)"


def render(explanation: ImageExplanation, layer_label: str = "mean over layers") -> Any:
    """The figure of one image, laid out like the paper's qualitative figure: the picture, then
    per model a column with the global grid token's map, the global region token's map and
    the caption (with CIDEr-D); references and notes below; optionally per-word strips.
    Axes are labelled `grid:<column>`, `region:<column>`, `word:<row>:<index>` (one word strip
    per row: two views with equal labels, e.g. a model compared with itself, never collide)."""
    pyplot = load_pyplot()
    views = explanation.views
    strips = [(view, view.word_maps) for view in views if view.word_maps is not None and len(view.words)]
    columns = 1 + len(views)
    size = picture_size(explanation, views[0].geometry)
    panel = PANEL_INCHES * (1.0 if size is None else min(1.0, max(0.5, size[0] / size[1])))   # wide pictures
    heights = [panel, panel, CAPTION_INCHES] + [WORD_INCHES] * len(strips) + [SCALE_INCHES]
    total = sum(heights) + 0.9
    figure = pyplot.figure(figsize=(PANEL_INCHES * columns, total), dpi=DPI)
    layout = figure.add_gridspec(len(heights), columns, height_ratios=heights, hspace=0.3, wspace=0.08,
                                 left=0.3 / (PANEL_INCHES * columns), right=0.98, top=1 - 0.55 / total,
                                 bottom=0.2 / total)
    notes = list(explanation.notes)

    picture_axes = figure.add_subplot(layout[0, 0], label="picture")
    no_ticks(picture_axes)
    if draw_canvas(picture_axes, explanation, views[0].geometry) is None:
        picture_axes.text(0.5, 0.5, "no picture", ha="center", va="center", transform=picture_axes.transAxes)
    picture_axes.set_title(wrapped(explanation.name, 40), fontsize=8)
    for column, view in enumerate(views, start=1):
        grid_axes = figure.add_subplot(layout[0, column], label=f"grid:{column - 1}")
        grid_axes.set_title(f"{view.label}\nglobal grid token, {layer_label} (peak {view.grid_map.max():.3f})",
                            fontsize=7)
        region_axes = figure.add_subplot(layout[1, column], label=f"region:{column - 1}")
        peak = f" (peak {view.region_map.max():.3f})" if len(view.region_map) else " (no regions)"
        region_axes.set_title(f"global region token, {layer_label}{peak}", fontsize=7)
        for problem in (draw_grid(grid_axes, explanation, view, view.grid_map),
                        draw_regions(region_axes, explanation, view, view.region_map)):
            if problem and f"{view.label}: {problem}" not in notes:
                notes.append(f"{view.label}: {problem}")
        text_axes = figure.add_subplot(layout[2, column], label=f"caption:{column - 1}")
        text_axes.axis("off")
        score = "" if view.cider is None else f"\nCIDEr-D ×100: {100 * view.cider:.1f}"
        text_axes.text(0, 1, wrapped(view.caption, 34) + score, va="top", fontsize=9, fontweight="bold",
                       transform=text_axes.transAxes)
    info_axes = figure.add_subplot(layout[1:3, 0], label="references")
    info_axes.axis("off")
    lines = ["references:"] + [f"- {r}" for r in explanation.references] if explanation.references else []
    info_axes.text(0, 1, "\n".join(wrapped(line, 48) for line in lines + [f"! {n}" for n in notes]),
                   va="top", fontsize=7, transform=info_axes.transAxes)

    slots = max([columns * 2] + [len(view.words) for view, _ in strips])   # one word size for every strip
    for row, (view, word_maps) in enumerate(strips, start=3):   # a strip's label is its row (views may be equal)
        strip = layout[row, :].subgridspec(1, slots, wspace=0.05)
        for index, (word, weights) in enumerate(zip(view.words, word_maps)):
            axes = figure.add_subplot(strip[0, index], label=f"word:{row}:{index}")
            if view.word_source == "grid":
                draw_grid(axes, explanation, view, weights)
            else:
                draw_regions(axes, explanation, view, weights, outline=1)
            axes.set_title(word, fontsize=8)
            no_ticks(axes)
            if index == 0:
                axes.set_ylabel(f"{view.label}\n{view.word_source} per word", fontsize=7)
    scale = layout[-1, :].subgridspec(3, 3, height_ratios=[0.25, 0.3, 0.45])[1, 1]
    colour_bar(figure, figure.add_subplot(scale, label="scale"),
                "attention, per map: its lowest to its peak weight", fontsize=7)
    return figure


def colour_bar(figure: Any, axes: Any, label: str, fontsize: float) -> None:
    """The overlay's colours as they look on white, from a map's lowest weight to its peak."""
    from matplotlib import cm, colors

    bar = figure.colorbar(cm.ScalarMappable(colors.Normalize(0, 1), overlay_colormap()), cax=axes,
                          orientation="horizontal")
    bar.set_ticks([0, 1], labels=["lowest", "peak"])
    bar.ax.tick_params(labelsize=fontsize - 1)
    bar.set_label(label, fontsize=fontsize)
