"""What names an image in every metric: its own module, so that the COCO metrics and the fast
CIDEr-D share it without importing each other (CIDEr-D uses the COCO tokenizer)."""

from collections.abc import Hashable
from typing import TypeVar

ImageId = TypeVar("ImageId", bound=Hashable)    # whatever names the images: COCO ids, file names
