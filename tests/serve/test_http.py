"""`hin serve`'s HTTP envelope, in process: CORS for --allow-origin pages only, forwarded
headers believed only from --forwarded-allow-ips, --root-path, security headers, request
ids, the access log, /metrics, /readyz, the body budget, strict paths and the refusals
that say how to fix a request. The real server's connection handling is
test_server.py."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
from PIL import Image

from helpers.extract_models import write_picture_annotations, write_picture_checkpoint
from helpers.waiting import DEADLINE_S
from hin.cli import main
from hin.config import DecodingConfig
from hin.serve import ServeSettings, create_app
from hin.serve.inputs import MAX_PARTS

pytest.importorskip("transformers")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

PICTURES = {"11.png": (40, 60), "12.png": (50, 30)}
DEFAULTS = DecodingConfig(beam_size=3, num_captions=1)
STATIC = Path(__file__).parents[2] / "src" / "hin" / "serve" / "static"
DOCS = Path(__file__).parents[2] / "docs" / "serving.md"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-http")
    checkpoint, _, _ = write_picture_checkpoint(root, PICTURES,
                                                config={"data": {"annotations": "pictures"}})
    write_picture_annotations(root / "pictures", ["11.png", "12.png"])
    return checkpoint, (root / "pictures" / "12.png").read_bytes()


def _client(checkpoint, client=("testclient", 50000), base_url="http://testserver", **changes):
    settings = ServeSettings(checkpoint, decoding=DEFAULTS, device="cpu", max_wait_ms=0,
                             **{"allow_hosts": ("testserver",), **changes})
    return TestClient(create_app(settings), client=client, base_url=base_url)


@pytest.fixture(scope="module")
def client(served):
    with _client(served[0], allow_origins=("https://app.example",)) as client:
        yield client


def test_cors_answers_allowed_origins_preflight_included_and_no_other(served, client):
    _, png = served
    preflight = client.options("/v1/captions", headers={
        "origin": "https://app.example", "access-control-request-method": "POST",
        "access-control-request-headers": "content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "content-type" in preflight.headers["access-control-allow-headers"]
    posted = client.post("/v1/captions", content=png, headers={"origin": "https://app.example"})
    assert posted.status_code == 200
    assert posted.headers["access-control-allow-origin"] == "https://app.example"
    assert "x-request-id" in posted.headers["access-control-expose-headers"]
    foreign = client.options("/v1/captions", headers={
        "origin": "https://evil.example", "access-control-request-method": "POST"})
    assert foreign.status_code == 403 and "--allow-origin" in foreign.json()["detail"]
    assert "access-control-allow-origin" not in foreign.headers
    read = client.get("/v1/info", headers={"origin": "https://evil.example"})
    assert read.status_code == 200 and "access-control-allow-origin" not in read.headers
    own = client.get("/v1/info")
    assert "access-control-allow-origin" not in own.headers


def test_forwarded_headers_count_only_from_trusted_proxies(served, caplog):
    """A TLS proxy at 10.0.0.2 forwards the page's https POST: its Origin matches the
    forwarded scheme and host. The same headers from another address are not believed."""
    checkpoint, png = served
    headers = {"host": "127.0.0.1:8000", "x-forwarded-proto": "https",
               "x-forwarded-host": "hin.example", "x-forwarded-for": "203.0.113.9, 10.0.0.3",
               "origin": "https://hin.example"}
    caplog.set_level(logging.INFO, logger="hin.serve.access")
    common = {"allow_hosts": ("hin.example",), "forwarded_allow_ips": ("10.0.0.0/8",)}
    with _client(checkpoint, client=("10.0.0.2", 4000), **common) as proxied:
        answer = proxied.post("/v1/captions", content=png, headers=headers)
        assert answer.status_code == 200, answer.text
    logged = [json.loads(record.getMessage()) for record in caplog.records
              if record.name == "hin.serve.access"]
    assert logged[-1]["client"] == "203.0.113.9" and logged[-1]["status"] == 200
    with _client(checkpoint, client=("192.0.2.1", 4000), **common) as direct:
        answer = direct.post("/v1/captions", content=png, headers=headers)
        assert answer.status_code == 403 and "http://127.0.0.1:8000" in answer.json()["detail"]
    logged = [json.loads(record.getMessage()) for record in caplog.records
              if record.name == "hin.serve.access"]
    assert logged[-1]["client"] == "192.0.2.1"


def test_a_root_path_serves_with_and_without_the_prefix(served):
    checkpoint, png = served
    with _client(checkpoint, root_path="/hin") as prefixed:
        for path in ("/hin/v1/info", "/v1/info", "/hin/", "/hin/static/style.css",
                     "/hin/healthz", "/hin/docs"):
            assert prefixed.get(path).status_code == 200, path
        assert prefixed.post("/hin/v1/captions", content=png).status_code == 200
        bare = prefixed.get("/hin", follow_redirects=False)
        assert bare.status_code in (307, 308) and bare.headers["location"].endswith("/hin/")
        assert prefixed.get("/hin/openapi.json").json()["servers"] == [{"url": "/hin"}]
    with pytest.raises(Exception, match="--root-path must start with '/'"):
        ServeSettings(checkpoint, root_path="hin/")


def test_every_answer_has_security_headers_and_a_request_id(served, client):
    for method, path, status in (("GET", "/", 200), ("GET", "/v1/info", 200),
                                 ("GET", "/nowhere", 404), ("POST", "/v1/captions", 400),
                                 ("GET", "/static/app.js", 200)):
        answer = client.request(method, path)
        assert answer.status_code == status, path
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    foreign = client.get("/v1/info", headers={"host": "evil.example"})
    assert foreign.status_code == 403 and foreign.headers["x-content-type-options"] == "nosniff"
    assert client.get("/healthz", headers={"x-request-id": "job-7.a:1"}).headers[
        "x-request-id"] == "job-7.a:1"
    assert client.get("/healthz", headers={"x-request-id": "no spaces"}).headers[
        "x-request-id"] != "no spaces"


def test_the_pages_satisfy_the_csp_no_inline_script_or_style():
    for page in ("index.html", "docs.html"):
        html = (STATIC / page).read_text()
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), page
        assert "<style" not in html and not re.search(r"\sstyle=", html), page
        assert not re.search(r"\son[a-z]+=", html), page
        assert "javascript:" not in html, page


def test_the_access_log_is_one_json_line_with_time_duration_sizes_and_request_id(
        served, client, caplog):
    _, png = served
    caplog.set_level(logging.INFO, logger="hin.serve.access")
    client.post("/v1/captions?beam_size=2", content=png, headers={"x-request-id": "abc"})
    line = json.loads([r for r in caplog.records if r.name == "hin.serve.access"][-1].getMessage())
    assert line["request_id"] == "abc" and line["status"] == 200
    assert line["method"] == "POST" and line["path"] == "/v1/captions"
    assert line["bytes_in"] == len(png) and line["bytes_out"] > 100
    assert line["duration_ms"] > 0 and re.match(r"\d{4}-\d\d-\d\dT", line["time"])


def test_metrics_count_requests_latencies_queue_pixels_and_batches(served, client):
    _, png = served
    assert client.post("/v1/captions", content=png).status_code == 200
    answer = client.get("/metrics")
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/plain")
    text = answer.text
    assert re.search(r'hin_http_requests_total\{method="POST",route="/v1/captions",'
                     r'status="200"\} [1-9]', text)
    assert 'hin_http_request_duration_seconds_count{route="/v1/captions"}' in text
    assert client.get("/static/app.js").status_code == 200    # counted under its route, not "other"
    assert re.search(r'hin_http_requests_total\{method="GET",route="/static",status="200"\} [1-9]',
                     client.get("/metrics").text)
    assert re.search(r"hin_batch_size_count [1-9]", text)
    for gauge in ("hin_requests_in_progress 0.0", "hin_pixels_in_flight 0.0",
                  "hin_body_bytes_in_flight 0.0", "hin_pixels_budget 1e+08"):
        assert gauge in text, gauge


def test_readiness_is_distinct_from_liveness(served):
    checkpoint, _ = served
    with _client(checkpoint) as client:
        assert client.get("/readyz").json() == {"ready": True, "reason": None}
        client.app.state.readiness.drain()
        draining = client.get("/readyz")
        assert draining.status_code == 503 and "shutting down" in draining.json()["reason"]
        assert client.get("/healthz").status_code == 200         # alive all the same
        client.app.state.readiness.draining = False
        client.app.state.service.batcher.close()
        stopped = client.get("/readyz")
        assert stopped.status_code == 503 and "batching worker" in stopped.json()["reason"]


def test_head_answers_health_and_info_and_demo_indexes_are_strict(client):
    for path in ("/healthz", "/v1/info", "/readyz"):
        answer = client.head(path)
        assert answer.status_code == 200 and answer.content == b"", path
    assert client.get("/v1/demo/1").status_code == 200
    for index in ("+1", "1.0", "01x", "%C2%B2", "-0", "1e0", "99999999999"):
        answer = client.get(f"/v1/demo/{index}")
        assert answer.status_code == 404 and "no demo picture" in answer.json()["detail"], index


def test_the_body_budget_refuses_with_503_and_is_given_back(served):
    checkpoint, png = served
    with _client(checkpoint, max_upload_mb=0.01, max_body_mb_in_flight=0.02) as client:
        admission = client.app.state.service.admission
        admission.reserve_body(admission.max_body - len(png) + 1)    # other uploads held
        busy = client.post("/v1/captions", content=png)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
        assert "--max-body-mb-in-flight" in busy.json()["detail"]
        admission.release_body(admission.max_body - len(png) + 1)
        assert client.post("/v1/captions", content=png).status_code == 200
        assert admission.body == 0 and admission.requests == 0
    with pytest.raises(Exception, match="must be at least --max-upload-mb"):
        ServeSettings(checkpoint, max_upload_mb=10, max_body_mb_in_flight=5)


def test_refusals_say_how_to_fix_the_request(served, client):
    _, png = served
    labelled = client.post("/v1/captions", content=png,
                           headers={"content-type": "application/x-www-form-urlencoded"})
    assert labelled.status_code == 415
    assert "-H 'Content-Type: image/png'" in labelled.json()["detail"]
    gzipped = client.post("/v1/captions", content=png, headers={"content-encoding": "gzip"})
    assert gzipped.status_code == 415 and "'gzip'" in gzipped.json()["detail"]
    boundary = "XyZ"
    cut = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\""
           f"\r\nContent-Type: image/png\r\n\r\n").encode() + png
    answer = client.post("/v1/captions", content=cut, headers={
        "content-type": f"multipart/form-data; boundary={boundary}"})
    assert answer.status_code == 400 and "closing boundary" in answer.json()["detail"]
    whole = client.post("/v1/captions", content=cut + f"\r\n--{boundary}--\r\n".encode(),
                        headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    assert whole.status_code == 200


def test_sampling_options_need_sample_and_unseeded_sampling_says_its_seed(served, client):
    _, png = served
    for option in ("temperature=0.5", "top_k=3", "top_p=0.9", "seed=4"):
        refused = client.post(f"/v1/captions?{option}", content=png)
        assert refused.status_code == 422, option
        assert "apply only when sampling" in refused.json()["detail"]
    drawn = client.post("/v1/captions?sample&num_captions=3", content=png).json()
    seed = drawn["decoding"]["seed"]
    assert isinstance(seed, int)
    again = client.post(f"/v1/captions?sample&num_captions=3&seed={seed}", content=png).json()
    assert again["captions"] == drawn["captions"] and again["decoding"]["seed"] == seed


def test_the_docs_give_the_servers_form_part_limit(served):
    assert f"a form with more than {MAX_PARTS} parts" in DOCS.read_text()


@pytest.mark.parametrize("flag, value", [
    ("--max-upload-mb", "nan"), ("--max-upload-mb", "inf"), ("--max-upload-mb", "-1"),
    ("--body-timeout", "nan"), ("--shutdown-timeout", "nan"), ("--header-timeout", "inf"),
    ("--idle-timeout", "0"), ("--max-wait-ms", "nan"), ("--max-body-mb-in-flight", "inf"),
    ("--max-connections", "0"), ("--port", "-1")])
def test_every_numeric_flag_is_finite_and_in_range(served, capsys, flag, value):
    assert main(["serve", "--checkpoint", str(served[0]), flag, value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"hin serve: error: {flag} must be from" in err


def test_forwarded_allow_ips_must_be_addresses(served, capsys):
    assert main(["serve", "--checkpoint", str(served[0]), "--forwarded-allow-ips",
                 "proxy.local"]) == 2
    assert "--forwarded-allow-ips" in capsys.readouterr().err
    assert main(["serve", "--checkpoint", str(served[0]), "--forwarded-allow-ips",
                 "10.0.0.1/8"]) == 2
    assert "--forwarded-allow-ips: 10.0.0.1/8 has host bits set" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for shown in ("--max-upload-mb MAX_UPLOAD_MB larger uploads are refused with 413 (default: "
                  "10.0)", "(default: 127.0.0.1)", "--header-timeout SECONDS",
                  "(default: 256)"):
        assert shown in text, shown


def test_a_picture_still_works_at_the_root_of_a_plain_server(served, client):
    """The envelope changes nothing for a plain request."""
    _, png = served
    buffer = io.BytesIO()
    Image.new("RGB", (20, 20), (200, 10, 10)).save(buffer, format="PNG")
    assert client.post("/v1/captions", content=buffer.getvalue()).status_code == 200


def test_a_body_being_read_holds_its_place_in_the_queue(served):
    """--max-queue counts requests from their first byte: while one upload trickles in, a
    second request is refused 429."""
    import asyncio

    import httpx

    checkpoint, png = served
    app = create_app(ServeSettings(checkpoint, decoding=DEFAULTS, device="cpu", max_queue=1,
                                   allow_hosts=("hin",)))

    async def both():
        first_read, rest = asyncio.Event(), asyncio.Event()

        async def trickle():
            yield png[:10]
            first_read.set()        # the app asks for more: it has taken its place
            await rest.wait()
            yield png[10:]

        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hin") as client:
            slow = asyncio.create_task(client.post("/v1/captions", content=trickle()))
            await asyncio.wait_for(first_read.wait(), DEADLINE_S)
            second = await client.post("/v1/captions", content=png)
            rest.set()
            return second, await slow

    second, slow = asyncio.run(both())
    assert second.status_code == 429 and "--max-queue" in second.json()["detail"]
    assert slow.status_code == 200
    app.state.service.close()
