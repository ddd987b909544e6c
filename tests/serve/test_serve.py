"""`hin serve`'s HTTP API, in process: captions equal the Captioner's, requests are batched
only with equal settings, every bad request gets a 4xx JSON answer and the server goes on,
a checkpoint that cannot caption pictures still serves its page, nothing is loaded from
elsewhere. The model is a tiny random HIN whose recorded extractors (tiny CLIP and DETR)
run on pictures; the real-browser test is test_browser.py."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import re
import signal
import socket
import threading

import numpy as np
import pytest
from PIL import Image

import hin
from helpers.extract_models import write_picture_annotations, write_picture_checkpoint
from helpers.serving import metric, running_server
from helpers.waiting import DEADLINE_S, wait_until
from hin.checkpoint import save
from hin.cli import main
from hin.config import DecodingConfig
from hin.extract import read_attributes
from hin.metrics import collapse_repeats
from hin.serve import ServeSettings, create_app
from hin.serve.batching import DynamicBatcher
from hin.serve.inputs import MAX_PARTS, OPTIONS
from hin.serve.service import dataset_name

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
from fastapi.testclient import TestClient  # noqa: E402

PICTURES = {"COCO_val2014_000000000011.jpg": (40, 60), "12.png": (50, 30), "13.png": (32, 32)}
TEST_PICTURES = ["COCO_val2014_000000000011.jpg", "12.png"]
DEFAULTS = DecodingConfig(beam_size=3, num_captions=1)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A picture-captioning checkpoint trained "from" a data folder whose test split holds
    pictures 11 and 12 (the page's demo pictures), recorded as a path relative to the folder
    training ran in (the checkpoint's)."""
    root = tmp_path_factory.mktemp("serve")
    checkpoint, model, vocab = write_picture_checkpoint(
        root, PICTURES, config={"data": {"annotations": "pictures"}},
        validation={"CIDEr-D": 1.25})
    write_picture_annotations(root / "pictures", TEST_PICTURES)
    return checkpoint, root, model, vocab


