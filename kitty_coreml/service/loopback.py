"""HTTP/1.1 to the `kitty-coreml serve` of this machine over a plain socket: what the warm path of
`generate` and the Studio provider send (JSON calls and the job's event stream).

urllib costs a repeated `generate` more to import than the whole exchange takes, and it would send a
loopback request through an http_proxy the environment names. One request per connection
(`Connection: close`); bodies framed by Content-Length, chunks, or the connection's end."""

from __future__ import annotations

import socket
from collections.abc import Iterator

__all__ = ["LoopbackResponse", "LoopbackError", "loopback_request"]

_MAX_HEADER_BYTES = 64 * 1024


class LoopbackError(OSError):
    """The service's answer is not HTTP as this module reads it."""


class LoopbackResponse:
    """One answer: status, reason, headers (lower-case names); read() the body, or iterate it by lines
    as they arrive (an event stream). Closing closes the connection."""

    def __init__(self, connection: socket.socket, status: int, reason: str, headers: dict[str, str]):
        self._connection = connection
        self._file = connection.makefile("rb")
        self.status, self.reason, self.headers = status, reason, headers

    def __enter__(self) -> LoopbackResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()
        self._connection.close()

    def _pieces(self) -> Iterator[bytes]:
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size_line = self._file.readline(1024)
                try:
                    size = int(size_line.split(b";")[0].strip(), 16)
                except ValueError:
                    raise LoopbackError(f"a bad chunk size {size_line[:40]!r}") from None
                if size == 0:
                    return
                piece = self._file.read(size)
                if len(piece) < size or self._file.readline(1024) not in (b"\r\n", b"\n"):
                    raise LoopbackError("the connection ended inside a chunk")
                yield piece
        elif "content-length" in self.headers:
            length = int(self.headers["content-length"])
            body = self._file.read(length)
            if len(body) < length:
                raise LoopbackError(f"the connection ended after {len(body)} of {length} bytes")
            yield body
        else:
            while piece := self._file.read1(65536):
                yield piece

    def read(self) -> bytes:
        return b"".join(self._pieces())

    def __iter__(self) -> Iterator[bytes]:
        pending = b""
        for piece in self._pieces():
            pending += piece
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line + b"\n"
        if pending:
            yield pending


def _split(base_url: str) -> tuple[str, int, str, str]:
    """("127.0.0.1", 8089, "127.0.0.1:8089", "/prefix") from http://127.0.0.1:8089/prefix (or localhost,
    or [::1]): where to connect, the Host header, the path prefix."""
    if not base_url.startswith("http://"):
        raise LoopbackError(f"not a plain http:// URL: {base_url}")
    authority, slash, prefix = base_url[len("http://"):].partition("/")
    host, _, port = authority.rpartition(":")
    if not host or not port.isdigit():
        host, port = authority, "80"
    return host.strip("[]"), int(port), authority, (slash + prefix).rstrip("/")


def loopback_request(base_url: str, method: str, path: str, *, body: bytes | None = None,
                     headers: dict[str, str] | None = None, timeout: float) -> LoopbackResponse:
    """Send one request; the answer with its headers read (the body not yet). OSError when the service
    cannot be reached; TimeoutError when it is quiet for `timeout` seconds (now or while reading)."""
    host, port, authority, prefix = _split(base_url)
    connection = socket.create_connection((host, port), timeout=timeout)
    try:
        head = [f"{method} {prefix}{path} HTTP/1.1", f"Host: {authority}", "Connection: close",
                "Accept-Encoding: identity", *(f"{name}: {value}" for name, value in (headers or {}).items())]
        if body is not None:
            head.append(f"Content-Length: {len(body)}")
        connection.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b""))
        response = LoopbackResponse(connection, 0, "", {})
        status_line = response._file.readline(_MAX_HEADER_BYTES)
        parts = status_line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise LoopbackError(f"not an HTTP answer: {status_line[:60]!r}")
        response.status, response.reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
        read = len(status_line)
        while (line := response._file.readline(_MAX_HEADER_BYTES)) not in (b"\r\n", b"\n", b""):
            read += len(line)
            if read > _MAX_HEADER_BYTES:
                raise LoopbackError("the answer's headers are too long")
            name, _, value = line.decode("latin-1").partition(":")
            response.headers[name.strip().lower()] = value.strip()
        return response
    except BaseException:
        connection.close()
        raise
