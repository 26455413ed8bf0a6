"""Faults: an engine that crashes, a service killed with SIGKILL while jobs wait."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.proc_utils import read_pid, wait_gone, wait_until

from .conftest import start_worker, stop_process, wait_job


def crash_once_binary(folder: Path, fake_bin: Path, marker: Path) -> Path:
    """The fake StableDiffusionSample, crashing by SIGSEGV at step 1 while the marker file exists (the
    marker is removed as it does): one crash, then healthy runs."""
    wrapper = folder / "CrashOnceSample"
    wrapper.write_text(
        f"#!{sys.executable}\n"
        "import os, sys\n"
        f"marker = {str(marker)!r}\n"
        "if os.path.exists(marker):\n"
        "    os.remove(marker)\n"
        "    os.environ['FAKE_SD_CRASH_AT_STEP'] = '1'\n"
        f"os.execv({str(fake_bin)!r}, [{str(fake_bin)!r}, *sys.argv[1:]])\n")
    wrapper.chmod(0o755)
    return wrapper


def test_engine_crash_fails_one_job_and_the_next_succeeds(env, service_factory, tmp_path, fake_bin):
    marker = tmp_path / "crash-next"
    marker.touch()
    binary = crash_once_binary(tmp_path, fake_bin, marker)
    service = service_factory({**env, "KITTY_COREML_SAMPLE_BIN": str(binary)})
    with service.client() as client:
        first = client.post("/api/images/generate", json={"prompt": "crashes", "steps": 4}).json()["job_id"]
        second = client.post("/api/images/generate", json={"prompt": "works", "steps": 4}).json()["job_id"]
        failed = wait_job(client, first)
        assert failed["status"] == "failed" and failed["error_code"] == "engine_failed"
        assert "signal" in failed["error"].lower() or "SIGSEGV" in failed["error"]
        assert wait_job(client, second)["status"] == "finished"
        metrics = client.get("/metrics").text
        assert 'kitty_coreml_jobs_finished_total{outcome="failed"} 1' in metrics
        assert 'kitty_coreml_jobs_finished_total{outcome="finished"} 1' in metrics


def test_kill_9_with_jobs_queued_then_restart_finishes_every_job(env, service_factory):
    slow = {**env, "FAKE_SD_STEP_DELAY": "0.05"}
    service = service_factory(slow)
    with service.client() as client:
        jobs = [client.post("/api/images/generate", json={"prompt": f"job {i}", "steps": 6}).json()["job_id"]
                for i in range(5)]
        wait_job(client, jobs[0], states=("started",))
    service.stop(signal.SIGKILL)

    restarted = service_factory(slow)
    assert any("1 requeued" in line for line in restarted.log), restarted.log
    with restarted.client() as client:
        finished = {job_id: wait_job(client, job_id) for job_id in jobs}
        assert {job["status"] for job in finished.values()} == {"finished"}, finished
        assert finished[jobs[0]]["attempts"] == 2  # the interrupted one ran again
        keys = {job["result"]["png_key"] for job in finished.values()}
        listed = {item["key"] for item in client.get("/api/images/latest", params={"limit": 100}).json()["items"]}
        assert keys <= listed and len(keys) == 5
        wait_until(lambda: client.get("/api/images/stats").json()["finished"] == 5, 10, "stats to count 5 finished")


def hanging_job(env, service_factory, tmp_path: Path, prompt: str) -> tuple:
    """A service whose engine hangs at step 1 of the one job submitted: (service, job id, engine pid)."""
    pid_file = tmp_path / "engine.pid"
    service = service_factory({**env, "FAKE_SD_HANG_AT_STEP": "1", "FAKE_SD_PID_FILE": str(pid_file)})
    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": prompt, "steps": 4}).json()["job_id"]
        wait_job(client, job_id, states=("started",))
    return service, job_id, read_pid(pid_file)


def test_sigterm_puts_the_running_job_back_and_a_restart_runs_it(env, service_factory, tmp_path):
    service, job_id, engine_pid = hanging_job(env, service_factory, tmp_path, "interrupted")
    service.stop(signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
    wait_gone(engine_pid)  # the engine went down with the service
    restarted = service_factory(env)
    with restarted.client() as client:
        job = wait_job(client, job_id)
        assert job["status"] == "finished" and job["attempts"] == 1  # a clean stop does not use up the retry


def test_a_second_serve_on_the_same_home_leaves_the_running_job_alone(env, service_factory, tmp_path):
    first, job_id, engine = hanging_job(env, service_factory, tmp_path, "owned")
    second = service_factory(env)  # same home; its recovery must not take a job whose owner runs
    assert not any("requeued" in line for line in second.log), second.log
    with second.client() as client:
        job = client.get(f"/api/images/jobs/{job_id}").json()
        assert job["status"] == "started" and job["attempts"] == 1, job
    first.stop(signal.SIGKILL)
    wait_gone(engine)  # the engine died with its service
    third = service_factory(env)  # the owner is gone now: its job runs again, once
    assert any("1 requeued" in line for line in third.log), third.log
    with third.client() as client:
        job = wait_job(client, job_id)
        assert job["status"] == "finished" and job["attempts"] == 2, job
        keys = [item["key"] for item in client.get("/api/images/latest").json()["items"]]
        assert keys == [job["result"]["png_key"]]  # one image for a count-1 job


def test_a_killed_redis_worker_s_job_runs_again_once_then_fails(env, service_factory, redis_url, tmp_path):

    worker_env = {**env, "KITTY_COREML_ENGINE": "sample", "KITTY_COREML_WORKER_LEASE_S": "3"}
    service = service_factory(env, "--queue", redis_url)

    def hanging_worker(attempt: int) -> tuple:
        pid_file = tmp_path / f"engine-{attempt}.pid"
        worker = start_worker({**worker_env, "FAKE_SD_HANG_AT_STEP": "1", "FAKE_SD_PID_FILE": str(pid_file)},
                              redis_url)
        wait_until(lambda: client.get(f"/api/images/jobs/{job_id}").json().get("attempts") == attempt
                   and client.get(f"/api/images/jobs/{job_id}").json()["status"] == "started", 60,
                   f"attempt {attempt} to start")
        return worker, read_pid(pid_file)

    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": "abandoned", "steps": 4}).json()["job_id"]
        for attempt in (1, 2):
            worker, engine = hanging_worker(attempt)
            worker.kill()  # SIGKILL mid-job: no chance to report anything
            worker.wait(timeout=30)
            wait_gone(engine)  # its engine did not outlive it
        healthy = start_worker(worker_env, redis_url)
        try:
            failed = wait_job(client, job_id)
            assert failed["status"] == "failed" and failed["error_code"] == "interrupted", failed
            assert "worker died" in failed["error"] and failed["attempts"] == 2
            fresh = client.post("/api/images/generate", json={"prompt": "after", "steps": 2}).json()["job_id"]
            done = wait_job(client, fresh)
            assert done["status"] == "finished" and done["attempts"] == 1, done
        finally:
            stop_process(healthy)
