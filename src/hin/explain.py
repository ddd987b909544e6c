"""Where HIN looks: the model's own attention probabilities as maps (docs/model.md §3, §5).

    from hin.explain import attention_maps
    maps = attention_maps(model, grid, region, tokens)
    maps.encoder_grid[0, -1]      # image 0, last CTFA layer: global grid token over the grid

The maps are read from the same forward pass that produces the model's outputs: the model
is asked, through an explicit `AttentionTrace` argument, to also return the probabilities
its attention layers weigh the values with. Nothing is switched on globally and no hook is
installed, so the normal encode/decode/beam-search path is untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from hin.caption import Captioner, load_picture
from hin.config import DecodingConfig
from hin.data.coco import load_split
from hin.data.features import FeatureStore, ImageGeometry, describe_geometry, read_attributes
from hin.data.vocab import tokenize
from hin.decoding import search
from hin.errors import MissingExtraError, UsageError, pip_install
from hin.extract.images import list_images, load_rgb, recorded_orientation
from hin.files import atomic_write, write_text
from hin.metrics import CiderDTable, cider_d
from hin.model import HIN, AttentionTrace


@dataclass(frozen=True)
class AttentionMaps:
    """Attention maps of a batch, float32 on the CPU, mean over heads.

    encoder_grid [B, L, Ng]: per CTFA layer, the global grid token's attention over the grid.
    encoder_region [B, L, Nr]: per CTFA layer, the global region token's attention over the
        region slots; exactly 0 at padded slots (an image without regions has an all-zero row).
    region_mask [B, Nr]: True where a region slot is padding.
    With tokens [B, T] (decoder inputs, starting with <bos>; position t's maps are those the
    model used to predict token t + 1):
    decoder_grid [B, L, T, Ng] and decoder_region [B, L, T, Nr]: each BGAF layer's direct
        grid / region cross-attention (grid_att, region_att) over its encoder level;
    decoder_gate [B, L, T]: the mean over channels of each layer's fusion gate z (near 1:
        the direct grid/region path dominates; near 0: the crossed path).
    Positions where tokens are padding hold the attention of an empty query: ignore them.
    """

    encoder_grid: Tensor
    encoder_region: Tensor
    region_mask: Tensor
    decoder_grid: Tensor | None = None
    decoder_region: Tensor | None = None
    decoder_gate: Tensor | None = None

    @property
    def num_layers(self) -> int:
        return self.encoder_grid.shape[1]


def _mean_over_heads(per_layer: list[Tensor]) -> Tensor:
    """L tensors [B, h, Q, N] -> [B, L, Q, N]"""
    return torch.stack([probabilities.mean(dim=1) for probabilities in per_layer], dim=1).cpu()


@torch.no_grad()
def attention_maps(model: HIN, grid: Tensor, region: Tensor, tokens: Tensor | None = None) -> AttentionMaps:
    """The encoder's (and with `tokens` [B, T] the decoder's) attention maps for a batch of
    features: grid [B, Ng, Dg], region [B, Nr, Dr] with zero rows as padding, as for
    `HIN.encode`. Runs the model as it is (eval mode for dropout-free maps)."""
    device = model.device
    trace = AttentionTrace()
    enc = model.encode(grid.to(device), region.to(device), trace)
    region_mask = enc.region_mask[:, 0, 0].cpu()
    encoder_region = _mean_over_heads(trace.encoder_region)[:, :, 0]
    maps = dict(encoder_grid=_mean_over_heads(trace.encoder_grid)[:, :, 0],
                encoder_region=encoder_region.masked_fill(region_mask[:, None], 0.0),
                region_mask=region_mask)
    if tokens is not None:
        if tokens.dim() != 2 or tokens.shape[0] != grid.shape[0]:
            raise UsageError(f"tokens must be [batch, steps] with the features' batch size "
                             f"{grid.shape[0]}, got shape {list(tokens.shape)}")
        model.decode(tokens.to(device), enc, trace)
        decoder_region = _mean_over_heads(trace.decoder_region)
        maps.update(decoder_grid=_mean_over_heads(trace.decoder_grid),
                    decoder_region=decoder_region.masked_fill(region_mask[:, None, None], 0.0),
                    decoder_gate=torch.stack([z.mean(dim=-1) for z in trace.decoder_gate], dim=1).cpu())
    return AttentionMaps(**maps)


# ---- `hin explain`: captions, maps and geometry per image, ready to draw -------------------

WORD_SOURCES = ("grid", "region")


@dataclass(frozen=True)
class ModelView:
    """One model's caption and maps for one image, as a figure shows them.

    grid_map [Ng] and region_map [n] (the image's real regions only) are the encoder's global
    tokens' attention at the chosen layer (or the mean over layers); word_maps [words, Ng or n]
    the decoder's attention while it produced each word (`word_source`: grid or region).
    `words` are the generated tokens up to <eos>; `caption` is the reported text.
    """

    label: str
    caption: str
    words: tuple[str, ...]
    grid_map: np.ndarray
    region_map: np.ndarray
    geometry: ImageGeometry
    word_maps: np.ndarray | None = None
    word_source: str = "grid"
    cider: float | None = None


@dataclass(frozen=True)
class ImageExplanation:
    """Everything one figure shows: the picture (None when it could not be found), one view
    per model, the references, and notes on what could not be drawn."""

    name: str
    image_id: int | None
    picture: Image.Image | None
    views: tuple[ModelView, ...]
    references: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    unfamiliar: str | None = None     # the first checkpoint's hin.data.familiarity note


def select_layer(maps: Tensor, layer: int | None) -> Tensor:
    """[B, L, ...] -> [B, ...]: layer `layer` (1-based) or, with None, the mean over layers."""
    if layer is None:
        return maps.mean(dim=1)
    if not 1 <= layer <= maps.shape[1]:
        raise UsageError(f"--layer must be between 1 and the model's {maps.shape[1]} layers, got {layer}")
    return maps[:, layer - 1]


def generated_words(captioner: Captioner, tokens: Sequence[int]) -> list[int]:
    """The ids a hypothesis produced before <eos> (what the per-word maps are shown for)."""
    ids = []
    for token in tokens:
        if token in (captioner.vocab.eos_id, captioner.vocab.pad_id):
            break
        ids.append(int(token))
    return ids


def explain_arrays(captioner: Captioner, grids: Sequence[np.ndarray], regions: Sequence[np.ndarray],
                   geometries: Sequence[ImageGeometry], *, label: str, layer: int | None = None,
                   words: str | None = None) -> list[ModelView]:
    """Caption a batch of feature arrays with `captioner`'s model and settings, and read the
    maps of its best caption (teacher-forced: exactly the attention the search used)."""
    if words is not None and words not in WORD_SOURCES:
        raise UsageError(f"words must be one of {WORD_SOURCES}, got {words!r}")
    grid, region = captioner.batch(grids, regions)
    ids, _ = search(captioner.decoding_models(captioner.decoding.precision), grid, region,
                   captioner.decoding)
    produced = [generated_words(captioner, hypotheses[0]) for hypotheses in ids.tolist()]
    # Word k was predicted at input position k - 1: feed <bos> and every word but the last.
    steps = max(1, max(len(p) for p in produced))
    tokens = torch.full((len(produced), steps), captioner.vocab.pad_id, dtype=torch.long)
    tokens[:, 0] = captioner.vocab.bos_id
    for row, word_ids in enumerate(produced):
        tokens[row, 1:len(word_ids)] = torch.tensor(word_ids[:-1], dtype=torch.long)
    maps = attention_maps(captioner.model, grid, region, tokens)
    grid_maps = select_layer(maps.encoder_grid, layer).numpy()
    region_maps = select_layer(maps.encoder_region, layer).numpy()
    decoder = None if words is None else select_layer(getattr(maps, f"decoder_{words}"), layer).numpy()
    views = []
    for i, word_ids in enumerate(produced):
        present = (~maps.region_mask[i]).nonzero()
        real = int(present[-1]) + 1 if len(present) else 0     # trailing padding dropped
        word_maps = None
        if decoder is not None:
            word_maps = decoder[i, :len(word_ids)] if words == "grid" else decoder[i, :len(word_ids), :real]
        views.append(ModelView(
            label=label, caption=captioner.text(word_ids),
            words=tuple(captioner.vocab.words[t] for t in word_ids),
            grid_map=grid_maps[i], region_map=region_maps[i, :real], geometry=geometries[i],
            word_maps=word_maps, word_source=words or "grid"))
    return views


def checkpoint_labels(checkpoints: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[str]:
    """Column titles: `labels`, or each checkpoint's folder name (`runs/demo/xe/best.pt` -> `xe`),
    `folder/name` where two folders' names are equal; never a whole path."""
    if labels is not None:
        if len(labels) != len(checkpoints):
            raise UsageError(f"--labels gives {len(labels)} names for {len(checkpoints)} checkpoints: "
                             "give one per checkpoint, in the order of the columns")
        return list(labels)
    paths = [Path(c) for c in checkpoints]
    short = [path.parent.name or path.stem for path in paths]
    if len(set(short)) == len(short) or len(set(paths)) < len(paths):
        return short
    return [f"{path.parent.name}/{path.name}" if path.parent.name else path.name for path in paths]


def _picture_files(images: str | Path | None) -> dict[int, Path]:
    return {} if images is None else {file.image_id: file.path for file in list_images(images)}


def _references(annotations: str | Path | None, split: str | None, ids: Sequence[int] | None,
                limit: int | None) -> tuple[list[int], dict[int, list[str]]]:
    """The ids to explain and their references: `ids`, or the split's first `limit` images."""
    if annotations is None:
        if split is not None:
            raise UsageError("--split needs --annotations (the directory or dataset_coco.json it comes from)")
        if not ids:
            raise UsageError("give pictures, --ids, or --split with --annotations")
        return list(ids), {}
    if split is None:
        raise UsageError("--annotations needs --split: the split whose references are shown "
                         "(and whose references give CIDEr-D its document frequencies)")
    images = load_split(annotations, split)
    if ids:
        strays = [i for i in ids if i not in images.images]
        if strays:
            raise UsageError(f"image ids {strays[:10]} are not in the {split} split of {annotations}")
        chosen = list(ids)
    else:
        chosen = images.image_ids[:limit] if limit is not None else images.image_ids
    return chosen, images.references()


def _cider(explanations: list[ImageExplanation], references: dict[int, list[str]]) -> list[ImageExplanation]:
    """Each view's CIDEr-D against its image's references, document frequencies from all the
    given references (the split's), as training's validation scores: spaCy-tokenised text."""
    scored = [e for e in explanations if e.image_id in references]
    if not scored:
        return explanations
    tokenised = {i: [" ".join(tokenize(c)) for c in captions] for i, captions in references.items()}
    table = CiderDTable.from_references(tokenised, documents="image", tokenized=True)
    per_model = []
    for column in range(len(scored[0].views)):
        candidates = {e.image_id: e.views[column].caption for e in scored}
        per_model.append(cider_d(candidates, {i: tokenised[i] for i in candidates}, df=table)[1])
    result = []
    for explanation in explanations:
        if explanation.image_id in references:
            views = tuple(replace(view, cider=scores[explanation.image_id])
                          for view, scores in zip(explanation.views, per_model))
            explanation = replace(explanation, views=views,
                                  references=tuple(references[explanation.image_id]))
        result.append(explanation)
    return result


def explain(checkpoints: Sequence[str | Path], *, pictures: Sequence[str | Path] = (),
            ids: Sequence[int] | None = None, grid: str | Path | None = None,
            region: str | Path | None = None, images: str | Path | None = None,
            annotations: str | Path | None = None, split: str | None = None, limit: int | None = None,
            layer: int | None = None, words: str | None = None, labels: Sequence[str] | None = None,
            decoding: DecodingConfig = DecodingConfig(), device: str = "auto",
            batch_size: int = 8) -> list[ImageExplanation]:
    """Caption and read the maps of pictures (each checkpoint re-runs its recorded extractors)
    or of feature-file images (`ids`, or a split's first `limit`), one view per checkpoint."""
    if not checkpoints:
        raise UsageError("explain needs at least one checkpoint")
    if pictures and any(v is not None for v in (ids, grid, region, split, annotations, images)):
        raise UsageError("give pictures, or feature files (--grid/--region with --ids or --split, pictures "
                         "found by id in --images), not both")
    if not pictures and (grid is None or region is None):
        raise UsageError("give pictures, or both --grid and --region feature files")
    labels = checkpoint_labels(checkpoints, labels)
    captioners = [Captioner(c, device=device, decoding=decoding, batch_size=batch_size) for c in checkpoints]
    if pictures:
        return [explanation for start in range(0, len(pictures), batch_size)
                for explanation in _explain_pictures(captioners, labels, pictures[start:start + batch_size],
                                                     layer, words)]
    chosen, references = _references(annotations, split, ids, limit)
    files = _picture_files(images)
    orientation = recorded_orientation(read_attributes(grid))    # as the file's boxes are
    stores = [FeatureStore(grid, region, max_regions=c.max_regions, grid_dim=c.model.config.grid_dim,
                           region_dim=c.model.config.region_dim) for c in captioners]
    try:
        explanations = []
        for start in range(0, len(chosen), batch_size):
            chunk = chosen[start:start + batch_size]
            columns = []
            for captioner, label, store in zip(captioners, labels, stores):
                arrays = [store[i] for i in chunk]
                columns.append(explain_arrays(captioner, [a[0] for a in arrays], [a[1] for a in arrays],
                                              [store.geometry(i) for i in chunk], label=label, layer=layer,
                                              words=words))
            for row, image_id in enumerate(chunk):
                picture, notes = None, ()
                if image_id in files:
                    picture = load_rgb(files[image_id], orientation=orientation)
                else:
                    where = f"in {images}" if images is not None else "(no --images folder given)"
                    notes = (f"no picture of image {image_id} {where}: maps drawn on a blank canvas",)
                explanations.append(ImageExplanation(str(image_id), image_id, picture,
                                                     tuple(column[row] for column in columns), notes=notes))
    finally:
        for store in stores:
            store.close()
    return _cider(explanations, references)


def _explain_pictures(captioners: list[Captioner], labels: list[str], paths: Sequence[str | Path],
                      layer: int | None, words: str | None) -> list[ImageExplanation]:
    loaded = [load_picture(p) for p in paths]
    columns, unfamiliar = [], []
    for captioner, label in zip(captioners, labels):
        grid_entries, region_entries = captioner.picture_entries(loaded)
        unfamiliar = unfamiliar or [captioner.unfamiliar(g["features"]) for g in grid_entries]
        grid_extractor, region_extractor = captioner.extractors()
        geometries = [describe_geometry(str(path), grid_extractor.attributes(), g, r, len(g["features"]),
                                        f"the {grid_extractor.name} extractor",
                                        f"the {region_extractor.name} extractor",
                                        region_rows=len(r["features"]))
                      for path, g, r in zip(paths, grid_entries, region_entries)]
        columns.append(explain_arrays(captioner, [g["features"] for g in grid_entries],
                                      [r["features"] for r in region_entries], geometries, label=label,
                                      layer=layer, words=words))
    return [ImageExplanation(str(path), None, picture, tuple(column[row] for column in columns),
                             notes=(note,) if note else (), unfamiliar=note)
            for row, (path, picture, note) in enumerate(zip(paths, loaded, unfamiliar))]


# ---- figures (matplotlib, the `plot` extra) -------------------------------------------------

MAP_COLORMAP = "viridis"   # every attention map hin draws (figures and the `hin serve` page)
OVERLAY_ALPHA = 0.45       # opacity of a map at its peak; where the model does not look, none
BOX_COLOUR = "red"         # the strongest regions and the peak grid cell, as in the paper
PANEL_INCHES = 3.2
CAPTION_INCHES = 0.7
WORD_INCHES = 1.6
SCALE_INCHES = 0.7
DPI = 100
HEAT_SIDE = 256      # region heat maps are painted at most this many pixels a side
INDEX_FILE = "index.html"


def _pyplot() -> Any:
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


def _canvas(axes: Any, explanation: ImageExplanation,
            geometry: ImageGeometry) -> tuple[float, float, float, float] | None:
    """Show the picture (or a blank canvas of its size); -> extent (left, right, bottom, top)
    in picture pixels, or None when neither the picture nor its size is known."""
    if explanation.picture is not None:
        width, height = explanation.picture.size
        axes.imshow(explanation.picture, extent=(0, width, height, 0))
    elif geometry.size is not None:
        height, width = geometry.size
        axes.imshow(np.full((2, 2, 3), 0.85), extent=(0, width, height, 0))
    else:
        return None
    axes.set_xlim(0, width)
    axes.set_ylim(height, 0)
    return (0, width, height, 0)


def _no_ticks(axes: Any) -> None:
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


def _overlay(axes: Any, heat: np.ndarray, extent: tuple[float, float, float, float]) -> None:
    """`heat` over the picture, each map scaled from its lowest weight (clear) to its peak: a
    nearly uniform map still shows where it looks most."""
    low, high = float(heat.min()), float(heat.max())
    axes.imshow(heat, cmap=overlay_colormap(), vmin=low, vmax=high if high > low else low + 1.0,
                interpolation="nearest", extent=extent)


def _outlined(axes: Any, x: float, y: float, text: str, **style: Any) -> None:
    """White text with a black outline: readable on any colour of picture or map."""
    from matplotlib import patheffects

    axes.text(x, y, text, color="white", clip_on=True, **style,
              path_effects=[patheffects.withStroke(linewidth=2, foreground="black")])


def _box(axes: Any, box: np.ndarray, linewidth: float = 1.4) -> None:
    from matplotlib.patches import Rectangle

    x1, y1, x2, y2 = box
    axes.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=BOX_COLOUR, linewidth=linewidth))


