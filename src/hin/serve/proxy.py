"""Behind a reverse proxy: the path prefix it serves this server under (`--root-path`) and
the X-Forwarded-* headers it adds, believed only from the proxies named with
`--forwarded-allow-ips` (addresses or networks; `*` for any). Any other client could write
those headers itself, so from it they are ignored (and never logged as the client).

From a trusted proxy, a request takes
- its scheme from X-Forwarded-Proto (`http` or `https`), so the Origin check compares the
  page's `https://host` with `https://host`;
- its Host from X-Forwarded-Host, so the Host check and the Origin check see the name the
  browser used;
- its client address from X-Forwarded-For: the nearest address that is not a trusted proxy.
A comma-separated header holds one value per proxy; the last is the nearest proxy's.

With a root path, a request's path may arrive with the prefix (the proxy passed it on) or
without (the proxy stripped it): both reach the same routes, and the answers (OpenAPI's
server URL, redirects) name the prefix.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(entries: Iterable[str]) -> tuple[bool, tuple[Network, ...]]:
    """`--forwarded-allow-ips` values (comma-separated or repeated) -> (any, networks); a
    value that is not an address or network raises ValueError naming it. A network with host
    bits set (10.0.0.1/8) is refused, not widened: which proxies are believed is written out."""
    names = [name.strip() for entry in entries for name in entry.split(",") if name.strip()]
    networks = tuple(ipaddress.ip_network(name) for name in names if name != "*")
    return "*" in names, networks


def _last(value: str) -> str:
    return value.rsplit(",", 1)[-1].strip()


class ProxyHeaders:
    """ASGI middleware applying the module docstring's rules to the scope."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, root_path: str = "",
                 forwarded_allow_ips: Iterable[str] = ()) -> None:
        self.app, self.root_path = app, root_path
        self.any, self.networks = trusted_networks(forwarded_allow_ips)

    def trusted(self, address: str | None) -> bool:
        if self.any:
            return True
        if not address or not self.networks:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self.networks)

    def forwarded(self, scope: dict[str, Any]) -> None:
        headers = {name.lower(): value for name, value in scope["headers"]}
        proto = _last(headers.get(b"x-forwarded-proto", b"").decode("latin-1")).lower()
        if proto in ("http", "https"):
            scope["scheme"] = proto
        host = _last(headers.get(b"x-forwarded-host", b"").decode("latin-1"))
        if host:
            scope["headers"] = [(name, value) for name, value in scope["headers"]
                                if name.lower() != b"host"] + [(b"host", host.encode("latin-1"))]
        chain = [hop.strip() for hop in
                 headers.get(b"x-forwarded-for", b"").decode("latin-1").split(",") if hop.strip()]
        if chain:
            client = next((hop for hop in reversed(chain) if not self.trusted(hop)), chain[0])
            scope["client"] = (client, 0)

    async def __call__(self, scope: dict[str, Any], receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            scope = dict(scope)
            client = scope.get("client")
            if self.trusted(client[0] if client else None):
                self.forwarded(scope)
            if self.root_path:
                path = scope["path"]
                if not (path == self.root_path or path.startswith(self.root_path + "/")):
                    scope["path"] = self.root_path + path
                    scope["raw_path"] = self.root_path.encode() + scope.get("raw_path", path.encode())
                scope["root_path"] = self.root_path
        await self.app(scope, receive, send)