@pytest.fixture(scope="module")
def client(served):
    checkpoint, _, _, _ = served
    settings = ServeSettings(checkpoint, decoding=DEFAULTS, device="cpu", max_batch=4,
                             max_wait_ms=5, max_upload_mb=0.05, allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        yield client


def _png(root, name="12.png") -> bytes:
    return (root / "pictures" / name).read_bytes()


def test_captions_equal_the_captioners_for_a_form_and_for_raw_bytes(served, client):
    checkpoint, root, _, _ = served
    expected = hin.Captioner(checkpoint, device="cpu",
                             decoding=DecodingConfig(beam_size=2, num_captions=2))(
        root / "pictures" / "12.png")[0].to_dict()["captions"]
    form = client.post("/v1/captions?beam_size=2", files={"file": ("x.png", _png(root))},
                       data={"num_captions": "2"})
    raw = client.post("/v1/captions?beam_size=2&num_captions=2", content=_png(root),
                      headers={"content-type": "image/png"})
    for response in (form, raw):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["captions"] == expected and len(expected) == 2
        assert answer["decoding"] == {**DEFAULTS.to_dict(), "beam_size": 2, "num_captions": 2}
        assert answer["model"]["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        assert answer["model"]["features"]["grid"]["extractor"] == "clip-grid"
        assert answer["picture"] == {"width": 30, "height": 50, "format": "PNG", "frames": 1}
        assert "explanation" not in answer
    default = client.post("/v1/captions", content=_png(root)).json()
    assert default["decoding"]["beam_size"] == 3 and len(default["captions"]) == 1


def test_decoding_options_reach_the_search_as_the_captioner_takes_them(served, client):
    checkpoint, root, _, _ = served
    sampled = {"sample": True, "num_captions": 4, "seed": 7, "top_p": 0.9, "temperature": 1.5,
               "no_repeat_ngram": 2, "length_penalty": 0.5, "min_len": 2}
    expected = hin.Captioner(checkpoint, device="cpu",
                             decoding=DecodingConfig(beam_size=3, **sampled))(
        root / "pictures" / "12.png")[0].to_dict()["captions"]
    query = "sample&num_captions=4&seed=7&top_p=0.9&temperature=1.5&no_repeat_ngram=2" \
            "&length_penalty=.5&min_len=2"
    for _ in range(2):   # the same seed, the same captions
        answer = client.post(f"/v1/captions?{query}", content=_png(root)).json()
        assert answer["captions"] == expected and len(expected) == 4
        assert answer["decoding"] == {**DEFAULTS.to_dict(), **sampled}
    diverse = client.post("/v1/captions?beam_size=4&diversity_groups=2&diversity_strength=50"
                          "&num_captions=2", files={"file": ("x.png", _png(root))}).json()
    assert diverse["decoding"]["diversity_groups"] == 2 and len(diverse["captions"]) == 2


def _bad_requests(root) -> list[tuple[str, dict, int, str]]:
    """(method, httpx request arguments, expected status, words the error must contain)."""
    png = _png(root)
    return [
        ("POST", {"content": b"this is not a picture"}, 400, "(unsupported format)"),
        ("POST", {"content": png[:len(png) // 2]}, 400, "truncated or corrupt"),
        ("POST", {"content": b""}, 400, "body is empty"),
        ("POST", {"content": b"\0" * 60_000}, 413, "over this server's limit of 0.05 MiB"),
        ("POST", {"files": {"file": ("big.png", b"\0" * 60_000)}}, 413, "--max-upload-mb"),
        ("POST", {"content": png, "params": {"beam": "3"}}, 400, "unknown option(s) 'beam'"),
        ("POST", {"content": png, "params": {"beam_size": "0"}}, 422, "from 1 to 10, got '0'"),
        ("POST", {"content": png, "params": {"beam_size": "11"}}, 422, "from 1 to 10"),
        ("POST", {"content": png, "params": {"beam_size": "9" * 5000}}, 422, "from 1 to 10"),
        ("POST", {"content": png, "params": {"beam_size": "two"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"beam_size": "\u00b2"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"beam_size": "\u0661"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"beam_size": "\uff13"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"beam_size": " 2"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": [("beam_size", "3"), ("beam_size", "4")]}, 400,
         "option 'beam_size' is given twice"),
        ("POST", {"content": png, "params": {"beam_size": "2", "num_captions": "3"}}, 422,
         "num_captions must be from 1 to 2"),
        ("POST", {"content": png, "params": {"explain": "maybe"}}, 400, "true or false"),
        ("POST", {"content": png, "params": {"sample": "maybe"}}, 400, "true or false"),
        ("POST", {"content": png, "params": {"top_p": "0"}}, 422, "top_p must be in (0, 1]"),
        ("POST", {"content": png, "params": {"top_p": "1.5"}}, 422, "top_p must be in (0, 1]"),
        ("POST", {"content": png, "params": {"temperature": "inf"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"temperature": "1e3"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"temperature": "\u0661.5"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"temperature": "0"}}, 422, "temperature must be"),
        ("POST", {"content": png, "params": {"length_penalty": "9" * 5000}}, 400,
         "decimal number in ASCII digits"),
        ("POST", {"content": png, "params": {"diversity_groups": "2"}}, 422,
         "diversity_groups (2) must divide the beam size (3)"),
        ("POST", {"content": png, "params": {"diversity_groups": "4"}}, 422, "from 1 to 3"),
        ("POST", {"content": png, "params": {"seed": "-1"}}, 400, "ASCII digits"),
        ("POST", {"content": png, "params": {"seed": "9" * 20}}, 422, "seed must be from 0"),
        ("POST", {"content": png, "params": {"min_len": "20"}}, 422, "from 0 to 19"),
        ("POST", {"content": png, "params": {"sample": "", "num_captions": "11"}}, 422,
         "num_captions must be from 1 to 10"),
        ("POST", {"content": png, "params": [("top_k", "3"), ("top_k", "3")]}, 400,
         "option 'top_k' is given twice"),
        ("POST", {"files": {"file": ("a.png", png)},
                  "data": {f"field{i}": "x" for i in range(7)}}, 400,
         "unknown option(s) 'field0', 'field1', 'field2' and 4 more"),
        ("POST", {"files": {"file": ("a.png", png)},
                  "data": {f"field{i}": "x" for i in range(150)}}, 400,
         f"more than {MAX_PARTS} parts"),
        ("POST", {"files": [("file", ("a.png", png)), ("file", ("b.png", png))]}, 400,
         "carries 2 files"),
        ("POST", {"files": {"file": ("a.png", png)}, "data": {"beam_size": "2"},
                  "params": {"beam_size": "2"}}, 400, "option 'beam_size' is given twice"),
        ("POST", {"data": {"beam_size": "2"}}, 415, "url-encoded form cannot carry a picture"),
        ("GET", {}, 405, "Method Not Allowed"),
        ("PUT", {"content": png}, 405, "Method Not Allowed"),
    ]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bad_requests_get_a_json_error_and_the_server_goes_on(served, client, monkeypatch):
    _, root, _, _ = served
    good = client.post("/v1/captions", content=_png(root)).json()["captions"]
    for method, arguments, status, words in _bad_requests(root):
        response = client.request(method, "/v1/captions", **arguments)
        assert response.status_code == status, (method, arguments.keys(), response.text)
        assert words in response.json()["detail"]
        after = client.post("/v1/captions", content=_png(root))
        assert after.status_code == 200 and after.json()["captions"] == good
    # One limit, hin's, in hin's words: over twice Pillow's own guard (where Pillow refuses
    # before hin sees the size) and over it (where Pillow only warns).
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    monkeypatch.setenv("HIN_MAX_PIXELS", "1000")
    for side in (50, 40):
        buffer = io.BytesIO()
        Image.new("RGB", (side, side)).save(buffer, format="PNG")
        response = client.post("/v1/captions", content=buffer.getvalue())
        assert response.status_code == 400
        assert "over the limit of 1,000" in response.json()["detail"]
        assert "HIN_MAX_PIXELS" in response.json()["detail"]
        assert "decompression bomb" not in response.json()["detail"].lower()
    monkeypatch.setenv("HIN_MAX_PIXELS", "5000")     # raising hin's limit is all it takes
    assert client.post("/v1/captions", content=buffer.getvalue()).status_code == 200
    monkeypatch.undo()
    assert client.post("/v1/captions", content=_png(root)).json()["captions"] == good
    assert client.get("/healthz").json() == {"status": "ok", "can_caption": True}


def test_concurrent_requests_are_batched_with_equal_settings_only(served):
    checkpoint, root, _, _ = served
    settings = ServeSettings(checkpoint, decoding=DEFAULTS, device="cpu", max_batch=4,
                             max_wait_ms=1000, allow_hosts=("hin",))
    app = create_app(settings)
    names = ["12.png", "13.png", "COCO_val2014_000000000011.jpg", "12.png", "13.png", "12.png"]
    beams = [3, 3, 3, 3, 2, 2]

    async def send_all():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hin") as client:
            return await asyncio.gather(*(
                client.post("/v1/captions", params={"beam_size": beam}, content=_png(root, name))
                for name, beam in zip(names, beams)))

    answers = asyncio.run(send_all())
    assert sorted(app.state.service.batcher.batch_sizes) == [2, 4]
    for name, beam, answer in zip(names, beams, answers):
        alone = hin.Captioner(checkpoint, device="cpu",
                              decoding=DecodingConfig(beam_size=beam))(root / "pictures" / name)
        assert answer.json()["captions"] == alone[0].to_dict()["captions"]
    app.state.service.close()


def test_batcher_groups_by_key_caps_batches_and_survives_a_failing_batch():
    started, release = threading.Event(), threading.Event()
    seen = []

    def run(key, items):
        if key == "slow":
            started.set()
            release.wait(DEADLINE_S)
        if key == "broken":
            raise ValueError("this batch fails")
        seen.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    batcher = DynamicBatcher(run, max_batch=3, max_wait_s=0.0)
    slow = batcher.submit("slow", 0)
    assert started.wait(DEADLINE_S)     # while the worker is busy, the next requests gather
    futures = [batcher.submit(key, i) for i, key in enumerate("aabaaab", start=1)]
    broken = batcher.submit("broken", 9)
    release.set()
    assert slow.result(DEADLINE_S) == "slow:0"
    assert [f.result(DEADLINE_S) for f in futures] == ["a:1", "a:2", "b:3", "a:4", "a:5", "a:6", "b:7"]
    with pytest.raises(ValueError, match="this batch fails"):
        broken.result(DEADLINE_S)
    assert seen[1:] == [("a", [1, 2, 4]), ("b", [3, 7]), ("a", [5, 6])]
    assert batcher.submit("a", 10).result(DEADLINE_S) == "a:10"
    batcher.close()
    assert batcher.batch_sizes == [1, 3, 2, 2, 1, 1]


def test_the_batcher_gathers_requests_within_max_wait_and_runs_a_lone_one():
    batcher = DynamicBatcher(lambda key, items: items, max_batch=8, max_wait_s=0.3)
    first, second = batcher.submit("k", 1), batcher.submit("k", 2)
    assert (first.result(DEADLINE_S), second.result(DEADLINE_S)) == (1, 2)
    assert batcher.submit("k", 3).result(DEADLINE_S) == 3      # alone: runs once max_wait has passed
    batcher.close()
    assert batcher.batch_sizes == [2, 1]


def test_explain_returns_the_best_captions_maps_with_their_geometry(served, client):
    _, root, model, vocab = served
    response = client.post("/v1/captions?explain=true&num_captions=2",
                           files={"file": ("p.jpg", _png(root, "COCO_val2014_000000000011.jpg"))})
    assert response.status_code == 200, response.text
    answer = response.json()
    explanation = answer["explanation"]
    words = explanation["words"]
    # the maps are the best caption's, word for word: shown as a caption, they are its text
    assert words and collapse_repeats(vocab.decode(vocab.index(word) for word in words)) \
        == answer["captions"][0]["caption"]
    layers, cells = model.config.num_layers, 16            # tiny CLIP: 32 px, 8 px patches
    assert explanation["layers"] == layers
    assert np.array(explanation["encoder_grid"]).shape == (layers, cells)
    assert np.array(explanation["encoder_grid"]).sum(-1) == pytest.approx(np.ones(layers), abs=1e-3)
    regions = len(explanation["regions"]["boxes"])
    assert 1 <= regions <= 4
    assert np.array(explanation["encoder_region"]).shape == (layers, regions)
    assert np.array(explanation["decoder_grid"]).shape == (layers, len(words), cells)
    assert np.array(explanation["decoder_region"]).shape == (layers, len(words), regions)
    assert np.array(explanation["decoder_gate"]).shape == (layers, len(words))
    # a 60x40 picture: CLIP resizes it to 48x32 and crops the centre 32x32 -> x from 10 to 50
    assert explanation["grid"] == {"rows": 4, "cols": 4, "box": [10.0, 0.0, 50.0, 40.0]}
    assert explanation["missing"] == []


def test_a_checkpoint_that_cannot_caption_pictures_serves_the_page_with_the_reason(served,
                                                                                   tmp_path):
    _, root, model, vocab = served
    features = {"grid": read_attributes(root / "grid.h5"),
                "region": {"extractor": "vinvl-tsv", "feature_dim": 32}}
    checkpoint = save(tmp_path / "vinvl.pt", model, vocabulary=vocab.to_dict(), features=features)
    with TestClient(create_app(ServeSettings(checkpoint, device="cpu", allow_hosts=("testserver",)))) as client:
        assert client.get("/").status_code == 200
        info = client.get("/v1/info").json()
        assert info["can_caption"] is False and "VinVL region features" in info["unavailable"]
        assert info["demo_pictures"] == []
        assert client.get("/healthz").json() == {"status": "ok", "can_caption": False}
        refused = client.post("/v1/captions", content=_png(root))
        assert refused.status_code == 503
        assert "cannot caption pictures" in refused.json()["detail"]
        assert "--extractor vinvl-x152c4" in refused.json()["detail"]


def test_the_page_and_docs_load_nothing_from_elsewhere(client):
    """...and every URL they use is relative (the page works behind a path prefix), with no
    inline script or style (a strict Content-Security-Policy holds)."""
    page = client.get("/")
    assert page.status_code == 200 and "<title>HIN picture captions</title>" in page.text
    local = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert set(local) >= {"static/app.js", "static/style.css", "docs"}
    for path in ["/", "/docs", "/static/app.js", "/static/view.js", "/static/style.css",
                 "/static/docs.js"]:
        text = client.get(path).text
        assert not re.search(r"(?:src|href)=\"(?:https?:)?//|url\(|https?://(?!127)", text), path
        assert not re.search(r"(?:src|href)=\"/|fetch\(\"/|`/|import\s(?!\{[^}]*\} from \"\./)",
                             text), path
        assert not re.search(r"<script(?![^>]*\ssrc=)|<style|\sstyle=|\son[a-z]+=", text), path
    spec = client.get("/openapi.json").json()
    parameters = {p["name"] for p in spec["paths"]["/v1/captions"]["post"]["parameters"]}
    assert parameters == set(OPTIONS) >= {"beam_size", "num_captions", "explain", "sample", "top_p"}
    assert "multipart/form-data" in spec["paths"]["/v1/captions"]["post"]["requestBody"]["content"]
    assert client.get("/docs").status_code == 200


def test_demo_pictures_are_the_test_splits_served_by_index(served, client):
    """The split files hold caption ids (1000..), mapped to image ids by the annotations, and
    the data folder is found from the checkpoint, not from the server's working folder."""
    _, root, _, _ = served
    info = client.get("/v1/info").json()
    assert info["demo_pictures"] == TEST_PICTURES
    assert client.get("/v1/demo/1").content == _png(root)
    missing = client.get("/v1/demo/2")
    assert missing.status_code == 404 and "no demo picture 2" in missing.json()["detail"]
    for path in ["/v1/demo/..%2F..%2Ftiny.pt", "/v1/demo/-1", "/static/../tiny.pt",
                 "/static/..%2F..%2F..%2Ftiny.pt"]:
        refused = client.get(path)
        assert refused.status_code == 404 and "detail" in refused.json(), path


def test_uploads_are_kept_only_when_asked(served, tmp_path):
    checkpoint, root, _, _ = served
    kept = tmp_path / "kept"
    settings = ServeSettings(checkpoint, device="cpu", keep_uploads=kept, max_wait_ms=0,
                             allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        assert client.post("/v1/captions", content=_png(root)).status_code == 200
        assert client.post("/v1/captions", content=b"not a picture").status_code == 400
    digest = hashlib.sha256(_png(root)).hexdigest()
    assert [path.name for path in kept.iterdir()] == [f"{digest}.png"]


def test_hin_serve_refuses_bad_flags_in_one_line(served, tmp_path, capsys):
    checkpoint, _, _, _ = served
    assert main(["serve", "--checkpoint", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--max-batch", "0"]) == 2
    assert "hin serve: error: --max-batch must be from 1 to 1024, got 0" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--beam", "12"]) == 2
    assert "--beam 12 is over the server's limit of 10" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(checkpoint), "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_a_bare_explain_flag_is_true_and_explain_false_is_false(served, client):
    _, root, _, _ = served
    bare = client.post("/v1/captions?explain", content=_png(root))
    off = client.post("/v1/captions?explain=false", content=_png(root))
    assert off.status_code == 200 and "explanation" not in off.json()
    assert bare.status_code == 200 and "words" in bare.json()["explanation"]


def test_the_answer_says_what_the_model_knows_and_flags_a_picture_unlike_its_training(
        served, client):
    _, root, _, _ = served
    training = client.get("/v1/info").json()["model"]["training"]
    assert training == {"dataset": "pictures", "images": 3, "vocabulary_size": 9,
                        "extractors": {"grid": {"extractor": "clip-grid",
                                                "model": str(root / "clip")},
                                       "region": {"extractor": "detr", "model": str(root / "detr")}},
                        "validation_cider_d": 125.0, "familiarity_check": True}   # x100
    familiar = client.post("/v1/captions", content=_png(root)).json()
    assert familiar["unfamiliar"] is None
    buffer = io.BytesIO()
    Image.new("RGB", (30, 50), (255, 255, 255)).save(buffer, format="PNG")    # a blank page
    blank = client.post("/v1/captions", content=buffer.getvalue()).json()
    assert "looks unlike the 3 training pictures" in blank["unfamiliar"]
    assert "knows only its training world" in blank["unfamiliar"]


def _post_from(client, host: str, origin: str | None = None, root=None):
    headers = {"host": host, **({"origin": origin} if origin else {})}
    return client.post("/v1/captions", content=_png(root), headers=headers)


def test_foreign_hosts_and_cross_site_posts_are_refused_unless_allowed(served):
    """DNS rebinding (Host: evil.example) and a page on another site posting to 127.0.0.1
    get 403; the server's own page, localhost names and clients without Origin work."""
    checkpoint, root, _, _ = served
    settings = ServeSettings(checkpoint, device="cpu", host="127.0.0.1", port=8000,
                             max_wait_ms=0)
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as client:
        for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000"):
            assert _post_from(client, host, root=root).status_code == 200, host
        assert _post_from(client, "127.0.0.1:8000", "http://127.0.0.1:8000", root).status_code == 200
        assert client.head("/").status_code == 200
        rebinding = client.get("/v1/info", headers={"host": "evil.example:8000"})
        assert rebinding.status_code == 403
        assert "--allow-host evil.example" in rebinding.json()["detail"]
        cross_site = _post_from(client, "127.0.0.1:8000", "http://evil.example", root)
        assert cross_site.status_code == 403
        assert "--allow-origin http://evil.example" in cross_site.json()["detail"]
        assert _post_from(client, "127.0.0.1:8000", "null", root).status_code == 403
    allowed = ServeSettings(checkpoint, device="cpu", max_wait_ms=0, allow_hosts=("evil.example",),
                            allow_origins=("http://evil.example",))
    with TestClient(create_app(allowed), base_url="http://127.0.0.1:8000") as client:
        assert _post_from(client, "evil.example", "http://evil.example", root).status_code == 200
        assert _post_from(client, "127.0.0.1:8000", "http://other.example", root).status_code == 403


def test_a_wildcard_bind_answers_ip_addresses_and_this_machines_name_only():
    from hin.serve.guard import HostAndOriginGuard

    guard = HostAndOriginGuard(None, bound_host="0.0.0.0")
    assert guard.refusal("GET", {"host": "192.168.1.20:8000"}) is None
    assert guard.refusal("GET", {"host": "[fe80::1]:8000"}) is None
    assert guard.refusal("GET", {"host": "localhost"}) is None
    assert "not a name this server answers to" in guard.refusal("GET", {"host": "evil.example"})
    assert guard.refusal("GET", {"host": "evil.example", "origin": "http://x"}) is not None
    assert guard.refusal("GET", {"host": "10.0.0.1", "origin": "http://x"}) is None   # GET: read only
    assert HostAndOriginGuard(None, bound_host="127.0.0.1", allow_hosts=["*"]).refusal(
        "GET", {"host": "anything.example"}) is None


def test_admission_refuses_past_the_queue_and_the_pixel_budget_with_retry_after(served):
    checkpoint, root, _, _ = served
    settings = ServeSettings(checkpoint, device="cpu", max_wait_ms=0, max_queue=1,
                             max_pixels_in_flight=2000, allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        admission = client.app.state.service.admission
        admission.reserve(1000)                          # another picture being decoded
        busy = client.post("/v1/captions", content=_png(root))          # 30x50 = 1500 pixels
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "--max-pixels-in-flight" in busy.json()["detail"]
        admission.release(1000)
        assert client.post("/v1/captions", content=_png(root)).status_code == 200
        assert admission.pixels == 0 and admission.requests == 0
        too_big = client.post("/v1/captions", content=_png(root, "COCO_val2014_000000000011.jpg"))
        assert too_big.status_code == 400 and "2,400 pixels" in too_big.json()["detail"]
        with admission.request():                        # the queue's one place is taken
            full = client.post("/v1/captions", content=_png(root))
        assert full.status_code == 429 and full.headers["retry-after"] == "1"
        assert "--max-queue" in full.json()["detail"]
        assert client.post("/v1/captions", content=b"junk").status_code == 400
        assert admission.pixels == 0 and admission.requests == 0


def test_a_decoding_job_cancelled_before_it_ran_gives_its_pixels_back(served):
    """A client that goes away while its picture waits for the pool must not keep the pixel
    budget (the server would answer 503 for good)."""
    checkpoint, root, _, _ = served
    service = create_app(ServeSettings(checkpoint, device="cpu", decode_workers=1)).state.service
    blocker = threading.Event()
    try:
        busy = service.pool.submit(blocker.wait, 30)        # the pool's one worker is taken
        service.admission.reserve(1500)
        waiting = service.prepare(_png(root), 1500)
        assert waiting.cancel()
        assert service.admission.pixels == 0
    finally:
        blocker.set()
        busy.result(30)
        service.close()


def test_pictures_are_decoded_off_the_batching_thread_and_a_slow_one_delays_no_other(
        served, monkeypatch):
    """While one picture is stuck decoding, another is captioned."""
    import hin.serve.service as service_module

    checkpoint, root, _, _ = served
    decoding_threads, stuck, release = [], threading.Event(), threading.Event()
    real_decode = service_module.decode_picture

    def decode(data):
        decoding_threads.append(threading.current_thread().name)
        if data == _png(root, "13.png"):
            stuck.set()
            assert release.wait(30)
        return real_decode(data)

    monkeypatch.setattr(service_module, "decode_picture", decode)
    app = create_app(ServeSettings(checkpoint, device="cpu", max_wait_ms=0, allow_hosts=("hin",)))

    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hin") as client:
            slow = asyncio.create_task(client.post("/v1/captions", content=_png(root, "13.png")))
            await asyncio.to_thread(stuck.wait, 30)
            quick = await client.post("/v1/captions", content=_png(root))
            assert quick.status_code == 200 and not slow.done()
            release.set()
            assert (await slow).status_code == 200

    asyncio.run(send())
    app.state.service.close()
    assert len(decoding_threads) == 2
    assert all(name.startswith("hin-decode") for name in decoding_threads)


def test_the_api_description_types_every_answer_and_errors_are_one_string(client):
    spec = client.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    answer = schemas["CaptionsAnswer"]["properties"]
    assert set(answer) == {"captions", "unfamiliar", "decoding", "model", "picture", "preview",
                           "explanation"}
    assert set(schemas["Explanation"]["properties"]) >= {"words", "encoder_grid", "grid", "regions"}
    assert set(schemas["Picture"]["properties"]) == {"width", "height", "format", "frames"}
    post = spec["paths"]["/v1/captions"]["post"]["responses"]
    assert post["200"]["content"]["application/json"]["schema"]["$ref"].endswith("/CaptionsAnswer")
    for status in ("400", "403", "408", "413", "429", "503"):
        assert post[status]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorAnswer")
    demo = spec["paths"]["/v1/demo/{index}"]["get"]["responses"]["200"]["content"]
    assert list(demo) == ["image/*"]
    info = spec["paths"]["/v1/info"]["get"]["responses"]["200"]["content"]["application/json"]
    assert info["schema"]["$ref"].endswith("/Info")
    for path, status in (("/v1/demo/abc", 404), ("/nowhere", 404), ("/v1/info?x=1", 200)):
        response = client.get(path)
        assert response.status_code == status
        if status != 200:
            assert isinstance(response.json()["detail"], str), path
    assert client.head("/").status_code == 200
    icon = client.get("/favicon.ico")
    assert icon.status_code == 200 and icon.headers["content-type"].startswith("image/svg+xml")


def test_hin_serve_refuses_a_bad_port_and_a_taken_port_before_loading_the_model(
        served, tmp_path, capsys):
    checkpoint, _, _, _ = served
    assert main(["serve", "--checkpoint", str(checkpoint), "--port", "70000"]) == 2
    assert "--port must be from 0 to 65535, got 70000" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        missing = tmp_path / "not-loaded.pt"     # a model that would fail to load: never reached
        assert main(["serve", "--checkpoint", str(missing), "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert f"cannot listen on 127.0.0.1 port {port}" in err and "--port" in err
    for flag, value in (("--max-pixels-in-flight", "0"), ("--max-queue", "0"),
                        ("--decode-workers", "0"), ("--shutdown-timeout", "0")):
        assert main(["serve", "--checkpoint", str(checkpoint), flag, value]) == 2
        assert flag in capsys.readouterr().err


def _sideways_photo(stored=(600, 512)) -> bytes:
    """A JPEG stored 600x512 whose EXIF orientation (6: turn 90 degrees clockwise) makes it
    512x600 upright, as a phone writes it."""
    pixels = np.zeros((stored[1], stored[0], 3), np.uint8)
    pixels[:, : stored[0] // 3] = (220, 30, 30)                  # a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=80, exif=exif)
    return buffer.getvalue()


def test_a_phone_photo_is_read_upright_and_its_boxes_are_in_upright_pixels(served):
    checkpoint, _, _, _ = served
    settings = ServeSettings(checkpoint, device="cpu", max_wait_ms=0, allow_hosts=("testserver",))
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/captions?explain=true", content=_sideways_photo())
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["picture"] == {"width": 512, "height": 600, "format": "JPEG", "frames": 1}
    explanation = answer["explanation"]
    x1, y1, x2, y2 = explanation["grid"]["box"]
    assert (x1, x2) == (0.0, 512.0) and 0 < y1 < y2 < 600    # CLIP's centre square, upright
    for bx1, by1, bx2, by2 in explanation["regions"]["boxes"]:
        assert -1 <= bx1 <= bx2 <= 513 and -1 <= by1 <= by2 <= 601


def _trickle(url: str, declared: int = 100_000) -> socket.socket:
    """A client that announces a body and sends one byte of it."""
    host, port = url.removeprefix("http://").split(":")
    client = socket.create_connection((host, int(port)))
    client.sendall(f"POST /v1/captions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: "
                   f"image/png\r\nContent-Length: {declared}\r\n\r\nx".encode())
    return client


def test_a_body_slower_than_the_body_timeout_is_refused_408(served):
    checkpoint, root, _, _ = served
    app = create_app(ServeSettings(checkpoint, device="cpu", body_timeout_s=0.5,
                                   allow_hosts=("hin",)))

    async def trickle():
        yield b"x"
        await asyncio.Event().wait()        # the rest never comes
        yield b"y"

    async def send():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hin") as client:
            return await asyncio.wait_for(client.post("/v1/captions", content=trickle()),
                                          DEADLINE_S)

    answer = asyncio.run(send())
    assert answer.status_code == 408 and "--body-timeout" in answer.json()["detail"]
    app.state.service.close()


def test_a_client_trickling_its_body_cannot_hold_up_shutdown(served):
    """The server exits 0 while a body it may wait 600 s for is still one byte in."""
    checkpoint, _, _, _ = served
    with running_server(checkpoint, "--body-timeout", "600", "--shutdown-timeout", "1") as (
            url, server):
        with _trickle(url):
            wait_until(lambda: metric(url, "hin_requests_in_progress") == 1,
                       "the trickled request to be in progress")
            server.send_signal(signal.SIGTERM)
            assert server.wait(DEADLINE_S) == 0


def test_the_data_set_is_named_without_the_training_machines_folders():
    assert dataset_name("/home/alice/projects/coco/annotations") == "coco/annotations"
    assert dataset_name("pictures") == "pictures"
    assert dataset_name(None) is None


@pytest.mark.parametrize("size, mode, kind, preview_size", [
    ((30, 20), "RGBA", "TIFF", (30, 20)),           # small: as read (on white), lossless
    ((4000, 50), "RGB", "PNG", (640, 32)),          # long: fits 640, a short side of 32, not 8
    ((20, 1900), "RGB", "PNG", (20, 640)),          # tall: its own short side, not 7
    ((1200, 900), "RGB", "JPEG", (640, 480)),       # a photo: JPEG, the aspect kept
])
def test_each_answer_carries_a_preview_of_the_picture_as_the_model_read_it(
        client, size, mode, kind, preview_size):
    """A page that cannot draw the upload (a TIFF in a browser) draws this preview instead."""
    pixels = np.zeros((size[1], size[0], len(mode)), np.uint8)
    pixels[..., 0] = 200                                   # red; transparent in RGBA
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=kind)
    response = client.post("/v1/captions", content=buffer.getvalue())
    assert response.status_code == 200, response.text
    header, data = response.json()["preview"].split(",", 1)
    lossless = preview_size[0] * preview_size[1] <= 256 * 256
    assert header == ("data:image/png;base64" if lossless else "data:image/jpeg;base64")
    with Image.open(io.BytesIO(base64.b64decode(data))) as preview:
        assert preview.size == preview_size and preview.mode == "RGB"
        expected = (255, 255, 255) if mode == "RGBA" else (200, 0, 0)
        assert np.abs(np.asarray(preview, np.int16)[preview_size[1] // 2, preview_size[0] // 2]
                      - expected).max() <= 8