def _draw_grid(axes: Any, explanation: ImageExplanation, view: ModelView, weights: np.ndarray) -> str | None:
    """Grid attention as upsampled cells over the picture; -> what could not be placed, if anything."""
    geometry = view.geometry
    _no_ticks(axes)
    peak = float(weights.max()) or 1.0
    if geometry.grid_placed and (extent := _canvas(axes, explanation, geometry)) is not None:
        rows, cols = geometry.grid_layout
        x1, y1, x2, y2 = geometry.grid_box
        _overlay(axes, weights.reshape(rows, cols), (x1, x2, y2, y1))
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


def _draw_regions(axes: Any, explanation: ImageExplanation, view: ModelView, weights: np.ndarray,
                  outline: int = 3) -> str | None:
    """Region attention painted over the boxes (the `outline` strongest outlined); without
    boxes, a bar per region slot. -> what could not be placed, if anything."""
    geometry = view.geometry
    boxes = geometry.boxes
    problem = None
    if boxes is None:
        problem = "; ".join(m for m in geometry.missing if "box" in m)
    elif len(boxes) < len(weights):
        problem = f"{len(weights)} regions but only {len(boxes)} boxes recorded"
    size = geometry.size or (None if explanation.picture is None else explanation.picture.size[::-1])
    if problem is None and size is None:
        problem = "; ".join(m for m in geometry.missing if "size" in m)
    if problem is not None:
        axes.bar(np.arange(1, len(weights) + 1), weights, color="tab:purple")
        axes.set_xlabel("region slot")
        axes.tick_params(labelsize=6)
        return "region map not placed on the picture: " + problem
    _no_ticks(axes)
    extent = _canvas(axes, explanation, replace(geometry, size=tuple(size)))
    heat = region_heat(weights, boxes[:len(weights)], tuple(size))
    _overlay(axes, heat, extent)
    for index in np.argsort(-weights, kind="stable")[:outline]:
        if weights[index] <= 0:
            break
        _box(axes, boxes[index])
        x1, y1 = boxes[index][:2]
        _outlined(axes, x1 + 2, y1 + 2, f"{weights[index]:.2f}", fontsize=7, va="top", fontweight="bold")
    axes.set_xlim(extent[0], extent[1])
    axes.set_ylim(extent[2], extent[3])
    return None


