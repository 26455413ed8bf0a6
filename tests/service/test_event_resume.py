"""Event streams that resume: every progress event carries its number as `id:`, and a client that
reconnects with `Last-Event-ID` gets only what it missed (a real service, the fake StableDiffusionSample)."""

from __future__ import annotations

import json

import httpx

from .conftest import wait_job


def read_events(service, job_id: str, *, last_event_id: str | None = None,
                stop_after_id: int | None = None) -> list[tuple[str | None, str, dict]]:
    """(id, event, data) of each event, read until the stream ends or event `stop_after_id` came
    (then the connection is dropped, as a client losing its network would)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id is not None else {}
    events: list[tuple[str | None, str, dict]] = []
    event_id, name = None, None
    with httpx.stream("GET", f"{service.url}/api/images/jobs/{job_id}/events", headers=headers,
                      timeout=60) as stream:
        for line in stream.iter_lines():
            if line.startswith("id:"):
                event_id = line[3:].strip()
            elif line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                events.append((event_id, name, json.loads(line[5:])))
                if stop_after_id is not None and event_id == str(stop_after_id):
                    break
            elif line == "":
                event_id, name = None, None
    return events


def test_reconnecting_with_last_event_id_gets_only_what_was_missed(env, service_factory):
    service = service_factory({**env, "FAKE_SD_STEP_DELAY": "0.05"})
    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": "a red cube", "steps": 8}).json()["job_id"]
        before = read_events(service, job_id, stop_after_id=3)
        after = read_events(service, job_id, last_event_id="3")
        wait_job(client, job_id)
        everything = read_events(service, job_id)

    progress = [(event_id, data) for event_id, name, data in everything if name == "progress"]
    assert [event_id for event_id, _ in progress] == [str(data["seq"]) for _, data in progress]
    assert [data["seq"] for _, data in progress] == list(range(1, len(progress) + 1))
    assert everything[-1][:2] == (str(len(progress) + 1), "finished")
    assert before[-1][0] == "3" and [e for e in before if e[1] == "progress"] == [
        (event_id, "progress", data) for event_id, data in progress[:3]]
    # the reconnect: events 4.. exactly once, no status it has seen (it saw the job start), then finished
    assert [(event_id, name) for event_id, name, _ in after] == (
        [(str(seq), "progress") for seq in range(4, len(progress) + 1)] + [(str(len(progress) + 1), "finished")])
    assert [data for _, name, data in after if name == "progress"] == [data for _, data in progress[3:]]


def test_reconnecting_after_the_end_gets_only_the_final_event(env, service_factory):
    service = service_factory(env)
    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": "a blue sphere", "steps": 4}).json()["job_id"]
        wait_job(client, job_id)
        total = len([e for e in read_events(service, job_id) if e[1] == "progress"])
        again = read_events(service, job_id, last_event_id=str(total))
        assert [(event_id, name) for event_id, name, _ in again] == [(str(total + 1), "finished")]

        refused = client.get(f"/api/images/jobs/{job_id}/events", headers={"Last-Event-ID": "three"})
        assert refused.status_code == 422
        assert refused.json()["detail"].startswith("Last-Event-ID: got 'three'; allowed: ")
