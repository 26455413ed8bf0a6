"""`kitty-coreml generate --server URL [--wait]`: the request goes to an images service; with --wait the
job is followed with the same progress display as a local generation."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..request import GenerationRequest
    from ..settings import Settings

__all__ = ["submit_remote"]


def submit_remote(server: str, request: GenerationRequest, settings: Settings, *, wait: bool) -> dict[str, Any]:
    """Without wait: the queued job ({job_id, status, position, ...}). With wait: the job's result
    (the GenerationResult's fields plus png_key and meta_key); a failed job raises its one-line error."""
    from ..progress import ProgressEvent
    from ..progress import ProgressPrinter
    from .client import ServiceClient
    from .body import body_from_request

    client = ServiceClient(server, api_key=settings.api_key)
    job = client.submit(body_from_request(request))
    if not wait:
        return job
    printer = ProgressPrinter(settings.progress, steps=request.steps, scheduler=request.scheduler)
    fields = ("step", "total", "images", "message", "rate")

    def on_progress(data: dict[str, Any]) -> None:
        printer(ProgressEvent(data.get("kind", "info"), **{name: data.get(name) for name in fields}))

    def on_status(data: dict[str, Any]) -> None:
        if data["status"] == "queued":
            printer(ProgressEvent("waiting", message=f"job {data['job_id']} queued at position {data.get('position')}"))
        elif data["status"] == "started":
            printer(ProgressEvent("info", message=f"job {data['job_id']} started"
                                                  + (f" on {data['worker']}" if data.get("worker") else "")))

    try:
        result = client.wait(job["job_id"], on_progress=on_progress, on_status=on_status)
    finally:
        printer.close()
    return result if "images" in result else _from_kitty_result(result, request, job["job_id"])


def _from_kitty_result(result: dict[str, Any], request: GenerationRequest, job_id: str) -> dict[str, Any]:
    """KITTY's own service answers only {png_key, meta_key}: the rest of a result is what was asked."""
    width, height = request.width or 1024, request.height or 1024  # KITTY's defaults
    key = result.get("png_key") or ""
    return {**result, "seed": request.seed if request.seed is not None else "chosen by the service",
            "runId": request.run_id or job_id, "model": request.model, "engine": "the service's",
            "images": [{"index": 0, "key": key, "storageUri": key, "path": None, "width": width,
                        "height": height, "published": True}],
            "warnings": ["the service answered only KITTY's png_key and meta_key: seed and size are those asked for"]}
