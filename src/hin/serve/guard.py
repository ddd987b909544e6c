"""Who may talk to the server: the Host a request names and, for requests that change
something (POST), the page it comes from.

A page on any web site can make the browser POST a picture to 127.0.0.1 (a multipart form
needs no preflight), and a site whose name resolves to 127.0.0.1 (DNS rebinding) reads the
answers as its own. So a request is refused (403, JSON) when
- its Host is not a name this server is reached by: the address it is bound to, the loopback
  names (localhost, 127.0.0.1, [::1]), for a wildcard bind (0.0.0.0, ::) any IP address
  and this machine's name, and what `--allow-host` adds (`*` allows every Host); or
- it is a POST whose Origin is not the server's own (<its scheme>://<its Host>, as a trusted
  proxy forwards them: proxy.py) nor one given with `--allow-origin` (`*` allows every page).
  Clients that send no Origin (curl, scripts) are not pages and are let through.
The page served here sends its own Origin, so it keeps working. A request without any Host
(HTTP/1.0, as old health probes send) may only ask for the health checks.

CORS: a page from an `--allow-origin` origin may read the answers too: its preflight
(OPTIONS) is answered 204 with the methods and headers it may use, and every answer to it
names its origin in Access-Control-Allow-Origin. Pages from other origins get no such
header (the browser keeps the answer from them) and their preflight is refused (403).
"""

from __future__ import annotations

import ipaddress
import json
import socket
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"0.0.0.0", "::", ""})
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
HOSTLESS_PATHS = frozenset({"/healthz", "/readyz"})
CORS_METHODS = "GET, HEAD, POST"
CORS_HEADERS = "content-type, x-request-id"
CORS_EXPOSED = "x-request-id, retry-after"
CORS_MAX_AGE_S = 600


def host_name(host_header: str) -> str:
    """`Host` header -> the name without port, lower case (`[::1]:8000` -> `::1`)."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostAndOriginGuard:
    """ASGI middleware applying the module docstring's rules before the app sees a request."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, bound_host: str,
                 allow_hosts: Iterable[str] = (), allow_origins: Iterable[str] = ()) -> None:
        self.app = app
        self.bound = host_name(bound_host)
        self.wildcard = self.bound in WILDCARDS
        self.hosts = LOOPBACK_NAMES | {self.bound} | {host_name(h) for h in allow_hosts}
        if self.wildcard:
            self.hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
        self.origins = {origin.rstrip("/").lower() for origin in allow_origins}

    def refusal(self, method: str, headers: dict[str, str], scheme: str = "http",
                path: str = "/") -> str | None:
        """Why this request is refused, or None."""
        if "host" not in headers and path in HOSTLESS_PATHS and method in ("GET", "HEAD"):
            return None
        host_header = headers.get("host", "")
        host = host_name(host_header)
        if not ("*" in self.hosts or host in self.hosts or (self.wildcard and _is_ip(host))):
            return (f"Host {host_header[:80]!r} is not a name this server answers to; start it "
                    f"with --allow-host {host[:80] or 'NAME'} if that name is meant to reach it")
        origin = headers.get("origin")
        if method in UNSAFE_METHODS and origin is not None:
            own = f"{scheme}://{host_header.strip().lower()}"
            if origin.lower() != own and self.cors_origin(origin) is None:
                return (f"a page from {origin[:80]!r} may not post to this server (it is not "
                        f"{own}); start it with --allow-origin {origin[:80]} to let it")
        return None

    def cors_origin(self, origin: str) -> str | None:
        """What Access-Control-Allow-Origin names for a page from `origin`: None when it is
        not an --allow-origin origin."""
        if "*" in self.origins:
            return "*"
        return origin if origin.rstrip("/").lower() in self.origins else None

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {name.decode("latin-1").lower(): value.decode("latin-1")
                   for name, value in scope["headers"]}
        method, origin = scope["method"], headers.get("origin")
        reason = self.refusal(method, headers, scope.get("scheme", "http"), app_path(scope))
        allowed = self.cors_origin(origin) if origin else None
        if reason is None and method == "OPTIONS" and origin \
                and "access-control-request-method" in headers:
            if allowed is None:
                reason = (f"a page from {origin[:80]!r} may not call this server; start it with "
                          f"--allow-origin {origin[:80]} to let it")
            else:
                await send({"type": "http.response.start", "status": 204, "headers": [
                    *_cors_headers(allowed), (b"access-control-allow-methods", CORS_METHODS.encode()),
                    (b"access-control-allow-headers", CORS_HEADERS.encode()),
                    (b"access-control-max-age", str(CORS_MAX_AGE_S).encode())]})
                await send({"type": "http.response.body", "body": b""})
                return
        if reason is not None:
            await refuse(send, 403, reason)
            return
        if allowed is None:
            await self.app(scope, receive, send)
            return

        async def send_with_cors(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []),
                                                  *_cors_headers(allowed)]}
            await send(message)

        await self.app(scope, receive, send_with_cors)


def _cors_headers(allowed: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", allowed.encode("latin-1")), (b"vary", b"Origin"),
            (b"access-control-expose-headers", CORS_EXPOSED.encode())]


def app_path(scope: dict[str, Any]) -> str:
    """The request's path below `--root-path` (the path the app's routes name). Read it before
    the app runs: Starlette's mounts rewrite the scope's root_path (/static) on the way in."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def refuse(send: Callable, status: int, detail: str,
                 headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """Answer `{"detail": ...}` with `status` straight from ASGI middleware."""
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})
