"""Faults: an engine that crashes, a service killed with SIGKILL while jobs wait."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from tests.proc_utils import wait_until

from .conftest import wait_job


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


def test_sigterm_puts_the_running_job_back_and_a_restart_runs_it(env, service_factory, tmp_path):
    from tests.proc_utils import read_pid, wait_gone

    pid_file = tmp_path / "engine.pid"
    service = service_factory({**env, "FAKE_SD_HANG_AT_STEP": "1", "FAKE_SD_PID_FILE": str(pid_file)})
    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": "interrupted", "steps": 4}).json()["job_id"]
        wait_job(client, job_id, states=("started",))
    engine_pid = read_pid(pid_file)
    service.stop(signal.SIGTERM)  # uvicorn shuts down gracefully, then re-raises the signal
    wait_gone(engine_pid)  # the engine went down with the service
    restarted = service_factory(env)
    with restarted.client() as client:
        job = wait_job(client, job_id)
        assert job["status"] == "finished" and job["attempts"] == 1  # a clean stop does not use up the retry
