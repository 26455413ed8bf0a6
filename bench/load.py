"""What the HTTP benchmarks share: starting a server that announces "listening on http://HOST:PORT" on
stderr (`kitty-coreml serve`, bench/standins.py), a private redis-server, and posting from concurrent
keep-alive clients."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Server:
    host: str
    port: int
    pid: int

    def cpu_s(self) -> float:
        """CPU seconds the server process has used so far (user + system, from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _drain(stream) -> None:
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()


@contextmanager
def listening(argv: Sequence[str], env: dict[str, str]) -> Iterator[Server]:
    """A server process for the block's length; it is stopped after."""
    process = subprocess.Popen(list(argv), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        for line in process.stderr:
            match = re.search(r"listening on http://([\d.]+):(\d+)", line)
            if match:
                _drain(process.stderr)
                break
        else:
            raise SystemExit(f"{argv[0]} did not start (exit {process.wait()})")
        yield Server(match.group(1), int(match.group(2)), process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A private redis-server on 127.0.0.1 without persistence: its URL (database 0)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
                                "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in process.stdout:
            if "Ready to accept connections" in line:
                _drain(process.stdout)
                break
        else:
            raise SystemExit(f"redis-server exited with {process.wait()}")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(timeout=10)


def post_many(server: Server, path: str, bodies: Sequence[Sequence[bytes]]) -> tuple[list[tuple[int, float]], float]:
    """POST each client's bodies in turn over its own keep-alive connection, all clients at once (one
    event loop: a client that costs little beside the servers it measures): ([(status, seconds) per
    request], wall seconds of the whole)."""

    async def client(own: Sequence[bytes]) -> list[tuple[int, float]]:
        reader, writer = await asyncio.open_connection(server.host, server.port)
        head = (f"POST {path} HTTP/1.1\r\nHost: {server.host}:{server.port}\r\n"
                "Content-Type: application/json\r\nContent-Length: ").encode()
        out = []
        for body in own:
            started = time.perf_counter()
            writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
            status_line, *headers = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            length = next(int(line.split(":", 1)[1]) for line in headers if line.lower().startswith("content-length:"))
            await reader.readexactly(length)
            out.append((int(status_line.split()[1]), time.perf_counter() - started))
        writer.close()
        await writer.wait_closed()
        return out

    async def everyone() -> list[list[tuple[int, float]]]:
        return await asyncio.gather(*(client(own) for own in bodies))

    began = time.perf_counter()
    results = [r for batch in asyncio.run(everyone()) for r in batch]
    return results, time.perf_counter() - began


def p99(latencies: Sequence[float]) -> float:
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
