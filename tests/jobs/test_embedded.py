"""The embedded SQLite queue on its own: bound, order, restart recovery, retention, the worker thread."""

from __future__ import annotations

import os
import sqlite3
import time

import pytest

from kitty_coreml.errors import QueueFull
from kitty_coreml.jobs.embedded import EmbeddedQueue
from kitty_coreml.request import GenerationRequest
from kitty_coreml.settings import Settings
from tests.proc_utils import wait_until


def settings(home, **env) -> Settings:
    return Settings.from_env({"KITTY_COREML_HOME": str(home), "KITTY_COREML_ENGINE": "mock", **env})


def request(prompt: str = "a cube") -> dict:
    return GenerationRequest(prompt=prompt, width=64, height=64).to_dict()


def test_bound_and_positions(home):
    queue = EmbeddedQueue(settings(home, KITTY_COREML_QUEUE_MAX="3"))
    jobs = [queue.submit(request(f"p{i}")) for i in range(3)]
    assert [job["position"] for job in jobs] == [1, 2, 3]
    with pytest.raises(QueueFull, match="3 job"):
        queue.submit(request())
    queue.cancel(jobs[0]["job_id"])
    assert queue.get(jobs[2]["job_id"])["position"] == 2
    assert queue.submit(request())["position"] == 3
    queue.close()


def die(queue: EmbeddedQueue) -> None:
    """What the kernel does for a killed process: its lease's lock goes (nothing is settled or unlinked)."""
    os.close(queue._lease._fd)
    queue._lease._fd = None


def test_interrupted_job_runs_again_once_then_fails(home):
    first = EmbeddedQueue(settings(home))
    job_id = first.submit(request())["job_id"]
    assert first._claim()[0] == job_id  # started, then the process dies: no settle
    die(first)
    second = EmbeddedQueue(settings(home))
    assert second.recovered == {"requeued": 1, "failed": 0}
    assert second.get(job_id)["status"] == "queued"
    assert second._claim()[0] == job_id
    die(second)
    third = EmbeddedQueue(settings(home))
    assert third.recovered == {"requeued": 0, "failed": 1}
    failed = third.get(job_id)
    assert failed["status"] == "failed" and failed["error_code"] == "interrupted" and failed["attempts"] == 2
    for queue in (first, second, third):
        queue.close()


def test_a_job_whose_owner_still_runs_is_not_taken(home):
    first = EmbeddedQueue(settings(home))
    job_id = first.submit(request())["job_id"]
    assert first._claim()[0] == job_id  # running in a process that is alive
    second = EmbeddedQueue(settings(home))  # a second service on the same home
    assert second.recovered == {"requeued": 0, "failed": 0}
    assert second.get(job_id)["status"] == "started" and second._claim() is None
    die(first)
    assert second._recover() == {"requeued": 1, "failed": 0}  # the sweep takes it once its owner is gone
    for queue in (first, second):
        queue.close()


def test_finished_jobs_are_forgotten_after_the_retention_time(home):
    queue = EmbeddedQueue(settings(home, KITTY_COREML_JOB_RETENTION_S="60"))
    old, fresh = queue.submit(request())["job_id"], queue.submit(request())["job_id"]
    for job_id in (old, fresh):
        queue.cancel(job_id)
    with sqlite3.connect(queue.db_path) as db:
        db.execute("UPDATE jobs SET finished=? WHERE id=?", (time.time() - 61, old))
    assert queue.purge() == 1
    assert queue.get(old) is None and queue.get(fresh)["status"] == "failed" and queue.get(fresh)["cancelled"] is True
    queue.close()


def test_worker_thread_runs_jobs_in_order_and_counts(home):
    queue = EmbeddedQueue(settings(home))
    ids = [queue.submit(request(f"p{i}"))["job_id"] for i in range(3)]
    queue.start()
    wait_until(lambda: all(queue.get(i)["status"] == "finished" for i in ids), 30, "three jobs finished")
    started = [queue.get(i)["started_at"] for i in ids]
    assert started == sorted(started)
    counters = queue.counters()
    assert counters["jobs_finished_total"] == 3 and counters["generation_seconds_count"] == 3
    assert queue.stats()["finished"] == 3
    queue.close()


