"""`hin serve`'s HTTP server: uvicorn, hardened where an ASGI app cannot reach.

- Connections are capped (--max-connections): one more is answered a JSON 503 and closed at
  once, and the cap is checked against the open-file limit at start, so the server does not
  run out of file descriptors.
- A connection must send a complete request head within --header-timeout of opening or of
  its previous answer (slowly dripped headers included), else it is closed (a JSON 408 when
  part of a head had come); an idle keep-alive connection is closed after --idle-timeout.
- A request h11 cannot parse (a bad Content-Length, a malformed line) gets a JSON 400.
- An accept() that fails (out of file descriptors) is logged as one line, at most once per
  ACCEPT_LOG_EVERY_S seconds with a count, never a traceback per failure.
- SIGTERM and SIGHUP drain (requests in progress finish within --shutdown-timeout) and exit
  0; SIGINT (Ctrl-C) does the same and exits 130.
- Start-up prints `listening on http://HOST:PORT/` with the port really bound (--port 0).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import http
import json
import logging
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from hin.errors import UsageError
from hin.serve.envelope import SECURITY_HEADERS
from hin.serve.monitoring import ServerMetrics
from hin.serve.settings import ServeSettings

LOG = logging.getLogger("hin.serve")
SPARE_FILES = 64            # open files kept beside the connections: checkpoint, pipes, threads
ACCEPT_LOG_EVERY_S = 10.0
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def raw_answer(status: int, detail: str, *headers: tuple[bytes, bytes]) -> bytes:
    """A whole JSON answer as bytes, for a connection that has no request to answer yet."""
    body = json.dumps({"detail": detail}).encode()
    lines = [f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}".encode(),
             b"content-type: application/json", f"content-length: {len(body)}".encode(),
             b"connection: close", *(name + b": " + value for name, value in
                                     [*SECURITY_HEADERS, *headers])]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def check_open_files(max_connections: int) -> None:
    """Raise the soft open-file limit to what --max-connections needs, or refuse."""
    needed = max_connections + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard == resource.RLIM_INFINITY or hard >= needed:
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
        else:
            raise UsageError(f"--max-connections {max_connections} needs {needed} open files "
                             f"and this process may open {hard} (ulimit -n): lower "
                             "--max-connections or raise the limit")


def protocol(settings: ServeSettings, metrics: ServerMetrics) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the module docstring's connection rules."""
    class Protocol(H11Protocol):
        head_timer: asyncio.TimerHandle | None = None
        partial_head = False

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            assert isinstance(transport, asyncio.Transport)     # a TCP server's transport
            super().connection_made(transport)
            metrics.connections.inc()
            if len(self.connections) > settings.max_connections:
                LOG.warning("refused a connection: %d open (--max-connections)",
                            len(self.connections) - 1)
                self.close_with(503, f"the server has {settings.max_connections} connections "
                                     "open, the most it keeps (--max-connections); retry "
                                     "shortly", (b"retry-after", b"1"))
                return
            self.arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            metrics.connections.dec()
            self.disarm_head_timer()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE:
                self.partial_head = True
            super().data_received(data)
            if self.conn.their_state is not h11.IDLE:
                self.partial_head = False
                self.disarm_head_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.arm_head_timer()

        def send_400_response(self, msg: str) -> None:
            self.close_with(400, f"malformed HTTP request: {msg}")

        def arm_head_timer(self) -> None:
            self.disarm_head_timer()
            self.head_timer = self.loop.call_later(settings.header_timeout_s, self.head_too_slow)

        def disarm_head_timer(self) -> None:
            if self.head_timer is not None:
                self.head_timer.cancel()
                self.head_timer = None

        def head_too_slow(self) -> None:
            self.head_timer = None
            if self.transport.is_closing():
                return
            if self.partial_head:
                self.close_with(408, f"the request head did not arrive within "
                                     f"{settings.header_timeout_s:g} s (--header-timeout)")
            else:
                self.transport.close()

        def close_with(self, status: int, detail: str, *headers: tuple[bytes, bytes]) -> None:
            self.disarm_head_timer()
            self.transport.write(raw_answer(status, detail, *headers))
            self.transport.close()

    return Protocol


class AcceptErrors:
    """An event loop exception handler that turns failed accept() calls into one line at
    most every ACCEPT_LOG_EVERY_S seconds; anything else goes to the loop's default."""

    def __init__(self) -> None:
        self.last = -ACCEPT_LOG_EVERY_S
        self.quiet = 0

    def __call__(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "accept" not in str(context.get("message", "")):
            loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - self.last < ACCEPT_LOG_EVERY_S:
            self.quiet += 1
            return
        more = f" ({self.quiet} more since the last such line)" if self.quiet else ""
        LOG.error("cannot accept connections: %s%s", context.get("exception"), more)
        self.last, self.quiet = now, 0


class Server(uvicorn.Server):
    """uvicorn's server with the module docstring's signals and start-up line."""

    def __init__(self, config: uvicorn.Config, on_exit: Any = None) -> None:
        super().__init__(config)
        self.on_exit = on_exit
        self.signal: int | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().set_exception_handler(AcceptErrors())
        await super().startup(sockets=sockets)
        for listener in sockets or []:
            host, port = listener.getsockname()[:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"hin serve: listening on http://{shown}:{port}/", flush=True)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = sig
        if self.on_exit is not None:
            self.on_exit()
        super().handle_exit(sig, frame)


def log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging, plus hin.serve's lines and its access log (JSON, one per line)."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["plain"] = {"format": "%(message)s"}
    config["handlers"]["plain"] = {"class": "logging.StreamHandler", "formatter": "plain",
                                   "stream": "ext://sys.stderr"}
    config["loggers"]["hin.serve"] = {"handlers": ["default"], "level": level.upper(),
                                      "propagate": False}
    config["loggers"]["hin.serve.access"] = {"handlers": ["plain"], "level": level.upper(),
                                             "propagate": False}
    return config


def serve(app: Any, settings: ServeSettings, listener: socket.socket, log_level: str) -> int:
    """Run until a signal; 0 after SIGTERM/SIGHUP, 130 after Ctrl-C."""
    # uvicorn annotates these two as int but uses them as seconds of any size (call_later,
    # asyncio.timeout), so they go in untyped.
    timeouts: dict[str, Any] = {"timeout_keep_alive": settings.idle_timeout_s,
                                "timeout_graceful_shutdown": settings.shutdown_timeout_s}
    config = uvicorn.Config(app, log_level=log_level, log_config=log_config(log_level),
                            http=protocol(settings, app.state.metrics), access_log=False,
                            proxy_headers=False, server_header=False, **timeouts)
    server = Server(config, on_exit=app.state.readiness.drain)
    server.run(sockets=[listener])
    if server.signal == signal.SIGINT:
        print("hin serve: interrupted", file=sys.stderr)
        return 130
    return 0
