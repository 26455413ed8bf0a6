"""The embedded queue (the default): jobs in SQLite under KITTY_COREML_HOME, run one at a time by a
worker thread in the service process that keeps its engine warm between jobs.

A job survives a restart: on start, jobs still queued stay queued, and the job that was running when
the process died is queued again once (its attempt count says so); interrupted a second time, it fails
with the reason. Finished jobs are kept for settings.job_retention_s, then forgotten.

Several processes may share one home (a second `serve`): each holds a lease, an flock on its own file
under HOME/queue-owners/ for as long as it lives, and stamps the jobs it runs with it. Recovery takes
only started jobs whose owner's lease is free, that is whose owner is gone; never one still running.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..engines.base import CancelToken, ProgressEvent
from ..errors import Cancelled, KittyError, QueueFull
from .base import CANCELLED_CODE, FAILED, FINISHED, QUEUED, STARTED, STATES, failed_fields, new_job_id
from .execute import WarmEngines, run_request

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["EmbeddedQueue", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 2
"""A job interrupted by a crash of the service runs again once; a second interruption fails it."""
_PURGE_EVERY_S = 60.0
_SHUTDOWN = "the service is shutting down"
_EVENT_LOGS_KEPT = 256
"""Progress events are kept in memory for this many of the newest runs, for event streams to replay."""

_OLD_STATES = {"done": FINISHED, "error": FAILED, "cancelled": FAILED}
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    error_code TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""
_TALLIES = (
    "CREATE TABLE IF NOT EXISTS job_tallies (status TEXT PRIMARY KEY, jobs INTEGER NOT NULL)",
    """CREATE TRIGGER job_tallies_insert AFTER INSERT ON jobs BEGIN
        INSERT INTO job_tallies (status, jobs) VALUES (new.status, 1) ON CONFLICT(status) DO UPDATE SET jobs = jobs + 1;
    END""",
    """CREATE TRIGGER job_tallies_delete AFTER DELETE ON jobs BEGIN
        UPDATE job_tallies SET jobs = jobs - 1 WHERE status = old.status;
    END""",
    """CREATE TRIGGER job_tallies_update AFTER UPDATE OF status ON jobs WHEN old.status IS NOT new.status BEGIN
        UPDATE job_tallies SET jobs = jobs - 1 WHERE status = old.status;
        INSERT INTO job_tallies (status, jobs) VALUES (new.status, 1) ON CONFLICT(status) DO UPDATE SET jobs = jobs + 1;
    END""",
)
"""How many jobs each state holds, kept by SQLite itself on every write (ours, another process's, a
person's): a submit reads its queue's length in one lookup instead of counting the queued jobs."""


class _Lease:
    """This process's claim on the jobs it runs: an flock held on HOME/queue-owners/<id>.lock until it
    closes or dies (the kernel drops the lock of a killed process)."""

    def __init__(self, folder: Path):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.owner = uuid.uuid4().hex
        self.path = folder / f"{self.owner}.lock"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(self._fd, str(os.getpid()).encode(), 0)

    def owner_alive(self, owner: str | None) -> bool:
        """Whether the process that stamped a job with `owner` still holds its lease."""
        if not owner or not owner.isalnum():
            return False
        path = self.folder / f"{owner}.lock"
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        path.unlink(missing_ok=True)  # its owner is gone: the file is litter now
        return False

    def release(self) -> None:
        if self._fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self._fd)
            self._fd = None


def _iso(stamp: float | None) -> str | None:
    from datetime import datetime, timezone

    return None if stamp is None else datetime.fromtimestamp(stamp, timezone.utc).isoformat()


class EmbeddedQueue:
    kind = "embedded"

    def __init__(self, settings: Settings, *, db_path: Path | None = None):
        self.settings = settings
        self.db_path = db_path or settings.home / "jobs.sqlite3"
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.db_path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # committed rows survive a killed process
        self._db.executescript(_SCHEMA)
        if "owner" not in {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a database from before leases
        self._lease = _Lease(self.db_path.parent / "queue-owners")
        self._lock = threading.Lock()
        self._keep_tallies()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._engines = WarmEngines(settings)
        self._current: tuple[str, CancelToken] | None = None
        self._events: OrderedDict[str, list[dict[str, Any]]] = OrderedDict()
        self._listeners: list[Callable[[], None]] = []
        self.recovered = self._recover()

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call listener (on whichever thread made the change) whenever this process changes a job or
        logs a progress event, so a follower need not poll for what happens here."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # ---- storage -------------------------------------------------------------------------------

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One transaction, serialised in this process by the lock and across processes by SQLite."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _keep_tallies(self) -> None:
        """Install the tallies' triggers once per database, counting the jobs already there in the same
        transaction (a database from before them, or a second process arriving at the same moment)."""
        with self._tx():
            if self._db.execute("SELECT 1 FROM sqlite_master WHERE name='job_tallies_update'").fetchone():
                return
            for statement in _TALLIES:
                self._db.execute(statement)
            self._db.execute("DELETE FROM job_tallies")
            self._db.execute("INSERT INTO job_tallies (status, jobs) SELECT status, COUNT(*) FROM jobs GROUP BY status")

    def _recover(self) -> dict[str, int]:
        """Settle the jobs a killed process left started: queue each again once, else fail it. Jobs whose
        owner still runs (another process on this home) are left alone."""
        retried = failed = 0
        with self._tx():
            for old, new in _OLD_STATES.items():  # a queue written before the states were KITTY's
                self._db.execute("UPDATE jobs SET status=? WHERE status=?", (new, old))
            rows = self._db.execute("SELECT id, owner, attempts FROM jobs WHERE status=?", (STARTED,)).fetchall()
            for row in rows:
                if self._lease.owner_alive(row["owner"]):
                    continue
                if row["attempts"] < MAX_ATTEMPTS:
                    self._db.execute("UPDATE jobs SET status=?, started=NULL, owner=NULL WHERE id=?",
                                     (QUEUED, row["id"]))
                    retried += 1
                else:
                    self._db.execute(
                        "UPDATE jobs SET status=?, finished=?, error=?, error_code=?, owner=NULL WHERE id=?",
                        (FAILED, time.time(), f"interrupted {MAX_ATTEMPTS} times by a stop of the service while "
                         "running", "interrupted", row["id"]))
                    failed += 1
        return {"requeued": retried, "failed": failed}

    def _view(self, row: sqlite3.Row) -> dict[str, Any]:
        view: dict[str, Any] = {"job_id": row["id"], "status": row["status"], "created_at": _iso(row["created"]),
                                "started_at": _iso(row["started"]), "finished_at": _iso(row["finished"]),
                                "attempts": row["attempts"]}
        if row["status"] == QUEUED:
            ahead = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=? AND seq<?",
                                     (QUEUED, row["seq"])).fetchone()[0]
            view["position"] = ahead + 1
        elif row["status"] == STARTED:
            view["position"] = 0
            events = self._events.get(row["id"])
            if events:
                view["progress"] = events[-1]
        if row["result"]:
            view["result"] = json.loads(row["result"])
        if row["status"] == FAILED:
            view.update(failed_fields(row["error"], row["error_code"]))
        return view

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        job_id, created = new_job_id(), time.time()
        with self._tx():
            tally = self._db.execute("SELECT jobs FROM job_tallies WHERE status=?", (QUEUED,)).fetchone()
            waiting = tally[0] if tally else 0
            if waiting >= self.settings.queue_max:
                raise QueueFull(f"the queue already holds {waiting} job(s), its limit "
                                "(KITTY_COREML_QUEUE_MAX)", hint="try again when some have finished")
            self._db.execute("INSERT INTO jobs (id, status, request, created) VALUES (?, ?, ?, ?)",
                             (job_id, QUEUED, json.dumps(request), created))
        self._wake.set()
        self._changed()
        # the newest job: every other queued job is ahead of it
        return {"job_id": job_id, "status": QUEUED, "created_at": _iso(created), "started_at": None,
                "finished_at": None, "attempts": 0, "position": waiting + 1}

    def get(self, job_id: str) -> dict[str, Any] | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id=?", (job_id,)).fetchone()
            return self._view(row) if row else None

    def cancel(self, job_id: str) -> dict[str, Any] | None:
        with self._tx():
            self._db.execute("UPDATE jobs SET status=?, finished=?, error=?, error_code=? WHERE id=? AND status=?",
                             (FAILED, time.time(), "cancelled through the API before it started", CANCELLED_CODE,
                              job_id, QUEUED))
            current = self._current
        if current is not None and current[0] == job_id:
            current[1].cancel("cancelled through the API")
        self._changed()
        return self.get(job_id)

    def progress_since(self, job_id: str, after: int) -> list[dict[str, Any]]:
        """Every progress event of the job's newest run numbered above `after` (seq counts from 1)."""
        return list(self._events.get(job_id, ())[after:])

    def stats(self) -> dict[str, Any]:
        with self._lock:
            counts = dict.fromkeys(STATES, 0)
            for status, number in self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
                counts[status] = number
            cancelled = self._db.execute("SELECT COUNT(*) FROM jobs WHERE status=? AND error_code=?",
                                         (FAILED, CANCELLED_CODE)).fetchone()[0]
        return {"queue": self.kind, **counts, "cancelled": cancelled, "max_queued": self.settings.queue_max,
                "workers": 1 if self._thread and self._thread.is_alive() else 0,
                "retention_s": self.settings.job_retention_s}

    def counters(self) -> dict[str, float]:
        with self._lock:
            return {name: value for name, value in self._db.execute("SELECT name, value FROM counters")}

    def _count(self, **increments: float) -> None:
        for name, value in increments.items():
            self._db.execute("INSERT INTO counters (name, value) VALUES (?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET value = value + excluded.value", (name, value))

    def _claim(self) -> tuple[str, dict[str, Any]] | None:
        with self._tx():
            row = self._db.execute("SELECT id, request FROM jobs WHERE status=? ORDER BY seq LIMIT 1",
                                   (QUEUED,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE jobs SET status=?, started=?, attempts=attempts+1, owner=? WHERE id=?",
                             (STARTED, time.time(), self._lease.owner, row["id"]))
            token = CancelToken()
            self._current = (row["id"], token)
            return row["id"], json.loads(row["request"])

    def _settle(self, job_id: str, status: str, *, result: dict | None = None, error: KittyError | None = None,
                seconds: float | None = None, publish_failed: bool = False) -> None:
        with self._tx():
            self._db.execute("UPDATE jobs SET status=?, finished=?, result=?, error=?, error_code=? WHERE id=?",
                             (status, time.time(), json.dumps(result) if result is not None else None,
                              error.one_line() if error else None, error.code if error else None, job_id))
            if seconds is not None:
                self._count(generation_seconds_sum=seconds, generation_seconds_count=1)
            self._count(**{f"jobs_{status}_total": 1}, publish_failures=1 if publish_failed else 0)
            self._current = None
        self._changed()

    def _requeue(self, job_id: str) -> None:
        with self._tx():
            self._db.execute("UPDATE jobs SET status=?, started=NULL, attempts=attempts-1 WHERE id=?",
                             (QUEUED, job_id))
            self._current = None
        self._changed()

    def purge(self) -> int:
        """Forget finished jobs older than the retention time."""
        with self._tx():
            return self._db.execute("DELETE FROM jobs WHERE status IN (?, ?) AND finished<?",
                                    (FINISHED, FAILED, time.time() - self.settings.job_retention_s)).rowcount

    # ---- the worker thread -----------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="kitty-coreml-jobs", daemon=True)
            self._thread.start()

    def _work(self) -> None:
        last_purge = 0.0
        while not self._stopping.is_set():
            if time.monotonic() - last_purge > _PURGE_EVERY_S:
                self.purge()
                self._recover()  # another process on this home may have died since
                last_purge = time.monotonic()
            claimed = self._claim()
            if claimed is None:
                self._wake.wait(_PURGE_EVERY_S)
                self._wake.clear()
                continue
            self._changed()
            self._run(*claimed)

    def _run(self, job_id: str, request: dict[str, Any]) -> None:
        token = self._current[1]  # set by _claim

        events = self._events[job_id] = []
        while len(self._events) > _EVENT_LOGS_KEPT:
            self._events.popitem(last=False)

        def on_progress(event: ProgressEvent) -> None:
            events.append(event.to_dict() | {"kind": event.kind, "seq": len(events) + 1})
            self._changed()

        try:
            result, seconds, publish_failed = run_request(request, self.settings, self._engines,
                                                          cancel=token, on_progress=on_progress)
        except Cancelled as exc:
            if self._stopping.is_set() and token.reason == _SHUTDOWN:
                self._requeue(job_id)
            else:
                self._settle(job_id, FAILED, error=exc)
        except KittyError as exc:
            self._settle(job_id, FAILED, error=exc)
        except Exception as exc:  # a bug must fail one job, not stop the queue
            self._settle(job_id, FAILED, error=KittyError(f"internal error: {type(exc).__name__}: {exc}"))
        else:
            self._settle(job_id, FINISHED, result=result, seconds=seconds, publish_failed=publish_failed)

    def close(self) -> None:
        self._stopping.set()
        self._wake.set()
        current = self._current
        if current is not None:
            current[1].cancel(_SHUTDOWN)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._engines.close()
        with self._lock:
            self._db.close()
        self._lease.release()