def _wrapped(text: str, width: int) -> str:
    import textwrap
    return "\n".join(textwrap.wrap(text, width)) or "(empty caption)"


def render(explanation: ImageExplanation, layer_label: str = "mean over layers") -> Any:
    """The figure of one image, laid out like the paper's qualitative figure: the picture, then
    per model a column with the global grid token's map, the global region token's map and
    the caption (with CIDEr-D); references and notes below; optionally per-word strips.
    Axes are labelled `grid:<column>`, `region:<column>`, `word:<row>:<index>` (one word strip
    per row: two views with equal labels, e.g. a model compared with itself, never collide)."""
    pyplot = _pyplot()
    views = explanation.views
    strips = [view for view in views if view.word_maps is not None and len(view.words)]
    columns = 1 + len(views)
    size = views[0].geometry.size or (explanation.picture.size[::-1] if explanation.picture else None)
    panel = PANEL_INCHES * (1.0 if size is None else min(1.0, max(0.5, size[0] / size[1])))   # wide pictures
    heights = [panel, panel, CAPTION_INCHES] + [WORD_INCHES] * len(strips) + [SCALE_INCHES]
    total = sum(heights) + 0.9
    figure = pyplot.figure(figsize=(PANEL_INCHES * columns, total), dpi=DPI)
    layout = figure.add_gridspec(len(heights), columns, height_ratios=heights, hspace=0.3, wspace=0.08,
                                 left=0.3 / (PANEL_INCHES * columns), right=0.98, top=1 - 0.55 / total,
                                 bottom=0.2 / total)
    notes = list(explanation.notes)

    picture_axes = figure.add_subplot(layout[0, 0], label="picture")
    _no_ticks(picture_axes)
    if _canvas(picture_axes, explanation, views[0].geometry) is None:
        picture_axes.text(0.5, 0.5, "no picture", ha="center", va="center", transform=picture_axes.transAxes)
    picture_axes.set_title(_wrapped(explanation.name, 40), fontsize=8)
    for column, view in enumerate(views, start=1):
        grid_axes = figure.add_subplot(layout[0, column], label=f"grid:{column - 1}")
        grid_axes.set_title(f"{view.label}\nglobal grid token, {layer_label} (peak {view.grid_map.max():.3f})",
                            fontsize=7)
        region_axes = figure.add_subplot(layout[1, column], label=f"region:{column - 1}")
        peak = f" (peak {view.region_map.max():.3f})" if len(view.region_map) else " (no regions)"
        region_axes.set_title(f"global region token, {layer_label}{peak}", fontsize=7)
        for problem in (_draw_grid(grid_axes, explanation, view, view.grid_map),
                        _draw_regions(region_axes, explanation, view, view.region_map)):
            if problem and f"{view.label}: {problem}" not in notes:
                notes.append(f"{view.label}: {problem}")
        text_axes = figure.add_subplot(layout[2, column], label=f"caption:{column - 1}")
        text_axes.axis("off")
        score = "" if view.cider is None else f"\nCIDEr-D ×100: {100 * view.cider:.1f}"
        text_axes.text(0, 1, _wrapped(view.caption, 34) + score, va="top", fontsize=9, fontweight="bold",
                       transform=text_axes.transAxes)
    info_axes = figure.add_subplot(layout[1:3, 0], label="references")
    info_axes.axis("off")
    lines = ["references:"] + [f"- {r}" for r in explanation.references] if explanation.references else []
    info_axes.text(0, 1, "\n".join(_wrapped(line, 48) for line in lines + [f"! {n}" for n in notes]),
                   va="top", fontsize=7, transform=info_axes.transAxes)

    slots = max([columns * 2] + [len(view.words) for view in strips])   # one word size for every strip
    for row, view in enumerate(strips, start=3):   # a strip's label is its row (views may be equal)
        strip = layout[row, :].subgridspec(1, slots, wspace=0.05)
        draw = _draw_grid if view.word_source == "grid" else _draw_regions
        for index, (word, weights) in enumerate(zip(view.words, view.word_maps)):
            axes = figure.add_subplot(strip[0, index], label=f"word:{row}:{index}")
            if view.word_source == "grid":
                draw(axes, explanation, view, weights)
            else:
                draw(axes, explanation, view, weights, outline=1)
            axes.set_title(word, fontsize=8)
            _no_ticks(axes)
            if index == 0:
                axes.set_ylabel(f"{view.label}\n{view.word_source} per word", fontsize=7)
    scale = layout[-1, :].subgridspec(3, 3, height_ratios=[0.25, 0.3, 0.45])[1, 1]
    _colour_bar(figure, figure.add_subplot(scale, label="scale"),
                "attention, per map: its lowest to its peak weight", fontsize=7)
    return figure


