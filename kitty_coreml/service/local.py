"""The warm path: find the `kitty-coreml serve` of this home, hand it a request, follow its progress and
fetch the images, so one model load serves a whole session instead of one load per image.

`kitty-coreml serve` announces itself in HOME/service.json ({url, pid}; no key is written there) for
as long as it listens. Callers (the Studio provider, `kitty-coreml generate`) try `find_service`; when
nothing answers they generate cold as before. Standard library only: the provider starts once per image.

Job words: today's service says queued/started/done/error/cancelled; KITTY's vocabulary, which the
service moves to, says queued/started/finished/failed with cancelled as failed + cancelled:true. Both
are understood."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, EngineTimeout, KittyError, ServiceError

if TYPE_CHECKING:
    from ..engines.base import CancelToken
    from ..request import GenerationRequest
    from ..settings import Settings

__all__ = ["ANNOUNCE_NAME", "LocalService", "WarmRun", "WarmUnavailable", "announced", "find_service", "run_warm",
           "generate_warm"]

ANNOUNCE_NAME = "service.json"
_PROBE_TIMEOUT_S = 2.0
_READ_TIMEOUT_S = 60.0
"""Longest quiet spell on the event stream; the service sends a keep-alive well within it."""
SUCCESS = ("done", "finished")
FAILURE = ("error", "failed")


class WarmUnavailable(ServiceError):
    """The service did not take the request (unreachable, full, refused it): run it cold instead."""


@dataclass(frozen=True)
class LocalService:
    url: str
    pid: int


@dataclass
class WarmRun:
    """What the service did: the result view, where the images now are, how long the job queued and its
    queue position when submitted."""

    result: dict[str, Any]
    images: list[Path]
    queue_wait_s: float
    position: int | None


def _announce_path(settings: Settings) -> Path:
    return settings.home / ANNOUNCE_NAME


@contextmanager
def announced(settings: Settings, url: str) -> Iterator[None]:
    """Say, while the block runs, that this process serves `url` for this home; then take it back
    (only if it is still ours: a newer service may have announced itself meanwhile). A service killed by
    a signal leaves the file behind; find_service ignores it once that process is gone or silent."""
    from ..atomic import write_json

    path = _announce_path(settings)
    write_json(path, {"url": url, "pid": os.getpid()})
    try:
        yield
    finally:
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (OSError, ValueError):
            pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_service(settings: Settings) -> LocalService | None:
    """The service announced for this home when its process lives and its root answers; else None."""
    try:
        data = json.loads(_announce_path(settings).read_text())
        service = LocalService(str(data["url"]).rstrip("/"), int(data["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not service.url.startswith("http://127.") and not service.url.startswith("http://localhost") \
            and not service.url.startswith("http://[::1]"):
        return None  # only a service on this machine: the images it writes are read from this disk
    if not _alive(service.pid):
        return None
    from .loopback import loopback_request

    try:
        with loopback_request(service.url, "GET", "/healthz", timeout=_PROBE_TIMEOUT_S) as response:
            if response.status != 200:
                return None
            json.loads(response.read())
    except (OSError, ValueError):
        return None
    return service


def _final(job: dict[str, Any]) -> bool:
    return job.get("status") in (*SUCCESS, *FAILURE, "cancelled")


def _outcome(job: dict[str, Any], service: LocalService) -> dict[str, Any]:
    status = job.get("status")
    if status in SUCCESS:
        return job["result"]
    message = " ".join(str(job.get("error") or status).split())
    if status == "cancelled" or job.get("cancelled"):
        raise Cancelled(f"the images service at {service.url} cancelled the job: {message}")
    raise ServiceError(f"the warm engine at {service.url} failed: {message}")


def run_warm(service: LocalService, request: GenerationRequest, settings: Settings, dest: Path | None, *,
             on_progress: Callable[[Any], None] | None = None, cancel: CancelToken | None = None) -> WarmRun:
    """Submit a request to the service, follow it to its end within request.timeout_s (then cancel it),
    and copy its PNGs into `dest` (None: leave them where the service stored them). WarmUnavailable when
    the service does not take the request; ServiceError when the job fails there."""
    from ..progress import ProgressEvent
    from .body import body_from_request
    from .client import ServiceClient

    emit = on_progress or (lambda event: None)
    client = ServiceClient(service.url, api_key=settings.api_key, loopback=True)
    submitted = time.monotonic()
    deadline = submitted + (request.timeout_s or settings.timeout_s)
    try:
        job = client.submit(body_from_request(request))
    except KittyError as exc:
        raise WarmUnavailable(exc.one_line()) from None
    job_id, position = job["job_id"], job.get("position")
    started_at: float | None = None
    final: dict[str, Any] | None = None
    fields = ("step", "total", "images", "message", "rate")
    try:
        while final is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (cancel is not None and cancel.cancelled):
                break
            try:
                for event, data in client.events(job_id, timeout=min(remaining, _READ_TIMEOUT_S)):
                    if cancel is not None and cancel.cancelled:
                        break
                    if event != "progress" and isinstance(data, dict) and _final(data):
                        final = data
                        break
                    if event == "status":
                        if data.get("status") == "queued" and data.get("position"):
                            emit(ProgressEvent("waiting", message=f"queued on the warm engine at position "
                                                                  f"{data['position']}"))
                        elif data.get("status") == "started" and started_at is None:
                            started_at = time.monotonic()
                    elif event == "progress":
                        if started_at is None:
                            started_at = time.monotonic()
                        emit(ProgressEvent(data.get("kind", "info"), **{k: data.get(k) for k in fields}))
                    if time.monotonic() > deadline:
                        break
                if final is None and not (cancel is not None and cancel.cancelled) and time.monotonic() < deadline:
                    job = client.job(job_id)  # the stream ended early (a proxy cut it): ask once
                    final = job if _final(job) else None
            except TimeoutError:  # a quiet stream: open it again while time is left
                continue
    except BaseException:
        _cancel_quietly(client, job_id)
        raise
    if final is None:
        _cancel_quietly(client, job_id)
        if cancel is not None and cancel.cancelled:
            raise Cancelled(f"cancelled: {cancel.reason}")
        raise EngineTimeout(f"the warm engine at {service.url} did not finish within "
                            f"{request.timeout_s or settings.timeout_s:g} s (job {job_id} cancelled)",
                            hint="raise SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS, or ask for fewer images")
    result = _outcome(final, service)
    queue_wait = _queued_s(final)
    if queue_wait is None:
        queue_wait = (started_at or time.monotonic()) - submitted
    images = _fetch_images(client, result, dest) if dest is not None else []
    return WarmRun(result=result, images=images, queue_wait_s=queue_wait, position=position)


def _queued_s(job: dict[str, Any]) -> float | None:
    """How long the job waited for the engine, by the service's own clock (created -> started)."""
    from datetime import datetime

    try:
        return max(0.0, (datetime.fromisoformat(job["started_at"])
                         - datetime.fromisoformat(job["created_at"])).total_seconds())
    except (KeyError, TypeError, ValueError):
        return None


def _cancel_quietly(client: Any, job_id: str) -> None:
    try:
        client.cancel(job_id)
    except KittyError:
        pass


def _fetch_images(client: Any, result: dict[str, Any], dest: Path) -> list[Path]:
    """Each image's PNG through the service (a local file or S3 alike), into dest."""
    from ..atomic import write_bytes

    paths = []
    for image in result["images"]:
        path = dest / Path(image["key"]).name
        write_bytes(path, client.image(image["key"]))
        paths.append(path)
    return paths


def generate_warm(request: GenerationRequest, settings: Settings, *,
                  on_progress: Callable[[Any], None] | None = None) -> tuple[dict[str, Any], str] | None:
    """`kitty-coreml generate` on the running service: (result, service URL), the images left where the
    service stores them; None when no service of this home takes it (then the caller runs it cold)."""
    if request.input_image is not None:
        return None  # image-to-image input is a local file the service does not take over HTTP
    service = find_service(settings)
    if service is None:
        return None
    try:
        run = run_warm(service, request, settings, None, on_progress=on_progress)
    except WarmUnavailable:
        return None
    return run.result, service.url
