"""Whether a picture looks like the pictures a model was trained on, by its grid features.

A model knows only its training world: given a photo, a model of the synthetic shapes world
still names shapes and colours. Training records a profile of its pictures in every
checkpoint (`extra["feature_profile"]`): the number of training images and, over an evenly
spaced sample of at most PROFILE_IMAGES of them, each picture's mean grid feature (the
average over its cells), their centre, and the largest distance of a sampled picture from
that centre. A picture is *unfamiliar* when its mean grid feature lies farther from the
centre than MARGIN times that largest distance.

What this detects, honestly: pictures whose overall appearance, as the grid extractor sees
it, is unlike every sampled training picture (a photo to the shapes world, noise, a blank
page). It does not detect a picture that looks typical on average but shows things the
captions never named, and it says nothing about whether a caption is right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

PROFILE_IMAGES = 256
MARGIN = 1.5


def feature_profile(image_ids: Sequence[int],
                    grid_of: Callable[[int], np.ndarray]) -> dict[str, Any] | None:
    """The profile of a training split (see the module docstring); `grid_of(id)` -> [Ng, Dg].
    None for a split without images (training refuses those anyway)."""
    if not image_ids:
        return None
    sample = [image_ids[i] for i in np.linspace(0, len(image_ids) - 1,
                                                 min(PROFILE_IMAGES, len(image_ids))).astype(int)]
    means = np.stack([np.asarray(grid_of(image_id), np.float32).mean(0) for image_id in sample])
    centre = means.mean(0)
    return {"training_images": len(image_ids), "sampled": len(sample),
            "centre": centre.tolist(),
            "largest_distance": float(np.linalg.norm(means - centre, axis=1).max())}


def unfamiliar(profile: dict[str, Any] | None, grid: np.ndarray) -> str | None:
    """Why this picture's grid features [Ng, Dg] look unlike the training pictures', or None
    (also None when the checkpoint records no profile: nothing can be said then)."""
    if not profile:
        return None
    distance = float(np.linalg.norm(np.asarray(grid, np.float32).mean(0)
                                    - np.asarray(profile["centre"], np.float32)))
    largest = profile["largest_distance"]
    if distance <= MARGIN * largest:
        return None
    return (f"this picture looks unlike the {profile['training_images']} training pictures "
            f"(its mean grid feature is {distance:.3g} from theirs; the farthest of "
            f"{profile['sampled']} sampled training pictures is {largest:.3g}): the captions "
            "come from a model that knows only its training world")


def run_note(notes: Sequence[str | None]) -> str | None:
    """One line for a whole run (`hin caption`, `hin explain`): how many of its pictures look
    unlike the training pictures, or None when none does."""
    flagged = sum(1 for note in notes if note)
    if not flagged:
        return None
    return (f"note: {flagged} of {len(notes)} picture(s) look unlike the training pictures "
            f"(their mean grid feature lies over {MARGIN}x farther from the training pictures' "
            "than any sampled training picture's): the captions come from a model that knows "
            "only its training world")
