"""A real `hin serve` process on 127.0.0.1, driven with raw sockets: bodies in flight and
connections are bounded (the next is refused, memory stays within a stated bound), idle
and slow-header connections are closed, malformed requests get JSON, a client that drops
mid-upload is one log line, requests cut at shutdown get a JSON 503, SIGTERM and SIGHUP
exit 0, and start-up prints the address really bound (--port 0). What a test waits for it
reads from the server (its /metrics, its log, its sockets' queues), never a fixed time."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import resource
import select
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

from helpers.extract_models import write_picture_checkpoint
from helpers.serving import metric
from helpers.waiting import wait_until

pytest.importorskip("transformers")
pytest.importorskip("fastapi")

MIB = 2**20
SRC = Path(__file__).parents[2] / "src"


@pytest.fixture(scope="module")
def checkpoint_and_png(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-server")
    checkpoint, _, _ = write_picture_checkpoint(root, {"12.png": (50, 30)})
    return checkpoint, (root / "pictures" / "12.png").read_bytes()


class Running:
    def __init__(self, process: subprocess.Popen, port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=20)

    def exchange(self, data: bytes) -> tuple[int, dict[str, str], bytes]:
        with self.connect() as client:
            client.sendall(data)
            return parse(read_all(client))

    def rss_mib(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+) kB", status)[1]) / 1024

    def errors(self) -> str:
        return self.log.read_text()

    def metric(self, name: str) -> float | None:
        return metric(f"http://127.0.0.1:{self.port}", name)

    def counts_only_the_asking_connection(self) -> bool:
        """No connection is open besides the one asking /metrics (connections a client
        closed are gone once the server has read their end)."""
        return self.metric("hin_open_connections") == 1

    def unread_bytes(self) -> int:
        """Bytes sent to the server that it has not read yet: its connections' receive queues
        and the clients' send queues (/proc/net/tcp; a listening socket's queues are its
        backlog, not bytes, and are left out)."""
        unread = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            _, local, remote, state, queues = line.split()[:5]
            if state != "01":                                   # not ESTABLISHED
                continue
            sent, received = (int(size, 16) for size in queues.split(":"))
            if int(local.rsplit(":", 1)[1], 16) == self.port:
                unread += received
            elif int(remote.rsplit(":", 1)[1], 16) == self.port:
                unread += sent
        return unread


@contextmanager
def started(checkpoint: Path, log: Path, *flags: str, preexec=None):
    """`hin serve --port 0 FLAGS`; the port is read from its `listening on` line."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    with open(log, "wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "hin", "serve", "--checkpoint", str(checkpoint), "--port", "0",
             "--device", "cpu", *flags], stdout=subprocess.PIPE, stderr=errors, env=env,
            preexec_fn=preexec)
    try:
        line = process.stdout.readline().decode()
        match = re.fullmatch(r"hin serve: listening on http://127\.0\.0\.1:(\d+)/\n", line)
        assert match, (line, log.read_text())
        assert int(match[1]) != 0
        yield Running(process, int(match[1]), log)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        process.stdout.close()


def read_all(client: socket.socket) -> bytes:
    chunks = []
    while chunk := client.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def read_one(client: socket.socket) -> bytes:
    """One answer with a Content-Length, leaving the connection open."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += client.recv(65536)
    length = int(parse(raw)[1]["content-length"])
    while len(raw.partition(b"\r\n\r\n")[2]) < length:
        raw += client.recv(65536)
    return raw


def parse(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), headers, body


def request(method: str, path: str, body: bytes = b"", version: str = "1.1",
            **headers: str) -> bytes:
    fields = {"Host": "127.0.0.1", "Connection": "close",
              **{name.replace("_", "-"): value for name, value in headers.items()}}
    if body and "Transfer-Encoding" not in fields:
        fields.setdefault("Content-Length", str(len(body)))
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items() if value is not None)
    return f"{method} {path} HTTP/{version}\r\n{head}\r\n".encode() + body


def test_bodies_in_flight_are_bounded_and_memory_with_them(checkpoint_and_png, tmp_path):
    """Four slow uploads hold the whole body budget (16 MiB: each is counted at its declared
    4 MiB): a fifth, declared or chunked, is refused 503 at once, and the server's memory
    grows by less than 3 bytes per budgeted byte (48 MiB). Before the budget, 40 such
    uploads of 9 MiB grew it by 370 MiB and a 41st was served."""
    checkpoint, png = checkpoint_and_png
    with started(checkpoint, tmp_path / "log", "--max-upload-mb", "4",
                 "--max-body-mb-in-flight", "16", "--log-level", "warning") as server:
        status, _, _ = server.exchange(request("POST", "/v1/captions", png,
                                               Content_Type="image/png"))
        assert status == 200
        before = server.rss_mib()
        slow = []
        for _ in range(4):
            client = server.connect()
            client.sendall(request("POST", "/v1/captions", b"", Content_Type="image/png",
                                   Content_Length=str(4 * MIB)))
            client.sendall(b"x" * (7 * MIB // 2))
            slow.append(client)
        wait_until(lambda: server.metric("hin_body_bytes_in_flight") == 16 * MIB
                   and server.unread_bytes() == 0,
                   "the four uploads to hold the budget and the server to have read their bytes")
        status, headers, body = server.exchange(request(
            "POST", "/v1/captions", png, Content_Type="image/png"))
        assert status == 503 and headers["retry-after"] == "1"
        assert "--max-body-mb-in-flight" in json.loads(body)["detail"]
        chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(png), png)
        status, _, body = server.exchange(request("POST", "/v1/captions", chunked,
                                                  Content_Type="image/png",
                                                  Transfer_Encoding="chunked"))
        assert status == 503 and "--max-body-mb-in-flight" in json.loads(body)["detail"]
        grown = server.rss_mib() - before
        assert grown < 48, f"RSS grew by {grown:.0f} MiB"
        for client in slow:           # they finish (not pictures: 400) and give the budget back
            client.sendall(b"x" * (MIB // 2))
            assert parse(read_all(client))[0] == 400
            client.close()
        status, _, _ = server.exchange(request("POST", "/v1/captions", png,
                                               Content_Type="image/png"))
        assert status == 200
    assert "Traceback" not in server.errors()


@pytest.fixture(scope="module")
def guarded(checkpoint_and_png, tmp_path_factory):
    """A header timeout far beyond any test's wait, so connections stay open until a test
    closes them; the header timeout's own test has its own server."""
    checkpoint, _ = checkpoint_and_png
    log = tmp_path_factory.mktemp("guarded") / "log"
    with started(checkpoint, log, "--max-connections", "6", "--header-timeout", "600",
                 "--idle-timeout", "0.2", "--forwarded-allow-ips", "127.0.0.1",
                 "--allow-host", "hin.example", "--root-path", "/hin") as server:
        yield server


