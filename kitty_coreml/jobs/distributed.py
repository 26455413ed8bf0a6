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

A worker that dies mid-job: RQ keeps each running job in its StartedJobRegistry with an expiry that the
worker renews (RQ's execution heartbeat); a SimpleWorker renews it only between jobs, so ours renews it
from a thread while the job runs, every quarter of KITTY_COREML_WORKER_LEASE_S (a plain `rq worker` does
not: its dead worker's job is found only past the job's timeout + 60 s). A job whose renewals stop
is "abandoned": RQ's registry cleanup, run by every worker's maintenance, retries it while it has retries
left (Retry(max=MAX_ATTEMPTS - 1), used only for abandonment: an ordinary failure clears them), then fails it.

Redis down or hung: every call has a short timeout (KITTY_COREML_REDIS_TIMEOUT_S) and becomes a
ServiceError (HTTP 503) naming Redis; workers wait with backoff until it is back, and stop cleanly.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, ConfigError, KittyError, QueueFull, ServiceError
from .base import CANCELLED_CODE, FAILED, FINISHED, QUEUED, STARTED, failed_fields, new_job_id

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["RedisQueue", "run_job", "run_worker", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 2
"""A job whose worker died runs once more; a second death fails it (as the embedded queue does)."""
_ABANDONED = "AbandonedJobError"
_BACKOFF_MAX_S = 30.0

_METRICS_KEY = "kitty-coreml:metrics"
_CANCEL_KEY = "kitty-coreml:cancel:{}"
_CANCEL_POLL_S = 0.2
_PROGRESS_EVERY_S = 0.2
"""Progress is written to Redis at most this often; the final step always."""

_worker_settings: Settings | None = None
_worker_engines = None


def _connect(url: str, timeout_s: float):
    from redis import Redis

    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"queue: got {url!r}; allowed: a redis://host:port/db URL")
    try:
        return Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except ValueError as exc:
        raise ConfigError(f"queue: got {url!r}; allowed: a redis://host:port/db URL ({exc})") from None


def _unreachable(url: str, exc: BaseException) -> ServiceError:
    return ServiceError(f"cannot reach Redis at {url}: {exc or type(exc).__name__}",
                        hint="start redis-server or fix REDIS_URL; queued jobs wait in Redis")


def _ping(connection: Any, url: str) -> None:
    from redis.exceptions import RedisError

    try:
        connection.ping()
    except RedisError as exc:
        raise _unreachable(url, exc) from None


def _redis_call(method: Callable) -> Callable:
    """A RedisQueue method whose Redis failure (down, hung past the timeout) is a ServiceError: HTTP 503."""

    @functools.wraps(method)
    def call(self: RedisQueue, *args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return method(self, *args, **kwargs)
        except RedisError as exc:
            raise _unreachable(self.url, exc) from None

    return call


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
        self.redis = _connect(url, settings.redis_timeout_s)
        _ping(self.redis, url)
        self.queue = Queue(settings.queue_name, connection=self.redis)

    @_redis_call
    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        """One round trip to Redis: RQ's enqueue and the queue's length after it, in one transaction. The
        length is the new job's position (jobs are appended); past the limit the job is taken back out."""
        from rq import Retry

        timeout = request.get("timeout_s") or self.settings.timeout_s
        retention = int(self.settings.job_retention_s)
        with self.redis.pipeline() as pipe:
            job = self.queue.enqueue_call(run_job, args=(request,), job_id=new_job_id(), timeout=int(timeout) + 120,
                                          result_ttl=retention, failure_ttl=retention,
                                          retry=Retry(max=MAX_ATTEMPTS - 1), pipeline=pipe)
            pipe.llen(self.queue.key)
            length = pipe.execute()[-1]
        if length > self.settings.queue_max:
            self._withdraw(job, length - 1)
        return {"job_id": job.id, "created_at": _iso(job.enqueued_at or job.created_at), "started_at": None,
                "finished_at": None, "attempts": 0, "status": QUEUED, "position": length}

    def _withdraw(self, job: Any, waiting: int) -> None:
        """Take back a job pushed past the limit and refuse it; one a worker took meanwhile stays taken
        (the queue had room for it after all)."""
        if self.redis.lrem(self.queue.key, 1, job.id):
            with self.redis.pipeline() as pipe:
                job.delete(pipeline=pipe, remove_from_queue=False)
                pipe.execute()
            raise QueueFull(f"the queue already holds {waiting} job(s), its limit (KITTY_COREML_QUEUE_MAX)",
                            hint="try again when some have finished")

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
                                "attempts": meta.get("attempts", 1 if job.started_at else 0)}
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
            failure = "" if meta.get("error") else _failure_text(job)
            if meta.get("error"):  # run_job's own record of a KittyError
                view.update(failed_fields(meta["error"], meta.get("error_code") or "worker_failed"))
            elif not failure or _ABANDONED in failure:
                # RQ's cleanup failed it as abandoned (RQ 1.x sets the status a moment before the text)
                view.update(failed_fields(f"its worker died while running it, {MAX_ATTEMPTS} times "
                                          "(killed, or lost its connection to Redis)", "interrupted"))
            else:
                view.update(failed_fields(failure, "worker_failed"))
        return view

    @_redis_call
    def get(self, job_id: str) -> dict[str, Any] | None:
        job = self._fetch(job_id)
        return self._view(job) if job is not None else None

    @_redis_call
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

    @_redis_call
    def progress_since(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """The newest progress event, when it is newer than `after`: workers write a sample, not a log."""
        job = self._fetch(job_id)
        progress = job.get_meta(refresh=True).get("progress") if job is not None else None
        return [progress] if progress and progress.get("seq", 0) > after else []

    @_redis_call
    def stats(self) -> dict[str, Any]:
        from rq import Worker

        cancelled = self.queue.canceled_job_registry.count
        return {"queue": self.kind, QUEUED: self.queue.count, STARTED: self.queue.started_job_registry.count,
                FINISHED: self.queue.finished_job_registry.count,
                FAILED: self.queue.failed_job_registry.count + cancelled, "cancelled": cancelled,
                "queue_name": self.settings.queue_name, "max_queued": self.settings.queue_max,
                "workers": Worker.count(queue=self.queue), "retention_s": self.settings.job_retention_s}

    @_redis_call
    def counters(self) -> dict[str, float]:
        return {k.decode(): float(v) for k, v in self.redis.hgetall(_METRICS_KEY).items()}

    def start(self) -> None:
        """Workers run elsewhere (`kitty-coreml worker`)."""

    def close(self) -> None:
        self.redis.close()


def _failure_text(job: Any) -> str:
    """RQ's record of a failure: its latest result, else (RQ 1.x, an abandoned job) exc_info; "" if none."""
    return (getattr(job.latest_result(), "exc_string", None) or job.exc_info or "").strip()


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
    job.meta["attempts"] = job.meta.get("attempts", 0) + 1
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
        job.retries_left = 0  # retries are for a worker that died, not for a job that failed
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


def _leased_worker_class(stop: threading.Event):
    from rq.worker import SimpleWorker

    class LeasedWorker(SimpleWorker):
        """A SimpleWorker that renews its running job's hold in RQ's StartedJobRegistry while the job runs,
        so a killed worker's job expires after one lease instead of after its whole timeout. Written
        against RQ's public worker hooks as they are from 1.16 (the floor) to 3.x."""

        lease_s = 30.0
        _lease_execution: Any = None

        def get_heartbeat_ttl(self, job: Any, *args: Any, **kwargs: Any) -> int:
            return max(1, int(self.lease_s))

        def prepare_execution(self, job: Any) -> Any:
            """RQ 2+: keep the execution, whose heartbeat is what holds the job in the registry."""
            self._lease_execution = super().prepare_execution(job)
            return self._lease_execution

        def _install_signal_handlers(self) -> None:
            super()._install_signal_handlers()
            if stop.is_set():  # a stop signal came before RQ's handlers were in place: honour it
                self._stop_requested = True
                self._shutdown_requested_date = now_utc()

        def _renew(self, job: Any) -> None:
            if "execution" not in inspect.signature(self.maintain_heartbeats).parameters:
                self.maintain_heartbeats(job)  # RQ before 3: the worker knows its execution
            elif self._lease_execution is not None:
                self.maintain_heartbeats(job, self._lease_execution)

        def execute_job(self, job: Any, queue: Any) -> None:
            from redis.exceptions import RedisError

            self._lease_execution = None
            done = threading.Event()

            def renew() -> None:
                while not done.wait(self.lease_s / 4):
                    try:
                        self._renew(job)
                    except RedisError:
                        pass  # Redis is away; the next renewal tries again

            beat = threading.Thread(target=renew, name="kitty-coreml-lease", daemon=True)
            beat.start()
            try:
                super().execute_job(job, queue)
            finally:
                done.set()
                beat.join()

    return LeasedWorker


class _OneLineLogs(logging.Filter):
    """RQ logs some errors with their traceback (Redis vanishing mid-loop): a user sees one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            error = record.exc_info[1]
            record.msg, record.args = f"{record.getMessage()} ({type(error).__name__}: {error})", None
            record.exc_info = record.exc_text = None
        return True


def now_utc():
    from datetime import datetime, timezone

    return datetime.now(timezone.utc)


def run_worker(settings: Settings, url: str, *, burst: bool = False, name: str | None = None,
               notify: Callable[[str], None] | None = None) -> bool:
    """Pull and run jobs until stopped (SIGINT/SIGTERM) or, with burst, until the queue is empty. While
    Redis is unreachable the worker waits, with backoff, and a stop signal still ends it cleanly."""
    from redis.exceptions import RedisError
    from rq import Queue

    from .execute import WarmEngines

    global _worker_settings, _worker_engines
    say = notify or (lambda text: (sys.stderr.write(f"kitty-coreml worker: {text}\n"), sys.stderr.flush()))
    stop = threading.Event()  # RQ's own handlers replace ours while it works; ours cover the rest

    def on_stop(signum: int, frame: Any) -> None:
        stop.set()

    def own_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_stop)

    own_signals()
    logging.getLogger("rq.worker").addFilter(_OneLineLogs())
    # RQ's stop signal raises StopRequested wherever it lands; inside a log call, logging would print that
    # as a "--- Logging error ---" traceback. The stop itself is recorded by RQ's handler before it raises.
    logging.raiseExceptions = False
    thread_errors = threading.excepthook

    def one_line_redis_errors(args: Any) -> None:
        """RQ's pubsub listener thread dies with a traceback when Redis goes: one line instead."""
        if issubclass(args.exc_type, RedisError):
            say(f"lost Redis in {args.thread.name if args.thread else 'a thread'}: {args.exc_value}")
        else:
            thread_errors(args)

    threading.excepthook = one_line_redis_errors
    connection = _connect(url, settings.redis_timeout_s)
    _ping(connection, url)
    _worker_settings = settings
    _worker_engines = WarmEngines(settings)
    worker_class = _leased_worker_class(stop)
    worker_class.lease_s = settings.worker_lease_s
    lease = int(settings.worker_lease_s)
    backoff = 1.0
    worked = False
    try:
        while not stop.is_set():
            # worker_ttl - 15 is how long RQ blocks waiting for a job: keep it near the lease, so that idle
            # workers also run the maintenance that requeues abandoned jobs about once per lease.
            worker = worker_class([Queue(settings.queue_name, connection=connection)], connection=connection, name=name,
                                  job_monitoring_interval=lease, maintenance_interval=lease)
            worker.worker_ttl = lease + 15  # the keyword changed name between RQ releases; the attribute did not
            lost: BaseException | None = None
            try:
                try:
                    worked = worker.work(burst=burst, with_scheduler=False, logging_level="WARNING") or worked
                finally:
                    own_signals()
            except RedisError as exc:
                lost = exc
            except Exception:
                # RQ's signal handler raises its StopRequested wherever the signal lands, its own teardown
                # included: after a stop request that is the stop, anything else is a real failure.
                if worker._shutdown_requested_date is None:
                    raise
            if worker._shutdown_requested_date is not None or stop.is_set():
                say("stopped" + (f" (Redis at {url} unreachable: {lost})" if lost else ""))
                return worked
            if burst and lost is None:
                return worked
            say(f"lost Redis at {url} ({lost or 'it stopped answering'}); retrying in {backoff:g} s")
            if stop.wait(backoff):
                break
            backoff = min(backoff * 2, _BACKOFF_MAX_S)
        say("stopped")
        return worked
    finally:
        _worker_engines.close()
