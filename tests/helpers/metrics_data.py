"""Shared test inputs for the metrics tests: the 1,000 real generated captions of the fixture
and deterministic references built from them (not real COCO references)."""

from __future__ import annotations

import json

from helpers.paths import FIXTURES

FIXTURE = FIXTURES / "captions_val2014_fakecap_results.json"


def fixture_captions() -> dict[int, str]:
    """{image_id: generated caption} for the 1,000 images of the fixture."""
    return {entry["image_id"]: entry["caption"] for entry in json.loads(FIXTURE.read_text())}


def built_references(captions: dict[int, str]) -> dict[int, list[str]]:
    """Five references per image: the captions of the next four images (in id order) and the
    image's own caption with its first " a " turned into " the " - so scores are neither 0
    nor perfect, and the same on every run."""
    ids = sorted(captions)
    return {image_id: [captions[ids[(k + step) % len(ids)]] for step in range(1, 5)]
            + [captions[image_id].replace(" a ", " the ", 1)]
            for k, image_id in enumerate(ids)}
