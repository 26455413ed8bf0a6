"""The HTTP service: KITTY's images-service paths under /api/images (answers field for field as KITTY's,
docs/kitty.md), GET / (KITTY's service info to JSON clients, the gallery to browsers), /healthz,
/metrics, the OpenAPI docs (/docs) and the gallery page (/vision). Every request goes through the job queue, and every job
through orchestrator.generate(). FastAPI is imported at the top: only `kitty-coreml serve` imports
this module (through kitty_coreml.service.create_app), never `generate`."""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import (FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response,
                               StreamingResponse)
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from ..errors import (ConfigError, InstallError, InvalidRequest, KittyError, ModelError, NotFound,
                      PlatformUnsupported, QueueFull, ServiceError, StoreError)
from .limits import BodyLimit
from .metrics import CONTENT_TYPE, render_metrics
from .schema import GenerateBody, request_from_body
from .security import RequestGuard

if TYPE_CHECKING:
    from ..jobs import JobQueue
    from ..request import GenerationRequest
    from ..settings import Settings

__all__ = ["create_app", "http_status", "STATIC_DIR", "EVENT_POLL_S"]

STATIC_DIR = Path(__file__).resolve().with_name("static")
EVENT_POLL_S = 0.1
"""How often an event stream looks at its job when nothing told it of a change (each look is one SQLite
or Redis read): the embedded queue tells of its own changes at once; the Redis queue's workers, and
another process on the same home, are only seen by looking."""
_HEARTBEAT_S = 15.0


class _ChangeBell:
    """Wakes the event streams of this app when the queue tells of a change (on any thread)."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: set[asyncio.Event] = set()

    def ring(self) -> None:
        loop = self._loop
        try:
            if loop is not None and not loop.is_closed():
                loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop closed meanwhile: no stream is left to wake
            pass

    def _wake(self) -> None:
        for waiter in self._waiters:
            waiter.set()

    @asynccontextmanager
    async def listening(self):
        """An Event rung by every change from now on, for the block's length."""
        self._loop = asyncio.get_running_loop()
        waiter = asyncio.Event()
        self._waiters.add(waiter)
        try:
            yield waiter
        finally:
            self._waiters.discard(waiter)


async def _next_change(waiter: asyncio.Event, timeout: float) -> None:
    """Until the bell rings (or timeout); then ready for the next ring. Anything that changed before the
    return is seen by what the caller reads next."""
    try:
        await asyncio.wait_for(waiter.wait(), timeout)
    except TimeoutError:
        pass
    waiter.clear()


def http_status(exc: KittyError) -> int:
    if isinstance(exc, (InvalidRequest, ModelError)):
        return 422
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, QueueFull):
        return 429
    if isinstance(exc, (PlatformUnsupported, InstallError, ConfigError, ServiceError)):
        return 503
    if isinstance(exc, StoreError):
        return 502
    return 500


def _error_response(exc: KittyError):
    status = http_status(exc)
    headers = {"Retry-After": "5"} if status == 429 else None
    return JSONResponse({"detail": exc.one_line(), "error": exc.to_dict()}, status_code=status, headers=headers)


