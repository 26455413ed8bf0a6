"""The distributed queue: a service and `kitty-coreml worker` processes meeting in a real redis-server."""

from __future__ import annotations

import redis
from rq import Queue

from .conftest import start_worker, stop_process, wait_job


def test_jobs_go_through_redis_to_a_worker(env, mock_env, service_factory, redis_url, tmp_path):
    service = service_factory(mock_env, "--queue", redis_url)
    worker_home = tmp_path / "worker-home"
    worker_env = {**mock_env, "KITTY_COREML_HOME": str(worker_home)}
    with service.client() as client:
        queued = [client.post("/api/images/generate", json={"prompt": f"remote {i}", "width": 64, "height": 64})
                  for i in range(3)]
        assert [a.status_code for a in queued] == [200] * 3
        assert [a.json()["position"] for a in queued] == [1, 2, 3]  # the submit's answer knows it too
        ids = [a.json()["job_id"] for a in queued]
        assert [client.get(f"/api/images/jobs/{i}").json()["position"] for i in ids] == [1, 2, 3]
        cancelled = client.post(f"/api/images/jobs/{ids[2]}/cancel").json()
        assert cancelled["status"] == "failed" and cancelled["cancelled"] is True
        worker = start_worker(worker_env, redis_url)
        try:
            for job_id in ids[:2]:
                job = wait_job(client, job_id)
                assert job["status"] == "finished" and job["result"]["png_key"].endswith(".png"), job
                assert job["worker"]
                assert (worker_home / "store" / job["result"]["png_key"]).is_file()  # made by the worker
            stats = client.get("/api/images/stats").json()
            assert stats["queue"] == "redis" and stats["finished"] == 2 and stats["workers"] == 1
            assert stats["cancelled"] == 1 and stats["failed"] == 1
            assert 'kitty_coreml_jobs_finished_total{outcome="finished"} 2' in client.get("/metrics").text
        finally:
            stop_process(worker)


def test_redis_queue_bound_and_worker_errors(mock_env, service_factory, redis_url, env):
    service = service_factory({**mock_env, "KITTY_COREML_QUEUE_MAX": "2"}, "--queue", redis_url)
    with service.client() as client:
        answers = [client.post("/api/images/generate", json={"prompt": f"p{i}"}) for i in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].headers["retry-after"] and answers[2].json()["error"]["code"] == "queue_full"
        assert Queue("images", connection=redis.Redis.from_url(redis_url)).count == 2
        # a worker whose engine fails reports the engine's one-line reason through the job
        worker = start_worker({**env, "KITTY_COREML_ENGINE": "sample", "FAKE_SD_FAIL": "boom"}, redis_url, "--burst")
        assert worker.wait(timeout=60) == 0
        for answer in answers[:2]:
            job = client.get(f"/api/images/jobs/{answer.json()['job_id']}").json()
            assert job["status"] == "failed" and job["cancelled"] is False and "boom" in job["error"] and job["error_code"] == "engine_failed", job
        stats = client.get("/api/images/stats").json()
        assert stats["failed"] == 2 and stats["queued"] == 0, stats
