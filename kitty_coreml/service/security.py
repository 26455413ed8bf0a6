"""The service's front door, one ASGI middleware in front of every route (docs/security.md):

- Host: only the names this service is reached by (localhost, the address the connection arrived on,
  this machine's host names, KITTY_COREML_ALLOWED_HOSTS). A web page that rebinds its own DNS name to
  127.0.0.1 still sends its own name as Host, and is refused: no reading the gallery through rebinding.
- Origin: a state-changing request (POST, PUT, PATCH, DELETE) sent by a browser carries Origin; it must
  be the service's own origin or one of KITTY_COREML_CORS_ORIGINS. Requests without Origin (kitty-cli,
  curl, the gateway) are not from a web page and pass.
- Bodies: a request with a body must say Content-Type: application/json. A page can POST text/plain
  without a preflight; it cannot send application/json cross-origin without one.
- CORS: closed by default. KITTY_COREML_CORS_ORIGINS lists origins whose pages may call the API (and
  read its answers); `*` opens it to every origin, as KITTY's gateway does. A listed origin passes the
  Origin check too. The API key, when set, is still needed on /api routes.
"""

from __future__ import annotations

import json
import socket
from typing import Any

__all__ = ["RequestGuard", "host_name", "local_names"]

_STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_JSON_TYPES = ("application/json",)
_PREFLIGHT_MAX_AGE_S = "600"


def host_name(host_header: str) -> str:
    """The name part of a Host header, lower case, without the port ("[::1]:8089" -> "::1")."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def local_names() -> set[str]:
    """Names that always mean this machine: loopback and the host's own names."""
    names = {"localhost", "127.0.0.1", "::1"}
    try:
        hostname = socket.gethostname().lower()
    except OSError:
        return names
    if hostname:
        names |= {hostname, hostname.split(".", 1)[0] + ".local"}
    return names


class RequestGuard:
    """Plain ASGI middleware: refusals are answered here, in JSON, before any route runs."""

    def __init__(self, app: Any, *, allowed_hosts: tuple[str, ...] = (), cors_origins: tuple[str, ...] = ()):
        self.app = app
        self.any_host = "*" in allowed_hosts
        self.hosts = local_names() | {host_name(name) for name in allowed_hosts if name != "*"}
        self.any_origin = "*" in cors_origins
        self.origins = {origin.rstrip("/").lower() for origin in cors_origins if origin != "*"}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        if not self._host_allowed(host, scope):
            await _refuse(send, 421, "wrong_host", f"Host {host!r} is not a name of this service",
                          "reach it by 127.0.0.1 or localhost, or add the name to KITTY_COREML_ALLOWED_HOSTS")
            return
        origin = headers.get("origin")
        method = scope.get("method", "GET")
        cors_allowed = origin is not None and self._cors_allowed(origin)
        if method == "OPTIONS" and origin is not None and "access-control-request-method" in headers:
            await self._preflight(send, origin, cors_allowed)
            return
        if method in _STATE_CHANGING:
            foreign = origin is not None and not cors_allowed and not _same_origin(origin, host, scope)
            if foreign or (origin is None and headers.get("sec-fetch-site") == "cross-site"):
                await _refuse(send, 403, "cross_origin", f"a {method} from origin {origin!r} is refused: "
                              "only this service's own pages may change state",
                              "list the page's origin in KITTY_COREML_CORS_ORIGINS to allow it")
                return
            if _has_body(headers) and _media_type(headers.get("content-type", "")) not in _JSON_TYPES:
                given = headers.get("content-type") or "none"
                await _refuse(send, 415, "unsupported_media_type",
                              f"Content-Type: got {given!r}; allowed: application/json",
                              "send the body as JSON with Content-Type: application/json")
                return
        if cors_allowed:
            send = _with_cors(send, origin)
        await self.app(scope, receive, send)

    def _host_allowed(self, host: str, scope: dict) -> bool:
        if not host:
            return False
        name = host_name(host)
        if self.any_host or name in self.hosts:
            return True
        server = scope.get("server")
        return bool(server) and name == str(server[0]).lower()  # the address this connection arrived on

    def _cors_allowed(self, origin: str) -> bool:
        return origin != "null" and (self.any_origin or origin.rstrip("/").lower() in self.origins)

    async def _preflight(self, send: Any, origin: str, allowed: bool) -> None:
        if not allowed:
            await _refuse(send, 403, "cross_origin", f"origin {origin!r} may not call this service",
                          "list it in KITTY_COREML_CORS_ORIGINS")
            return
        await send({"type": "http.response.start", "status": 204, "headers": [
            *_cors_headers(origin),
            (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", b"Content-Type, X-API-Key"),
            (b"access-control-max-age", _PREFLIGHT_MAX_AGE_S.encode()),
            (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


def _headers(scope: dict) -> dict[str, str]:
    """Header names lower case; a repeated header counts as its first value."""
    found: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


def _same_origin(origin: str, host: str, scope: dict) -> bool:
    return origin.rstrip("/").lower() == f"{scope.get('scheme', 'http')}://{host}".lower()


def _has_body(headers: dict[str, str]) -> bool:
    length = headers.get("content-length", "0").strip()
    return "transfer-encoding" in headers or not length.isdigit() or int(length) > 0


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _cors_headers(origin: str) -> list[tuple[bytes, bytes]]:
    return [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]


def _with_cors(send: Any, origin: str) -> Any:
    async def send_with_cors(message: dict) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *_cors_headers(origin)]}
        await send(message)

    return send_with_cors


async def _refuse(send: Any, status: int, code: str, message: str, hint: str) -> None:
    body = json.dumps({"detail": f"{message} ({hint})",
                       "error": {"code": code, "message": message, "hint": hint}}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