def _validation_message(errors: list[dict[str, Any]]) -> KittyError:
    """FastAPI's own validation errors (a malformed JSON body, a bad query value) as one line."""
    first = errors[0] if errors else {}
    location = [str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path")]
    field = ".".join(location) or "body"
    return InvalidRequest(field, first.get("input"), first.get("msg", "a valid value"))


def create_app(settings: Settings, queue: JobQueue | None = None, *, queue_url: str | None = None):
    """The FastAPI application. The queue is made here (create_queue) unless given; it is started when
    the app starts and closed when it stops."""
    from ..jobs import FAILED, FINAL_STATES, create_queue
    from ..orchestrator import resolve
    from ..storage import create_store
    from ..storage.local import check_key

    queue = queue or create_queue(settings, queue_url)
    store = create_store(settings)
    bell = _ChangeBell()
    if hasattr(queue, "on_change"):
        queue.on_change(bell.ring)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        queue.start()
        try:
            yield
        finally:
            await run_in_threadpool(queue.close)

    app = FastAPI(title="kitty-coreml images service", version="1", lifespan=lifespan,
                  description="KITTY's images-service API over local Core ML generation.")
    app.state.queue = queue
    app.state.settings = settings

    @app.exception_handler(KittyError)
    async def kitty_error(request: Request, exc: KittyError):
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return _error_response(_validation_message(list(exc.errors())))

    key_header = APIKeyHeader(name="X-API-Key", auto_error=False,
                              description="Needed when the service runs with KITTY_COREML_API_KEY set.")

    async def require_key(given: str | None = Depends(key_header)) -> None:
        """Async: nothing here blocks, and a plain def would cost every request a trip to the thread pool."""
        if settings.api_key is None:
            return
        if not given:
            raise HTTPException(401, "missing X-API-Key header", headers={"WWW-Authenticate": "X-API-Key"})
        if not hmac.compare_digest(given.encode(), settings.api_key.encode()):
            raise HTTPException(403, "wrong X-API-Key")

    api = APIRouter(prefix="/api/images", dependencies=[Depends(require_key)], tags=["images"])

    def job_or_404(job: dict[str, Any] | None, job_id: str) -> dict[str, Any]:
        if job is None:
            raise NotFound(f"no job {job_id!r} (unknown, or finished longer ago than the retention time)")
        return job

    @api.post("/generate", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": GenerateBody.model_json_schema()}}}})
    async def submit(request: Request) -> dict[str, Any]:
        """Queue a generation: {job_id, status: "queued", position, seed, run_id, warnings}. 422 names a bad
        field; 429 when full."""
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise InvalidRequest("body", "not JSON", f"a JSON object ({exc})") from None
        parsed, warnings = request_from_body(body)
        # One trip to the thread pool for both blocking steps (the model registry, the queue's store).
        return await run_in_threadpool(enqueue, parsed, warnings)

    def enqueue(parsed: GenerationRequest, warnings: list[str]) -> dict[str, Any]:
        try:
            resolved, *_ = resolve(parsed, settings, prefer_warm=True)
            parsed = replace(parsed, seed=resolved.seed, run_id=resolved.run_id)
        except (ModelError, PlatformUnsupported, InstallError, ConfigError):
            if queue.kind != "redis":
                raise
            # The workers may hold models this machine does not; they check again.
        job = queue.submit(parsed.to_dict() | ({"warnings": warnings} if warnings else {}))
        return {"job_id": job["job_id"], "status": job["status"], "position": job.get("position"),
                "seed": parsed.seed, "run_id": parsed.run_id, "warnings": warnings}

    @api.get("/jobs/{job_id}")
    async def job_status(job_id: str) -> dict[str, Any]:
        """{status: queued|started|finished|failed, position, progress, result (finished: png_key, meta_key,
        ...) | error, error_code and cancelled (failed)}."""
        return {"result": None, "error": None, **job_or_404(await run_in_threadpool(queue.get, job_id), job_id)}

    @api.post("/jobs/{job_id}/cancel")
    async def cancel_job(job_id: str) -> dict[str, Any]:
        """Cancel a queued job, or stop a started one after its current step."""
        return job_or_404(await run_in_threadpool(queue.cancel, job_id), job_id)

    @api.get("/jobs/{job_id}/events", response_class=StreamingResponse)
    async def job_events(job_id: str, request: Request):
        """Server-sent events: `status` whenever the state or queue position changes, `progress` for each
        engine event (embedded queue; the Redis queue sends the workers' samples), then one final
        `finished` or `failed` event with the whole job. Progress events carry their number as `id:` (the
        final event the next number); a client reconnecting with `Last-Event-ID: N` gets only what came
        after event N (no status it has already seen: progress N means it saw the job start)."""
        last_event_id = _last_event_id(request.headers.get("last-event-id"))
        first = job_or_404(await run_in_threadpool(queue.get, job_id), job_id)

        async def stream():
            async with bell.listening() as changed:
                seen, last_sent = last_event_id, time.monotonic()
                last_status = ((first["status"], first.get("position")) if seen and first["status"] == "started"
                               else None)
                while True:
                    job = await run_in_threadpool(queue.get, job_id)
                    if job is None:
                        yield _sse(FAILED, {"job_id": job_id, "status": FAILED, "error": "the job disappeared",
                                            "error_code": "not_found", "cancelled": False})
                        return
                    status = (job["status"], job.get("position"))
                    if status != last_status and job["status"] not in FINAL_STATES:
                        last_status, last_sent = status, time.monotonic()
                        yield _sse("status", {k: v for k, v in job.items() if k != "progress"})
                    # read after the job: every event of a job seen finished is already logged
                    for event in await run_in_threadpool(queue.progress_since, job_id, seen):
                        seen, last_sent = event.get("seq", seen + 1), time.monotonic()
                        yield _sse("progress", event, event_id=seen)
                    if job["status"] in FINAL_STATES:
                        yield _sse(job["status"], job, event_id=seen + 1)
                        return
                    if time.monotonic() - last_sent >= _HEARTBEAT_S:
                        last_sent = time.monotonic()
                        yield ": keep-alive\n\n"
                    if await request.is_disconnected():
                        return
                    await _next_change(changed, EVENT_POLL_S)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @api.get("/latest")
    async def latest(limit: int = Query(36, ge=1, le=1000)) -> dict[str, Any]:
        """{items: [{key, size, last_modified}]}: PNGs only, newest first."""
        return {"items": await run_in_threadpool(store.list, limit)}

    @api.get("/gallery")
    async def gallery(limit: int = Query(36, ge=1, le=200)) -> dict[str, Any]:
        """The newest images with what their sidecars say: prompt, seed, model, time, size."""

        def collect() -> list[dict[str, Any]]:
            from concurrent.futures import ThreadPoolExecutor

            items = store.list(limit)
            with ThreadPoolExecutor(8) as pool:
                sidecars = list(pool.map(lambda item: store.read_sidecar(item["key"]) or {}, items))
            return [{**item, **_sidecar_fields(sidecar)} for item, sidecar in zip(items, sidecars)]

        return {"items": await run_in_threadpool(collect)}

    @api.get("/file/{key:path}", response_class=FileResponse)
    async def image_file(key: str):
        """The PNG of a key: the file of the local store, or a redirect to S3's presigned URL."""
        from urllib.parse import urlparse
        from urllib.request import url2pathname

        check_key(key, settings.prefix)
        url = (await run_in_threadpool(store.select, key))["imageRef"]["downloadUrl"]
        if url.startswith("file:"):
            return FileResponse(url2pathname(urlparse(url).path), media_type="image/png",
                                headers={"Cache-Control": "private, max-age=86400"})
        return RedirectResponse(url, status_code=307)

    @api.post("/select", openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"type": "object", "required": ["key"], "properties": {"key": {"type": "string"}}}}}}})
    async def select(request: Request) -> dict[str, Any]:
        """{imageRef: {downloadUrl, storageUri, key}} for a key inside the prefix."""
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as exc:
            raise InvalidRequest("body", "not JSON", f"a JSON object ({exc})") from None
        if not isinstance(body, dict) or "key" not in body:
            raise InvalidRequest("key", None, f"a PNG key inside the prefix {settings.prefix!r}")
        key = check_key(body["key"], settings.prefix)
        selected = await run_in_threadpool(store.select, key)
        return {**selected, "imageRef": {**selected["imageRef"], "key": key}}

    @api.get("/stats")
    async def stats() -> dict[str, Any]:
        """KITTY's integer queued, started, finished, failed; beside them cancelled (among failed), the queue
        bound, workers."""
        return await run_in_threadpool(queue.stats)

    app.include_router(api)

    @app.get("/healthz", tags=["service"])
    async def healthz():
        try:
            figures = await run_in_threadpool(queue.stats)
        except KittyError as exc:  # say what is down, as JSON, rather than fail
            return JSONResponse({"status": "down", "queue": queue.kind, "down": {"queue": exc.one_line()}},
                                status_code=503)
        return {"status": "ok", "queue": queue.kind, "workers": figures.get("workers", 0)}

    @app.get("/metrics", tags=["service"], response_class=Response)
    async def metrics():
        figures = await run_in_threadpool(queue.stats)
        counters = await run_in_threadpool(queue.counters)
        return Response(render_metrics(figures, counters), media_type=CONTENT_TYPE)

    @app.get("/vision", tags=["gallery"], response_class=HTMLResponse)
    async def vision():
        return FileResponse(STATIC_DIR / "vision.html", media_type="text/html")

    @app.get("/", tags=["service"])
    async def root(request: Request):
        """KITTY's service info {service, status: "online", engine, queue_name} (what its start script
        probes); a browser (Accept: text/html) is sent to the gallery."""
        if "text/html" in request.headers.get("accept", ""):
            return RedirectResponse("/vision")
        return {"service": "kitty-coreml images service", "status": "online", "engine": settings.engine,
                "queue_name": settings.queue_name, "queue": queue.kind}

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    app.add_middleware(RequestGuard, allowed_hosts=settings.allowed_hosts, cors_origins=settings.cors_origins)
    app.add_middleware(BodyLimit)
    return app


