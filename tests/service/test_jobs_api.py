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


def test_events_stream_progress_then_finished(env, service_factory):
    service = service_factory({**env, "FAKE_SD_STEP_DELAY": "0.02"})
    with service.client() as client:
        job = client.post("/api/images/generate", json={"prompt": "a red cube", "steps": 8}).json()
        events = _events(service, job["job_id"])
    names = [name for name, _ in events]
    assert names[-1] == "finished" and events[-1][1]["result"]["png_key"].endswith(".png")
    steps = [data for name, data in events if name == "progress" and data.get("kind") == "step"]
    assert [s["step"] for s in steps] == list(range(1, 10)) and {s["total"] for s in steps} == {9}  # pndm: steps + 1
    numbers = [data["seq"] for name, data in events if name == "progress"]
    assert numbers == list(range(1, len(numbers) + 1))  # every event, none skipped (loading, sampling, steps, saved)
    assert "status" in names


def test_a_size_the_model_does_not_make_is_fitted_with_a_warning(env, service_factory, home):
    service = service_factory(env)
    with service.client() as client:
        job = client.post("/api/images/generate", json={"prompt": "x", "width": 768, "height": 512}).json()
        result = wait_job(client, job["job_id"])["result"]
        assert client.post("/api/images/generate", json={"prompt": "x", "width": 100}).status_code == 422
    fitted = "made at 512x512, fitted to 768x512"
    assert any(w.startswith(fitted) for w in result["warnings"]), result["warnings"]
    assert (result["images"][0]["width"], result["images"][0]["height"]) == (768, 512)
    png = (home / "store" / result["png_key"]).read_bytes()
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (768, 512)
    sidecar = json.loads((home / "store" / result["meta_key"]).read_text())
    assert any(w.startswith(fitted) for w in sidecar["warnings"]) and sidecar["width"] == 768


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
        assert cancelled["status"] == "failed" and cancelled["cancelled"] is True
        assert client.get(f"/api/images/jobs/{third['job_id']}").json()["position"] == 1
        client.post(f"/api/images/jobs/{running}/cancel")
        assert wait_job(client, running)["status"] == "failed"
        # the queue moves on: the third job runs (and hangs too) once the first is cancelled
        wait_job(client, third["job_id"], states=("started",))
        client.post(f"/api/images/jobs/{third['job_id']}/cancel")
        assert wait_job(client, third["job_id"])["cancelled"] is True
        stats = client.get("/api/images/stats").json()
        assert stats["cancelled"] == stats["failed"] == 3 and stats["queued"] == 0 and stats["started"] == 0
