"""`kitty-coreml serve`: the HTTP images service; `kitty-coreml worker`: a queue worker for the
distributed (Redis) queue, one per Mac."""

from __future__ import annotations

import sys
from typing import Optional

import typer

from .app import app

QUEUE_URL = "redis://host:port/db of the distributed queue"


def is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(host: str, port: int):
    import socket

    from ..errors import ServiceError

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ServiceError(f"cannot listen on {host}:{port}: {exc.strerror or exc}",
                           hint="pick another --port, or stop what uses it") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


@app.command()
def serve(
    host: Optional[str] = typer.Option(None, "--host", help="Address to bind (default SERVICE_HOST, 127.0.0.1); "
                                                            "anything but loopback needs KITTY_COREML_API_KEY."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default SERVICE_PORT, 8089); 0 picks a free one."),
    queue: Optional[str] = typer.Option(None, "--queue", help=f"{QUEUE_URL}; default: REDIS_URL, else the embedded "
                                                              "SQLite queue in KITTY_COREML_HOME."),
) -> None:
    """Serve KITTY's images API, /metrics and the gallery.

    The paths are KITTY's /api/images/...; /docs has the API, /vision the gallery.

    \b
    Example:
      kitty-coreml serve --port 8089
      then open http://127.0.0.1:8089/vision
    """
    from ..errors import ConfigError, InvalidRequest
    from .common import load_settings

    settings = load_settings()
    source = "SERVICE_HOST" if host is None else "--host"
    host = settings.service_host if host is None else host
    if not is_loopback(host) and not settings.api_key:
        raise ConfigError(f"{source} {host} would open the API to the network without a key",
                          hint="set KITTY_COREML_API_KEY (clients send it as X-API-Key), or bind 127.0.0.1")
    port = settings.service_port if port is None else port
    if not 0 <= port <= 65535:
        raise InvalidRequest("port", port, "an integer 0..65535")
    import uvicorn

    from ..service import create_app

    application = create_app(settings, queue_url=queue)
    sock = _listen(host, port)
    bound = sock.getsockname()[1]
    where = f"[{host}]" if ":" in host else host
    figures = application.state.queue
    recovered = getattr(figures, "recovered", None)
    note = f", after restart: {recovered['requeued']} requeued, {recovered['failed']} failed" if recovered and any(
        recovered.values()) else ""
    sys.stderr.write(f"kitty-coreml serve: listening on http://{where}:{bound} (queue {figures.kind}{note})\n")
    sys.stderr.flush()
    config = uvicorn.Config(application, log_level="warning", access_log=False, limit_concurrency=1024,
                            timeout_graceful_shutdown=10)
    from ..service.local import announced

    # Local callers (the Studio provider, `generate`) find this service through HOME/service.json.
    loopback = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(host, where)
    with announced(settings, f"http://{loopback}:{bound}"):
        uvicorn.Server(config).run(sockets=[sock])


@app.command()
def worker(
    queue: Optional[str] = typer.Option(None, "--queue", help=f"{QUEUE_URL}; default: REDIS_URL. Required: the "
                                                              "embedded queue is served by `serve` alone."),
    burst: bool = typer.Option(False, "--burst", help="Exit once the queue is empty."),
    name: Optional[str] = typer.Option(None, "--name", help="Worker name shown by RQ (default: host and pid)."),
) -> None:
    """Run jobs of the distributed queue here.

    One engine stays warm between jobs.

    \b
    Example:
      kitty-coreml worker --queue redis://queue-host:6379/0
    """
    from ..errors import ConfigError
    from ..jobs.distributed import run_worker
    from .common import load_settings

    settings = load_settings()
    url = queue or settings.redis_url
    if not url:
        raise ConfigError("--queue: none given and REDIS_URL is not set; a worker pulls from a Redis queue only "
                          "(the embedded queue runs inside `serve`)",
                          hint="pass --queue redis://host:port/db or set REDIS_URL")
    sys.stderr.write(f"kitty-coreml worker: pulling jobs from {url}\n")
    sys.stderr.flush()
    run_worker(settings, url, burst=burst, name=name)