# ---- the paper's Fig. 6: one table for several pictures -----------------------------------

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


def _colour_bar(figure: Any, axes: Any, label: str, fontsize: float) -> None:
    """The overlay's colours as they look on white, from a map's lowest weight to its peak."""
    from matplotlib import cm, colors

    bar = figure.colorbar(cm.ScalarMappable(colors.Normalize(0, 1), overlay_colormap()), cax=axes,
                          orientation="horizontal")
    bar.set_ticks([0, 1], labels=["lowest", "peak"])
    bar.ax.tick_params(labelsize=fontsize - 1)
    bar.set_label(label, fontsize=fontsize)


def render_paper(explanations: Sequence[ImageExplanation], layer_label: str = "mean over layers") -> Any:
    """The paper's Fig. 6 for two models: a row per picture; columns Image | grid feature map
    of each model | region feature map of each model | text. Axes are labelled `image:<row>`,
    `grid:<row>:<model>`, `region:<row>:<model>`, `text:<row>`."""
    if not explanations or any(len(e.views) != 2 for e in explanations):
        raise UsageError("the paper's figure compares two models: give --compare BASE.pt OURS.pt "
                         "(or --checkpoint with one --compare)")
    pyplot = _pyplot()
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
        _no_ticks(picture)
        if _canvas(picture, explanation, explanation.views[0].geometry) is None:
            picture.text(0.5, 0.5, "no picture", ha="center", va="center", transform=picture.transAxes)
        picture.set_ylabel(_wrapped(explanation.name, 24), fontsize=PAPER_FONT - 1)
        notes = list(explanation.notes)
        for model, view in enumerate(explanation.views):
            grid = figure.add_subplot(layout[row, 1 + model], label=f"grid:{row - 1}:{model}")
            region = figure.add_subplot(layout[row, 3 + model], label=f"region:{row - 1}:{model}")
            for problem in (_draw_grid(grid, explanation, view, view.grid_map),
                            _draw_regions(region, explanation, view, view.region_map, outline=2)):
                if problem and f"{view.label}: {problem}" not in notes:
                    notes.append(f"{view.label}: {problem}")
        _paper_text(figure.add_subplot(layout[row, 5], label=f"text:{row - 1}"),
                    replace(explanation, notes=tuple(notes)))
    for start, kind in ((1, "grid"), (3, "region")):
        scale = layout[-1, start:start + 2].subgridspec(3, 3, height_ratios=[0.3, 0.25, 0.45],
                                                        width_ratios=[0.1, 0.8, 0.1])
        _colour_bar(figure, figure.add_subplot(scale[1, 1], label=f"scale:{kind}"),
                    f"global {kind} token's attention, per map", PAPER_FONT)
    return figure


