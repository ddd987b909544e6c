"""VinVL's test-time picture preparation, as the original computes it.

The shorter side becomes 600 unless the longer would then exceed 1000, in which case the
shorter becomes round(1000 x short / long) (Python's round); the longer side is
int(size x long / short), product first. Resampling is Pillow's bilinear filter (which
antialiases when shrinking, unlike `torch.nn.functional.interpolate`). The network input is
the picture in B, G, R order, in 0..255, minus the mean [103.53, 116.28, 123.675], with no
division. EXIF orientation is the caller's business (hin's picture reader applies its rule).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from hin.extract.resize import Resize, check_resized

MIN_SIZE = 600
MAX_SIZE = 1000
PIXEL_MEAN_BGR = (103.53, 116.28, 123.675)


def resized_size(width: int, height: int, min_size: int = MIN_SIZE,
                 max_size: int = MAX_SIZE) -> tuple[int, int]:
    """(height, width) of the network input for a `width` x `height` picture."""
    size = min_size
    short, long = float(min(width, height)), float(max(width, height))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


@dataclass(frozen=True)
class VinVLPicture:
    """A picture resized for the detector, and the size it had (to map boxes back)."""

    pixels: np.ndarray          # uint8 [h, w, 3], RGB, resized
    height: int                 # of the original picture
    width: int


def prepare(picture: Image.Image) -> VinVLPicture:
    """Any picture -> the resized RGB pixels the detector reads (picklable, for workers).
    A picture so elongated that the rule gives a side of 0 pixels (2000:1 or more; the
    original fails on it) is refused by `hin.extract.resize`'s rule."""
    height, width = resized_size(picture.width, picture.height)
    check_resized(Resize("VinVL", picture.width, picture.height, width, height, 2 * MAX_SIZE))
    picture = picture if picture.mode == "RGB" else picture.convert("RGB")   # read pictures are RGB
    resized = picture if (width, height) == picture.size else picture.resize(
        (width, height), Image.Resampling.BILINEAR)
    return VinVLPicture(np.asarray(resized, dtype=np.uint8).copy(), picture.height,
                        picture.width)


def network_input(pixels: np.ndarray) -> torch.Tensor:
    """uint8 RGB [h, w, 3] -> float32 [3, h, w]: BGR, 0..255, minus the mean."""
    bgr = torch.from_numpy(np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1)))
    mean = torch.tensor(PIXEL_MEAN_BGR, dtype=torch.float32).view(3, 1, 1)
    return bgr.float() - mean