def test_connections_are_capped(guarded):
    """With six connections open a seventh is answered 503 and closed. No wait between them:
    the server takes connections in the order they were made, so when the seventh comes
    the six are counted."""
    wait_until(guarded.counts_only_the_asking_connection, "connections of earlier tests to go")
    idle = [guarded.connect() for _ in range(6)]
    status, headers, body = parse(read_all(guarded.connect()))
    assert status == 503 and "--max-connections" in json.loads(body)["detail"]
    assert headers["x-content-type-options"] == "nosniff"
    for client in idle:
        client.close()
    wait_until(guarded.counts_only_the_asking_connection, "the six closed connections to go")
    assert "Traceback" not in guarded.errors()


def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(guarded):
    """--idle-timeout 0.2 closes it; the header timeout, which would close it too, is 600 s,
    far past the socket's 20 s deadline."""
    with guarded.connect() as kept:
        kept.sendall(request("GET", "/healthz", Connection="keep-alive"))
        assert read_one(kept).startswith(b"HTTP/1.1 200")
        assert read_all(kept) == b""              # closed, nothing more said
    assert guarded.exchange(request("GET", "/healthz"))[0] == 200


def _answer_or_one_more_header(client: socket.socket, numbers: itertools.count) -> bytes | None:
    """The server's whole answer once it has begun; until then one more header line a call."""
    if select.select([client], [], [], 0)[0]:
        return read_all(client)
    client.sendall(b"X-Drip-%d: 1\r\n" % next(numbers))
    return None


def test_a_silent_or_dripping_head_is_closed_after_the_header_timeout(checkpoint_and_png,
                                                                      tmp_path):
    """A connection that says nothing is closed without an answer. One that keeps sending
    header lines, each well within --header-timeout of the last, but never ends its head
    is answered 408: the timeout runs from the connection's start, not from its last byte."""
    checkpoint, _ = checkpoint_and_png
    with started(checkpoint, tmp_path / "log", "--header-timeout", "0.5",
                 "--log-level", "warning") as server:
        with server.connect() as silent:
            assert read_all(silent) == b""        # closed by the server, no answer
        with server.connect() as dripping:
            dripping.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            numbers = itertools.count()
            answer = wait_until(lambda: _answer_or_one_more_header(dripping, numbers),
                                "an answer to a head that never ends")
        status, _, body = parse(answer)
        assert status == 408 and "--header-timeout" in json.loads(body)["detail"]
        assert server.exchange(request("GET", "/healthz"))[0] == 200
    assert "Traceback" not in server.errors()


def test_malformed_requests_get_json_and_ambiguous_framing_is_refused(guarded):
    for raw, words in (
            (request("POST", "/v1/captions", Content_Length="abc"), "malformed HTTP request"),
            (request("POST", "/v1/captions", b"5\r\nhello\r\n0\r\n\r\n", Content_Length="5",
                     Transfer_Encoding="chunked"), "both Transfer-Encoding and Content-Length"),
            (b"GARBAGE\r\n\r\n", "malformed HTTP request")):
        status, headers, body = guarded.exchange(raw)
        assert status == 400 and headers["content-type"] == "application/json", raw
        assert words in json.loads(body)["detail"]