_GALLERY_FIELDS = ("prompt", "negative_prompt", "seed", "model", "created", "width", "height", "steps", "cfg")


def _sidecar_fields(sidecar: dict[str, Any]) -> dict[str, Any]:
    """What the gallery shows from a sidecar: ours carries the fields at its top; KITTY's own
    ({engine, request: {prompt, width, height, steps, cfg, seed, model, refiner}, timestamp}) in `request`."""
    request = sidecar.get("request") if isinstance(sidecar.get("request"), dict) else {}
    fields = {name: sidecar.get(name, request.get(name)) for name in _GALLERY_FIELDS}
    if fields["cfg"] is None:
        fields["cfg"] = request.get("guidance")
    if fields["created"] is None and isinstance(sidecar.get("timestamp"), int | float):
        from datetime import datetime, timezone

        fields["created"] = datetime.fromtimestamp(sidecar["timestamp"], timezone.utc).isoformat()
    return fields


def _sse(event: str, data: Any, event_id: int | None = None) -> str:
    head = f"id: {event_id}\n" if event_id is not None else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'), default=str)}\n\n"


def _last_event_id(raw: str | None) -> int:
    """The Last-Event-ID header of a reconnecting event-stream client: the number of its last event."""
    if raw is None or not raw.strip():
        return 0
    if not raw.strip().isdigit():
        raise InvalidRequest("Last-Event-ID", raw, "the number of an event of this stream (an integer >= 0)")
    return int(raw.strip())
