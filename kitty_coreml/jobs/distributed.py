"""The distributed queue: jobs go through RQ on Redis (REDIS_URL or `--queue redis://...`), and
`kitty-coreml worker --queue redis://...` on each Mac pulls them, as does a plain
`rq worker -w rq.worker.SimpleWorker images` where kitty-coreml is installed (jobs name their function
by import path, and it reads its settings from the environment). The RQ queue is named by
KITTY_COREML_QUEUE_NAME, default `images`, as KITTY's.

Workers are rq.worker.SimpleWorker: RQ's default worker forks a child per job, and a forked child
crashes on macOS once Core ML / Metal has been touched in the parent. A SimpleWorker runs jobs in its
own process, which is also what lets it keep one engine warm between jobs.

Progress travels in the job's meta; cancelling a started job sets a Redis key that the worker watches.
Counters for /metrics live in one Redis hash, incremented by the workers.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, ConfigError, KittyError, QueueFull, ServiceError
from .base import CANCELLED_CODE, FAILED, FINISHED, QUEUED, STARTED, failed_fields, new_job_id

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["RedisQueue", "run_job", "run_worker"]

_METRICS_KEY = "kitty-coreml:metrics"
_CANCEL_KEY = "kitty-coreml:cancel:{}"
_CANCEL_POLL_S = 0.2
_PROGRESS_EVERY_S = 0.2
"""Progress is written to Redis at most this often; the final step always."""

_worker_settings: Settings | None = None
_worker_engines = None


def _connect(url: str):
    from redis import Redis

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"queue: got {url!r}; allowed: a redis://host:port/db URL")
    return Redis.from_url(url)


def _ping(connection: Any, url: str) -> None:
    from redis.exceptions import RedisError

    try:
        connection.ping()
    except RedisError as exc:
        raise ServiceError(f"cannot reach Redis at {url}: {exc}", hint="start redis-server or fix REDIS_URL") from None


def _iso(stamp: Any) -> str | None:
    if stamp is None:
        return None
    from datetime import timezone

    return stamp.replace(tzinfo=stamp.tzinfo or timezone.utc).isoformat()


class RedisQueue:
    kind = "redis"

    def __init__(self, settings: Settings, url: str):
        from rq import Queue

        self.settings = settings
        self.url = url
        self.redis = _connect(url)
        _ping(self.redis, url)
        self.queue = Queue(settings.queue_name, connection=self.redis)

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        waiting = self.queue.count
        if waiting >= self.settings.queue_max:
            raise QueueFull(f"the queue already holds {waiting} job(s), its limit (KITTY_COREML_QUEUE_MAX)",
                            hint="try again when some have finished")
        timeout = request.get("timeout_s") or self.settings.timeout_s
        job = self.queue.enqueue(run_job, request, job_id=new_job_id(), job_timeout=int(timeout) + 120,
                                 result_ttl=int(self.settings.job_retention_s),
                                 failure_ttl=int(self.settings.job_retention_s))
        return self._view(job)

    def _fetch(self, job_id: str):
        from rq.exceptions import NoSuchJobError
        from rq.job import Job

        if not job_id.isalnum():
            return None
        try:
            return Job.fetch(job_id, connection=self.redis)
        except NoSuchJobError:
            return None

    def _view(self, job: Any) -> dict[str, Any]:
        rq_status = job.get_status(refresh=True)
        status = rq_status.value if hasattr(rq_status, "value") else str(rq_status)
        meta = job.get_meta(refresh=True)
        view: dict[str, Any] = {"job_id": job.id, "created_at": _iso(job.enqueued_at or job.created_at),
                                "started_at": _iso(job.started_at), "finished_at": _iso(job.ended_at),
                                "attempts": 1 if job.started_at else 0}
        if meta.get("worker"):
            view["worker"] = meta["worker"]
        if status in ("queued", "deferred", "scheduled"):
            view["status"] = QUEUED
            position = self.queue.get_job_position(job.id)
            view["position"] = position + 1 if position is not None else None
        elif status == "started":
            view["status"] = STARTED
            view["position"] = 0
            if meta.get("progress"):
                view["progress"] = meta["progress"]
        elif status == "finished":
            view["status"] = FINISHED
            view["result"] = job.return_value()
        elif status in ("canceled", "stopped") or meta.get("error_code") == CANCELLED_CODE:
            view["status"] = FAILED
            view.update(failed_fields(meta.get("error") or "cancelled", CANCELLED_CODE))
        else:
            view["status"] = FAILED
            view.update(failed_fields(meta.get("error") or _last_line(job.latest_result()),
                                      meta.get("error_code") or "worker_failed"))
        return view

    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._fetch(job_id)
        return self._view(job) if job is not None else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        job = self._fetch(job_id)
        if job is None:
            return None
        status = job.get_status(refresh=True)
        status = status.value if hasattr(status, "value") else str(status)
        if status in ("queued", "deferred", "scheduled"):
            job.meta.update(error="cancelled through the API before it started", error_code=CANCELLED_CODE)
            job.save_meta()
            job.cancel()
        elif status == "started":
            self.redis.set(_CANCEL_KEY.format(job_id), "cancelled through the API", ex=int(self.settings.timeout_s) + 300)
        return self._view(job)

    def progress_since(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """The newest progress event, when it is newer than `after`: workers write a sample, not a log."""
        job = self._fetch(job_id)
        progress = job.get_meta(refresh=True).get("progress") if job is not None else None
        return [progress] if progress and progress.get("seq", 0) > after else []

    def stats(self) -> dict[str, Any]:
        from rq import Worker

        cancelled = self.queue.canceled_job_registry.count
        return {"queue": self.kind, QUEUED: self.queue.count, STARTED: self.queue.started_job_registry.count,
                FINISHED: self.queue.finished_job_registry.count,
                FAILED: self.queue.failed_job_registry.count + cancelled, "cancelled": cancelled,
                "queue_name": self.settings.queue_name, "max_queued": self.settings.queue_max,
                "workers": Worker.count(queue=self.queue), "retention_s": self.settings.job_retention_s}

    def counters(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(_METRICS_KEY).items()}

    def start(self) -> None:
        """Workers run elsewhere (`kitty-coreml worker`)."""

    def close(self) -> None:
        self.redis.close()


def _last_line(result: Any) -> str:
    text = (getattr(result, "exc_string", None) or "the worker failed without a message").strip()
    return text.splitlines()[-1] if text else "the worker failed without a message"


def run_job(request: dict[str, Any]) -> dict[str, Any]:
    """What a worker runs for one job (RQ imports it by name): generate on the worker's warm engine."""
    from rq import get_current_job

    from ..engines.base import CancelToken, ProgressEvent
    from ..settings import Settings
    from .execute import WarmEngines, run_request

    global _worker_engines
    settings = _worker_settings or Settings.from_env()
    if _worker_engines is None:
        _worker_engines = WarmEngines(settings)
    job = get_current_job()
    redis = job.connection
    job.meta["worker"] = f"{socket.gethostname()}:{os.getpid()}"
    job.save_meta()
    token = CancelToken()
    finished = threading.Event()
    last_write = [0.0]
    written = [0]

    def watch_cancel() -> None:
        while not finished.wait(_CANCEL_POLL_S):
            reason = redis.get(_CANCEL_KEY.format(job.id))
            if reason:
                token.cancel(reason.decode())
                return

    def on_progress(event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - last_write[0] >= _PROGRESS_EVERY_S or event.step == event.total:
            last_write[0] = now
            written[0] += 1
            job.meta["progress"] = event.to_dict() | {"kind": event.kind, "seq": written[0]}
            job.save_meta()

    watcher = threading.Thread(target=watch_cancel, name="kitty-coreml-cancel-watch", daemon=True)
    watcher.start()
    try:
        result, seconds, publish_failed = run_request(request, settings, _worker_engines, cancel=token,
                                                      on_progress=on_progress)
    except KittyError as exc:
        job.meta.update(error=exc.one_line(), error_code=CANCELLED_CODE if isinstance(exc, Cancelled) else exc.code)
        job.save_meta()
        redis.hincrbyfloat(_METRICS_KEY, f"jobs_{FAILED}_total", 1)
        raise
    finally:
        finished.set()
        redis.delete(_CANCEL_KEY.format(job.id))
    pipe = redis.pipeline()
    pipe.hincrbyfloat(_METRICS_KEY, "generation_seconds_sum", seconds)
    pipe.hincrbyfloat(_METRICS_KEY, "generation_seconds_count", 1)
    pipe.hincrbyfloat(_METRICS_KEY, f"jobs_{FINISHED}_total", 1)
    pipe.hincrbyfloat(_METRICS_KEY, "publish_failures", 1 if publish_failed else 0)
    pipe.execute()
    return result


def run_worker(settings: Settings, url: str, *, burst: bool = False, name: str | None = None) -> bool:
    """Pull and run jobs until stopped (SIGINT/SIGTERM) or, with burst, until the queue is empty."""
    from rq import Queue
    from rq.worker import SimpleWorker

    from .execute import WarmEngines

    global _worker_settings, _worker_engines
    connection = _connect(url)
    _ping(connection, url)
    _worker_settings = settings
    _worker_engines = WarmEngines(settings)
    worker = SimpleWorker([Queue(settings.queue_name, connection=connection)], connection=connection, name=name)
    try:
        return worker.work(burst=burst, with_scheduler=False, logging_level="WARNING")
    finally:
        _worker_engines.close()
