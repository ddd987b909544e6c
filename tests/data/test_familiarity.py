"""The 'unlike the training world' rule (hin.data.familiarity): a checkpoint records a profile
of its training pictures' grid features; a picture far from them gets a note, in the served
answer, from `hin caption` and from `hin explain`, once per run."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from helpers.extract_models import write_picture_checkpoint
from hin.cli import main
from hin.data.familiarity import MARGIN, feature_profile, run_note, unfamiliar

pytest.importorskip("transformers")


def test_a_picture_beyond_the_margin_of_the_farthest_training_picture_is_unfamiliar():
    rng = np.random.default_rng(0)
    grids = {i: rng.normal(0, 1, (4, 8)) for i in range(20)}
    profile = feature_profile(list(grids), grids.__getitem__)
    assert profile["training_images"] == 20 and profile["sampled"] == 20
    assert all(unfamiliar(profile, grid) is None for grid in grids.values())
    centre = np.array(profile["centre"])
    direction = np.eye(8)[0]
    inside = centre + 0.99 * MARGIN * profile["largest_distance"] * direction
    outside = centre + 1.01 * MARGIN * profile["largest_distance"] * direction
    assert unfamiliar(profile, np.tile(inside, (4, 1))) is None
    assert "unlike the 20 training pictures" in unfamiliar(profile, np.tile(outside, (4, 1)))
    assert unfamiliar(None, np.tile(outside, (4, 1))) is None      # no record: nothing said
    assert feature_profile([], grids.__getitem__) is None
    assert run_note([None, None]) is None
    assert run_note([None, "far"]).startswith("note: 1 of 2 picture(s) look unlike")


def test_caption_and_explain_say_once_per_run_that_pictures_look_unlike_the_training_world(
        tmp_path, capsys):
    checkpoint, _, _ = write_picture_checkpoint(tmp_path, {"1.png": (40, 40), "2.png": (32, 48)})
    blank = tmp_path / "blank.png"
    Image.new("RGB", (40, 40), (255, 255, 255)).save(blank)
    known = str(tmp_path / "pictures" / "1.png")
    assert main(["caption", "--checkpoint", str(checkpoint), known, "--device", "cpu"]) == 0
    assert "look unlike" not in capsys.readouterr().err
    assert main(["caption", "--checkpoint", str(checkpoint), known, str(blank), str(blank),
                 "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("look unlike") == 1 and "2 of 3 picture(s)" in err
    assert "knows only its training world" in err
    pytest.importorskip("matplotlib")
    assert main(["explain", "--checkpoint", str(checkpoint), known, str(blank), "--device", "cpu",
                 "--out", str(tmp_path / "figures")]) == 0
    err = capsys.readouterr().err
    assert err.count("look unlike") == 1 and "1 of 2 picture(s)" in err