def test_a_queue_written_with_the_old_state_words_reads_in_kittys(home):
    queue = EmbeddedQueue(settings(home))
    ids = [queue.submit(request(f"p{i}"))["job_id"] for i in range(3)]
    queue.close()
    with sqlite3.connect(home / "jobs.sqlite3") as db:
        for job_id, old, code in zip(ids, ("done", "error", "cancelled"), (None, "engine_failed", "cancelled")):
            db.execute("UPDATE jobs SET status=?, error=?, error_code=?, finished=? WHERE id=?",
                       (old, None if old == "done" else "went wrong", code, time.time(), job_id))
    reopened = EmbeddedQueue(settings(home))
    views = [reopened.get(job_id) for job_id in ids]
    assert [view["status"] for view in views] == ["finished", "failed", "failed"]
    assert [view.get("cancelled") for view in views] == [None, False, True]
    assert {k: reopened.stats()[k] for k in ("finished", "failed", "cancelled")} == {"finished": 1, "failed": 2,
                                                                                   "cancelled": 1}
    reopened.close()


def test_positions_and_the_bound_stay_right_through_cancels_finishes_and_purges(home):
    """The queue's length is a kept tally: every way a job leaves the queued state must move it."""
    queue = EmbeddedQueue(settings(home, KITTY_COREML_QUEUE_MAX="3", KITTY_COREML_JOB_RETENTION_S="60"))
    first, second, third = (queue.submit(request(f"p{i}"))["job_id"] for i in range(3))
    queue.cancel(second)  # queued -> failed
    claimed, _ = queue._claim()  # queued -> started, then finished
    assert claimed == first
    queue._settle(first, "finished", result={"png_key": "images/x.png"})
    assert queue.get(third)["position"] == 1
    fourth = queue.submit(request("p3"))
    assert fourth["position"] == 2 and queue.get(fourth["job_id"]) == fourth
    queue.submit(request("p4"))
    with pytest.raises(QueueFull, match="3 job"):
        queue.submit(request("p5"))
    with sqlite3.connect(queue.db_path) as db:  # past the retention: the purge forgets the settled two
        db.execute("UPDATE jobs SET finished=? WHERE id IN (?, ?)", (time.time() - 61, first, second))
    assert queue.purge() == 2
    with pytest.raises(QueueFull, match="3 job"):  # purging settled jobs frees no queue place
        queue.submit(request("p6"))
    queue.cancel(third)
    assert queue.submit(request("p7"))["position"] == 3
    assert queue.stats()["queued"] == 3
    queue.close()


def test_a_second_process_and_a_database_from_before_the_tallies_count_alike(home):
    """Two queues on one home see each other's submissions; a database written before the tallies
    existed is counted when it is opened."""
    queue = EmbeddedQueue(settings(home, KITTY_COREML_QUEUE_MAX="4"))
    [queue.submit(request(f"p{i}")) for i in range(2)]
    queue.close()
    with sqlite3.connect(home / "jobs.sqlite3") as db:
        for trigger in ("insert", "delete", "update"):
            db.execute(f"DROP TRIGGER job_tallies_{trigger}")
        db.execute("DROP TABLE job_tallies")
    first = EmbeddedQueue(settings(home, KITTY_COREML_QUEUE_MAX="4"))
    second = EmbeddedQueue(settings(home, KITTY_COREML_QUEUE_MAX="4"))
    assert first.submit(request("p2"))["position"] == 3
    assert second.submit(request("p3"))["position"] == 4
    with pytest.raises(QueueFull, match="4 job"):
        first.submit(request("p4"))
    for queue in (first, second):
        queue.close()


def test_listeners_hear_every_change_after_it_is_written(home):
    """What an event stream is woken by: each call sees the change it is told of already in the queue."""
    queue = EmbeddedQueue(settings(home))
    heard: list[tuple[str, int]] = []
    job_id = ""

    def listener() -> None:
        job = queue.get(job_id) if job_id else None
        heard.append((job["status"] if job else "none", len(queue.progress_since(job_id, 0)) if job_id else 0))

    queue.on_change(listener)
    job_id = queue.submit(request())["job_id"]
    assert heard == [("none", 0)]  # the submit itself: job_id is only known once it returns
    heard.clear()
    queue.cancel(job_id)
    assert heard == [("failed", 0)]

    heard.clear()
    job_id = ""
    job_id = queue.submit(request())["job_id"]
    queue.start()
    wait_until(lambda: queue.get(job_id)["status"] == "finished", 30, "the job to finish")
    queue.close()
    statuses = [status for status, _ in heard]
    assert statuses[:2] == ["none", "started"] and statuses[-1] == "finished"
    events = len(queue.progress_since(job_id, 0))
    assert events > 0 and heard[-1] == ("finished", events)
    # the claim, then one call per progress event, each after the event is logged
    assert [n for status, n in heard if status == "started"] == list(range(events + 1))
