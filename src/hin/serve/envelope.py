"""What every answer carries and what every failure becomes, as ASGI middleware around the
app: an `X-Request-ID` (the client's when it sends a sane one, else a new one) echoed back,
security headers, one structured access-log line (JSON: time, request id, client, method,
path, status, bytes in and out, duration) and the request's metrics. A request whose
framing is ambiguous (Transfer-Encoding with Content-Length: request smuggling) is refused
400 and its connection closed. A client that goes away mid-upload is one log line, not a
traceback; a request cut off at shutdown (after --shutdown-timeout) gets a JSON 503.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from hin.errors import MissingExtraError, pip_install
from hin.serve.guard import app_path, refuse
from hin.serve.monitoring import ServerMetrics

try:
    from starlette.requests import ClientDisconnect
except ImportError as missing:
    raise MissingExtraError(f"`hin serve` needs FastAPI: {pip_install('serve')}") from missing

ACCESS_LOG = logging.getLogger("hin.serve.access")
LOG = logging.getLogger("hin.serve")
# The page loads its script, style and pictures from this server only, draws maps on
# canvases and shows them as data: URLs, and previews the chosen file through a blob: URL.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
       "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
       "frame-ancestors 'none'")
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"content-security-policy", CSP.encode()), (b"x-frame-options", b"DENY")]
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(headers: dict[bytes, bytes]) -> str:
    sent = headers.get(b"x-request-id", b"").decode("latin-1")
    return sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex


class Envelope:
    """ASGI middleware applying the module docstring's rules."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.monotonic()
        path = app_path(scope)
        headers = dict((name.lower(), value) for name, value in scope["headers"])
        rid = request_id(headers)
        answer = {"status": 0, "bytes_out": 0, "bytes_in": 0}

        async def counting_receive() -> dict[str, Any]:
            message = await receive()
            answer["bytes_in"] += len(message.get("body", b""))
            return message

        async def stamped_send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                answer["status"] = message["status"]
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS,
                                                  (b"x-request-id", rid.encode())]}
            elif message["type"] == "http.response.body":
                answer["bytes_out"] += len(message.get("body", b""))
            await send(message)

        try:
            if b"transfer-encoding" in headers and b"content-length" in headers:
                await refuse(stamped_send, 400, "the request has both Transfer-Encoding and "
                             "Content-Length; send one of them", [(b"connection", b"close")])
            else:
                await self.app(scope, counting_receive, stamped_send)
        except asyncio.CancelledError:
            LOG.warning("request %s cut off at shutdown (--shutdown-timeout)", rid)
            if not answer["status"]:
                await refuse(stamped_send, 503, "the server is shutting down and cut this "
                                                "request off; retry", [(b"retry-after", b"1")])
        except ClientDisconnect:
            LOG.warning("request %s: the client went away before its body arrived", rid)
        finally:
            self.log(scope, path, rid, answer, time.monotonic() - began)

    def log(self, scope: dict[str, Any], path: str, rid: str, answer: dict[str, int],
            seconds: float) -> None:
        status = answer["status"] or 499        # 499: no answer, the client went away
        self.metrics.observe(path, scope["method"], status, seconds)
        if not ACCESS_LOG.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        ACCESS_LOG.info(json.dumps({
            "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "request_id": rid, "client": client[0] if client else None,
            "method": scope["method"], "path": scope["path"][:200], "status": status,
            "bytes_in": answer["bytes_in"], "bytes_out": answer["bytes_out"],
            "duration_ms": round(seconds * 1000, 1)}))