def test_old_probes_without_host_and_head_requests_are_answered(guarded):
    status, _, body = guarded.exchange(b"GET /healthz HTTP/1.0\r\n\r\n")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert guarded.exchange(b"GET /v1/info HTTP/1.0\r\n\r\n")[0] == 403
    for path in ("/healthz", "/v1/info"):
        status, _, body = guarded.exchange(request("HEAD", path))
        assert status == 200 and body == b""


def test_metrics_count_the_open_connections(guarded):
    with guarded.connect(), guarded.connect():
        wait_until(lambda: (guarded.metric("hin_open_connections") or 0) >= 3,
                   "the two open connections and the asking one to be counted")


def test_a_tls_proxy_under_a_prefix_forwards_the_pages_post(guarded, checkpoint_and_png):
    """nginx at 127.0.0.1 (trusted) passes https://hin.example/hin/v1/captions on: the page's
    Origin https://hin.example matches the forwarded scheme and host."""
    _, png = checkpoint_and_png
    forwarded = {"X_Forwarded_Proto": "https", "X_Forwarded_Host": "hin.example",
                 "X_Forwarded_For": "198.51.100.7", "Origin": "https://hin.example",
                 "Content_Type": "image/png"}
    for path in ("/hin/v1/captions", "/v1/captions"):      # prefix kept or stripped
        status, _, body = guarded.exchange(request("POST", path, png, **forwarded))
        assert status == 200, body
    status, _, _ = guarded.exchange(request("POST", "/hin/v1/captions", png, **{
        **forwarded, "X_Forwarded_Proto": None, "Origin": "https://hin.example"}))
    assert status == 403                     # http://hin.example is not the page's origin
    assert guarded.exchange(request("GET", "/hin/static/app.js"))[0] == 200


def test_sigterm_drains_cuts_late_requests_with_json_503_and_exits_0(checkpoint_and_png,
                                                                      tmp_path):
    checkpoint, png = checkpoint_and_png
    with started(checkpoint, tmp_path / "log", "--body-timeout", "600", "--shutdown-timeout",
                 "1") as server:
        def in_progress() -> float | None:
            return server.metric("hin_requests_in_progress")

        with server.connect() as dropped:          # goes away mid-upload
            dropped.sendall(request("POST", "/v1/captions", b"", Content_Type="image/png",
                                    Content_Length="100000") + b"x" * 1000)
            wait_until(lambda: in_progress() == 1, "the upload to be in progress")
        wait_until(lambda: "went away before its body arrived" in server.errors(),
                   "the server to log the upload that went away")
        assert in_progress() == 0
        stuck = server.connect()
        stuck.sendall(request("POST", "/v1/captions", b"", Content_Type="image/png",
                              Content_Length="100000") + b"x")
        wait_until(lambda: in_progress() == 1, "the stuck upload to be in progress")
        server.process.send_signal(signal.SIGTERM)
        status, headers, body = parse(read_all(stuck))
        stuck.close()
        assert status == 503 and "shutting down" in json.loads(body)["detail"]
        assert headers["content-type"] == "application/json"
        assert server.process.wait(30) == 0
    errors = server.errors()
    assert "Traceback" not in errors, errors
    assert errors.count("went away before its body arrived") == 1, errors


@pytest.mark.parametrize("sent, status", [(signal.SIGHUP, 0), (signal.SIGINT, 130)])
def test_sighup_drains_and_exits_0_and_ctrl_c_130(checkpoint_and_png, tmp_path, sent, status):
    checkpoint, _ = checkpoint_and_png
    with started(checkpoint, tmp_path / "log") as server:
        assert server.exchange(request("GET", "/healthz"))[0] == 200
        server.process.send_signal(sent)
        assert server.process.wait(30) == status
    assert "Traceback" not in server.errors()


def test_more_connections_than_open_files_allow_is_refused_at_start(checkpoint_and_png,
                                                                     tmp_path):
    checkpoint, _ = checkpoint_and_png
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    done = subprocess.run(
        [sys.executable, "-m", "hin", "serve", "--checkpoint", str(checkpoint),
         "--max-connections", "1000"], env=env, capture_output=True, text=True, timeout=120,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256)))
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0
    assert "--max-connections 1000 needs 1064 open files" in done.stderr
    assert "ulimit -n" in done.stderr


def test_failed_accepts_are_logged_as_one_line_now_and_then(caplog):
    from hin.serve.server import AcceptErrors

    class Loop:
        passed: list = []

        def default_exception_handler(self, context):
            self.passed.append(context)

    handler, loop = AcceptErrors(), Loop()
    caplog.set_level(logging.ERROR, logger="hin.serve")
    for _ in range(10_000):
        handler(loop, {"message": "socket.accept() out of system resource",
                       "exception": OSError(24, "Too many open files")})
    lines = [record for record in caplog.records if record.name == "hin.serve"]
    assert len(lines) == 1 and lines[0].exc_info is None
    assert "Too many open files" in lines[0].getMessage()
    handler(loop, {"message": "something else"})
    assert loop.passed == [{"message": "something else"}]