def write_paper_figure(explanations: Sequence[ImageExplanation], out: str | Path,
                       layer_label: str = "mean over layers") -> tuple[Path, Path]:
    """`out/paper_figure.png` and `.pdf`: the paper-layout table of `explanations`."""
    pyplot = _pyplot()
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


def figure_name(explanation: ImageExplanation, index: int) -> str:
    stem = Path(explanation.name).stem if explanation.image_id is None else str(explanation.image_id)
    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in stem)
    return f"{index:04d}_{safe}.png"


def write_figures(explanations: Sequence[ImageExplanation], out: str | Path,
                  layer_label: str = "mean over layers", paper: bool = False) -> list[Path]:
    """One PNG per image in `out`, and `out/index.html` listing them (sortable by CIDEr-D);
    with `paper`, also the paper-layout figure of them all, linked from the index."""
    pyplot = _pyplot()
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
    paper_figures = write_paper_figure(explanations, out, layer_label) if paper else ()
    write_index(explanations, paths, out / INDEX_FILE, paper_figures)
    return paths


_INDEX_SCRIPT = """
function sortBy(column) {
  const body = document.querySelector('tbody');
  const header = document.querySelectorAll('th')[column];
  const descending = header.dataset.order !== 'desc';
  document.querySelectorAll('th').forEach(th => delete th.dataset.order);
  header.dataset.order = descending ? 'desc' : 'asc';
  const value = row => {
    const text = row.children[column].dataset.sort;
    return text === '' ? -Infinity : Number(text);
  };
  [...body.rows].sort((a, b) => descending ? value(b) - value(a) : value(a) - value(b))
    .forEach(row => body.appendChild(row));
}
"""


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
        "<p><b>All pictures in the paper's layout (Fig. 6):</b> " + " · ".join(
            f"<a href='{escape(p.name)}'>{escape(p.name)}</a>" for p in paper) + "</p>\n")
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>hin explain: {len(rows)} images</title>
<style>
body {{ font-family: sans-serif; margin: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 4px; vertical-align: top; }}
th[onclick] {{ cursor: pointer; text-decoration: underline; }}
th[data-order=desc]::after {{ content: ' ▼'; }} th[data-order=asc]::after {{ content: ' ▲'; }}
img {{ width: 640px; max-width: 60vw; }}
</style>
<script>{_INDEX_SCRIPT}</script></head>
<body><h1>hin explain: {len(rows)} images</h1>
{paper_link}<p>Each figure: the picture, then per model the encoder's global grid token and global region token
attention and the caption. Click a thumbnail to open the full figure, a CIDEr-D heading to sort.</p>
<table><thead><tr>{''.join(header)}</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table></body></html>
"""
    return write_text(path, page)
