"""redis-server killed or stalled, and `kitty-coreml worker` killed, at each stage of a distributed job:
the service answers 503 in JSON (quickly, naming Redis) and /healthz says what is down; workers wait
for Redis with backoff and stop cleanly on a signal; a job waiting in Redis is not lost."""

from __future__ import annotations

import signal

import httpx
import pytest

from tests.proc_utils import wait_until
from tests.service.conftest import start_worker, stop_process, wait_job

from .conftest import assert_all_gone

def registered_workers(url: str) -> int:
    import redis
    from rq import Worker

    with redis.Redis.from_url(url) as connection:
        return Worker.count(connection=connection)


FAST = {"KITTY_COREML_REDIS_TIMEOUT_S": "0.5", "KITTY_COREML_WORKER_LEASE_S": "3"}


def assert_redis_down(client: httpx.Client, url: str) -> None:
    for method, path in (("POST", "/api/images/generate"), ("GET", "/api/images/stats"),
                         ("GET", "/api/images/jobs/0123abcd"), ("GET", "/metrics")):
        answer = client.request(method, path, json={"prompt": "x"} if method == "POST" else None)
        assert answer.status_code == 503, (path, answer.text)
        assert answer.headers["content-type"].startswith("application/json") and url in answer.json()["detail"]
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json()["status"] == "down"
    assert "Redis" in health.json()["down"]["queue"]


@pytest.mark.parametrize("fault", ["killed", "stalled"])
def test_the_service_answers_503_while_redis_is_away_and_recovers(mock_env, service_factory, redis_server, fault):
    service = service_factory({**mock_env, **FAST}, "--queue", redis_server.url)
    with service.client() as client:
        queued = client.post("/api/images/generate", json={"prompt": "before"}).json()["job_id"]
        if fault == "killed":
            redis_server.kill()
        else:
            redis_server.pause()  # accepts connections, answers nothing
        assert_redis_down(client, redis_server.url)
        if fault == "killed":
            redis_server.start()  # its append-only file still holds the queue
        else:
            redis_server.resume()
        assert client.get("/healthz").status_code == 200
        assert client.get(f"/api/images/jobs/{queued}").json()["status"] == "queued"  # not lost
        worker = start_worker({**mock_env, **FAST}, redis_server.url)
        try:
            assert wait_job(client, queued)["status"] == "finished"
        finally:
            stop_process(worker)


def test_an_idle_worker_waits_out_a_redis_restart_and_then_works(mock_env, service_factory, redis_server):
    worker = start_worker({**mock_env, **FAST}, redis_server.url)
    service = service_factory({**mock_env, **FAST}, "--queue", redis_server.url)
    with service.client() as client:
        first = client.post("/api/images/generate", json={"prompt": "one"}).json()["job_id"]
        assert wait_job(client, first)["status"] == "finished"
        redis_server.kill()
        redis_server.start()
        second = client.post("/api/images/generate", json={"prompt": "two"}).json()["job_id"]
        job = wait_job(client, second)
        assert job["status"] == "finished" and job["attempts"] == 1, job
        assert worker.poll() is None  # the same worker, still running
        keys = [item["key"] for item in client.get("/api/images/latest").json()["items"]]
        assert len(keys) == len(set(keys))
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=60) == 0
    assert "Traceback" not in worker.stderr.read()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_stopped_while_redis_is_down_exits_cleanly(mock_env, redis_server, sig):
    worker = start_worker({**mock_env, **FAST}, redis_server.url)
    try:
        wait_until(lambda: registered_workers(redis_server.url) == 1, 60, "the worker to register in Redis")
        redis_server.kill()
        worker.send_signal(sig)
        rest = worker.stderr.read()  # to its end: the worker has exited
        assert worker.wait(timeout=60) == 0, rest
        assert "Traceback" not in rest and "internal error" not in rest, rest
    finally:
        stop_process(worker)
    assert_all_gone(worker.pid)


def test_a_worker_killed_before_it_takes_a_job_loses_nothing(env, service_factory, redis_server, tmp_path):
    """Killed while the job waits (queued stage): the job stays queued and the next worker runs it once."""
    service = service_factory({**env, **FAST}, "--queue", redis_server.url)
    with service.client() as client:
        doomed = start_worker({**env, **FAST}, redis_server.url)
        doomed.kill()
        doomed.wait(timeout=30)
        job_id = client.post("/api/images/generate", json={"prompt": "waits", "steps": 2}).json()["job_id"]
        assert client.get(f"/api/images/jobs/{job_id}").json()["status"] == "queued"
        worker = start_worker({**env, **FAST}, redis_server.url)
        try:
            job = wait_job(client, job_id)
            assert job["status"] == "finished" and job["attempts"] == 1, job
        finally:
            stop_process(worker)
