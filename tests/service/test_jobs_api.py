"""Progress events, queue positions and cancelling, on the fake StableDiffusionSample (a real subprocess
per job) behind a real service."""

from __future__ import annotations

import json

import httpx

from .conftest import wait_job


def _events(service, job_id: str) -> list[tuple[str, dict]]:
    events, name = [], None
    with httpx.stream("GET", f"{service.url}/api/images/jobs/{job_id}/events", timeout=60) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        for line in stream.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((name, json.loads(line[5:])))
    return events


def test_events_stream_progress_then_done(env, service_factory):
    service = service_factory({**env, "FAKE_SD_STEP_DELAY": "0.02"})
    with service.client() as client:
        job = client.post("/api/images/generate", json={"prompt": "a red cube", "steps": 8}).json()
        events = _events(service, job["job_id"])
    names = [name for name, _ in events]
    assert names[-1] == "done" and events[-1][1]["result"]["png_key"].endswith(".png")
    steps = [data for name, data in events if name == "progress" and data.get("kind") == "step"]
    assert [s["step"] for s in steps] == list(range(1, 10)) and {s["total"] for s in steps} == {9}  # pndm: steps + 1
    numbers = [data["seq"] for name, data in events if name == "progress"]
    assert numbers == list(range(1, len(numbers) + 1))  # every event, none skipped (loading, sampling, steps, saved)
    assert "status" in names


def test_width_other_than_the_models_native_size_is_422(env, service_factory):
    service = service_factory(env)
    with service.client() as client:
        answer = client.post("/api/images/generate", json={"prompt": "x", "width": 768, "height": 512})
        assert answer.status_code == 422 and answer.json()["detail"].startswith("width: got 768; allowed: 512")
        assert client.post("/api/images/generate", json={"prompt": "x", "width": 512, "height": 512}).status_code == 202


def test_positions_and_cancel_queued_and_started(env, service_factory, tmp_path):
    service = service_factory({**env, "FAKE_SD_HANG_AT_STEP": "2", "FAKE_SD_PID_FILE": str(tmp_path / "sd.pid")})
    with service.client() as client:
        running = client.post("/api/images/generate", json={"prompt": "hangs"}).json()["job_id"]
        wait_job(client, running, states=("started",))
        second = client.post("/api/images/generate", json={"prompt": "second"}).json()
        third = client.post("/api/images/generate", json={"prompt": "third"}).json()
        assert (second["position"], third["position"]) == (1, 2)
        assert client.get(f"/api/images/jobs/{running}").json()["position"] == 0
        cancelled = client.post(f"/api/images/jobs/{second['job_id']}/cancel").json()
        assert cancelled["status"] == "cancelled"
        assert client.get(f"/api/images/jobs/{third['job_id']}").json()["position"] == 1
        client.post(f"/api/images/jobs/{running}/cancel")
        assert wait_job(client, running)["status"] == "cancelled"
        # the queue moves on: the third job runs (and hangs too) once the first is cancelled
        wait_job(client, third["job_id"], states=("started",))
        client.post(f"/api/images/jobs/{third['job_id']}/cancel")
        assert wait_job(client, third["job_id"])["status"] == "cancelled"
        stats = client.get("/api/images/stats").json()
        assert stats["cancelled"] == 3 and stats["queued"] == 0 and stats["started"] == 0
