"""Running one queued job: the same orchestrator.generate() as the CLI, on a warm engine kept between jobs."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import EngineError, PublishPending
from ..storage import sidecar_key

if TYPE_CHECKING:
    from ..engines.base import CancelToken, Engine, ProgressCallback
    from ..settings import Settings

__all__ = ["WarmEngines", "run_request", "result_view"]


class WarmEngines:
    """One engine per engine name, created on first use and reused by every later job (a warm worker
    keeps its model loaded). An engine that failed is closed and made afresh for the next job."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._engines: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def get(self, name: str) -> Engine:
        from ..engines import create_engine

        with self._lock:
            if name not in self._engines:
                self._engines[name] = create_engine(name, self.settings)
            return self._engines[name]

    def discard(self, name: str) -> None:
        with self._lock:
            engine = self._engines.pop(name, None)
        if engine is not None:
            engine.close()

    def close(self) -> None:
        with self._lock:
            engines, self._engines = list(self._engines.values()), {}
        for engine in engines:
            engine.close()


def result_view(result: dict[str, Any]) -> dict[str, Any]:
    """KITTY's result shape ({png_key, meta_key}) for the first image, plus every image and the whole
    GenerationResult (seed, runId, model, engine, images, warnings, timings, request)."""
    keys = [image["key"] for image in result["images"]]
    return {"png_key": keys[0], "meta_key": sidecar_key(keys[0]), "png_keys": keys,
            "meta_keys": [sidecar_key(key) for key in keys], **result}


def run_request(request: dict[str, Any], settings: Settings, engines: WarmEngines, *,
                cancel: CancelToken, on_progress: ProgressCallback) -> tuple[dict[str, Any], float, bool]:
    """(result view, generation seconds, whether publishing failed). Raises the orchestrator's KittyError
    on failure; images that could not be published stay in the outbox and the job still succeeds. The
    body's warnings (fields ignored, a seed of -1) queued beside the request come first in the result's."""
    from ..orchestrator import generate, resolve
    from ..request import GenerationRequest

    request = dict(request)
    body_warnings = list(request.pop("warnings", None) or [])
    parsed = GenerationRequest.from_dict(request)
    _, _, engine_name, _, _ = resolve(parsed, settings, prefer_warm=True)
    engine = engines.get(engine_name)
    started = time.monotonic()
    publish_failed = False
    try:
        result = generate(parsed, settings, engine=engine, on_progress=on_progress, cancel=cancel).to_dict()
    except PublishPending as exc:
        result = exc.details["result"]
        result["warnings"] = [*result.get("warnings", []), exc.one_line()]
        publish_failed = True
    except EngineError:
        engines.discard(engine_name)  # a crashed warm worker is not reused
        raise
    result["warnings"] = [*body_warnings, *result.get("warnings", [])]
    return result_view(result), time.monotonic() - started, publish_failed
