"""The one rule for pictures an extractor cannot resize: every extractor's `preprocess` plans
its resize, then asks `check_resized` before resizing anything.

A picture so long or tall that the extractor's resize would give a side of 0 pixels (DETR
and VinVL cap the long side, so the short side shrinks with the ratio), or a resized
picture over hin's pixel limit (CLIP sets the short side, so the long side grows with the
ratio), is refused with `PictureShapeError`, a `PictureError`: every reader reports it as
it reports a picture it cannot read (caption and extract list it and go on, serve answers
422). The message names the picture's size, what the resize would make of it and the
largest ratio of long side to short side the extractor takes. `preprocess` does not know
the picture's name; whoever does gives it with `named`.
"""

from __future__ import annotations

from dataclasses import dataclass

from hin.extract.images import MAX_PIXELS_ENV, PictureError, max_pixels


@dataclass(frozen=True)
class Resize:
    """What an extractor's resize would make of one picture."""

    extractor: str              # as users know it: "DETR", "CLIP", "VinVL"
    width: int                  # of the picture
    height: int
    resized_width: int
    resized_height: int
    max_ratio: int              # the extractor takes pictures under max_ratio:1


class PictureShapeError(PictureError):
    """A picture the extractor's resize cannot take (see the module docstring)."""

    def __init__(self, resize: Resize, limit: int, name: str = "the picture") -> None:
        self.resize, self.limit, self.name = resize, limit, name
        r = resize
        short = min(r.resized_width, r.resized_height)
        if short < 1:
            what = f"its short side would be {short} pixels"
        else:
            what = (f"it would be {r.resized_width:,}x{r.resized_height:,} pixels, over the "
                    f"limit of {limit:,} (${MAX_PIXELS_ENV})")
        super().__init__(f"{name} is {r.width}x{r.height} pixels: after resizing for "
                         f"{r.extractor} {what}; crop it or pad it to less than "
                         f"{r.max_ratio:,}:1 (long side to short side)")

    def named(self, name: str) -> PictureShapeError:
        """The same refusal, naming the picture (a path, "the upload")."""
        return PictureShapeError(self.resize, self.limit, name)


def check_resized(resize: Resize) -> None:
    """Refuse (PictureShapeError) a resize with a side under 1 pixel or over hin's pixel
    limit (`max_pixels`, what a picture may decode to)."""
    limit = max_pixels()
    if min(resize.resized_width, resize.resized_height) < 1 or (
            resize.resized_width * resize.resized_height > limit):
        raise PictureShapeError(resize, limit)
