"""Where HIN looks: the model's attention as maps (maps.py), per image and model the caption
with its maps and CIDEr-D (explanations.py), drawn as figures (figures.py, paper.py) into a
folder with an index page (page.py, from the template index.html).

    from hin.explain import attention_maps
    maps = attention_maps(model, grid, region, tokens)
"""

from hin.explain.explanations import ImageExplanation, ModelView, explain
from hin.explain.figures import MAP_COLORMAP
from hin.explain.maps import AttentionMaps, attention_maps
from hin.explain.page import INDEX_FILE, write_figures
from hin.explain.paper import PAPER_FILE

__all__ = ["INDEX_FILE", "MAP_COLORMAP", "PAPER_FILE", "AttentionMaps", "ImageExplanation", "ModelView",
           "attention_maps", "explain", "write_figures"]
