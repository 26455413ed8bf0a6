"""KITTY's paths and shapes against a real `kitty-coreml serve` on the mock engine."""

from __future__ import annotations

import json
import re
import signal

import httpx
import pytest

from tests.conftest import clean_env

from .conftest import Service, wait_job


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    running = Service(clean_env(KITTY_COREML_HOME=str(home), KITTY_COREML_ENGINE="mock")).start()
    yield running
    running.stop(signal.SIGKILL)


@pytest.fixture
def client(service):
    with service.client() as http:
        yield http


def generate(client: httpx.Client, **body) -> dict:
    answer = client.post("/api/images/generate", json={"prompt": "a red cube", "width": 96, "height": 64, **body})
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_generate_queues_then_finishes_with_kitty_shapes(client):
    queued = generate(client, cfg=6.5, seed=42, steps=12, model=None, refiner=False, negative_prompt="blur")
    assert queued["status"] == "queued" and re.fullmatch(r"[0-9a-f]{32}", queued["job_id"])
    job = wait_job(client, queued["job_id"])
    assert job["status"] == "finished", job
    result = job["result"]
    assert re.fullmatch(r"images/\d{8}_\d{6}_[0-9a-f]{8}\.png", result["png_key"])
    assert result["meta_key"] == result["png_key"][:-4] + ".json"
    assert result["seed"] == 42 and result["images"][0]["width"] == 96
    assert result["request"]["guidance"] == 6.5 and result["request"]["negative_prompt"] == "blur"
    latest = client.get("/api/images/latest", params={"limit": 36}).json()
    assert result["png_key"] in [item["key"] for item in latest["items"]]
    assert all(item["key"].endswith(".png") and item["size"] > 0 and item["last_modified"] for item in latest["items"])
    ref = client.post("/api/images/select", json={"key": result["png_key"]}).json()["imageRef"]
    assert ref["storageUri"].endswith(result["png_key"]) and ref["downloadUrl"]
    image = client.get(f"/api/images/file/{result['png_key']}")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")


def test_latest_is_newest_first_and_limited(client):
    keys = [wait_job(client, generate(client, seed=i)["job_id"])["result"]["png_key"] for i in range(3)]
    assert len(client.get("/api/images/latest", params={"limit": 2}).json()["items"]) == 2
    listed = [item["key"] for item in client.get("/api/images/latest", params={"limit": 1000}).json()["items"]]
    assert set(keys) <= set(listed)
    assert listed == sorted(listed, reverse=True)  # keys start with their UTC second: newest first


def test_a_server_path_as_input_image_is_ignored_and_named(client):
    queued = generate(client, input_image="/etc/passwd")
    assert queued["warnings"] == [w for w in queued["warnings"] if w.startswith("field 'input_image' ignored")] != []
    result = wait_job(client, queued["job_id"])["result"]
    assert result["request"]["input_image"] is None and result["warnings"][0].startswith("field 'input_image' ignored")


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "steps": 0}, "steps"),
    ({"prompt": "x", "cfg": 31}, "guidance"),
    ({"prompt": "  "}, "prompt"),
    ({"steps": 5}, "prompt"),
    ({"prompt": "x", "seed": -2}, "seed"),
    ({"prompt": "x", "seed": "abc"}, "seed"),
    ({"prompt": "x", "width": 100}, "width"),
    ({"prompt": "x", "height": 4096}, "height"),
    ({"prompt": "x", "size": "huge"}, "size"),
    ({"prompt": "x", "scheduler": "euler"}, "scheduler"),
    ({"prompt": "x", "refiner": True}, "refiner"),
    ({"prompt": "x", "cfg": 5, "guidance": 6}, "cfg"),
    (["not", "an", "object"], "body"),
])
def test_invalid_requests_are_422_naming_the_field(client, body, field):
    answer = client.post("/api/images/generate", json=body)
    assert answer.status_code == 422
    detail = answer.json()["detail"]
    assert detail.startswith(f"{field}: got ") and "allowed:" in detail and "\n" not in detail


def test_malformed_json_and_bad_query_are_one_line_422(client):
    answer = client.post("/api/images/generate", content=b"{nope", headers={"Content-Type": "application/json"})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("body: ")
    answer = client.get("/api/images/latest", params={"limit": 0})
    assert answer.status_code == 422 and answer.json()["detail"].startswith("limit: got ")


def test_select_refuses_keys_outside_the_prefix(client):
    for key in ("../secret.png", "other/20260101_000000_00000000.png", "images/../../x.png", "images/a.json"):
        answer = client.post("/api/images/select", json={"key": key})
        assert answer.status_code == 422 and answer.json()["detail"].startswith("key: got"), key
    assert client.post("/api/images/select", json={"key": "images/20200101_000000_00000000.png"}).status_code == 404
    assert client.get("/api/images/file/images/..%2F..%2Fjobs.sqlite3").status_code in (404, 422)


def test_oversized_body_is_413(client):
    answer = client.post("/api/images/generate", content=json.dumps({"prompt": "x" * 70000}),
                         headers={"Content-Type": "application/json"})
    assert answer.status_code == 413

    def chunks():
        for _ in range(20):
            yield b"x" * 8192

    assert client.post("/api/images/generate", content=chunks()).status_code == 413


def test_unknown_job_is_404(client):
    assert client.get("/api/images/jobs/0123456789abcdef0123456789abcdef").status_code == 404


def test_stats_metrics_health_and_docs(client):
    wait_job(client, generate(client)["job_id"])
    stats = client.get("/api/images/stats").json()
    assert stats["queue"] == "embedded" and stats["finished"] >= 1 and stats["max_queued"] == 100
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in metrics.text.splitlines():
        if not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['kitty_coreml_jobs{state="finished"}'] == stats["finished"]
    assert samples["kitty_coreml_generation_seconds_count"] == samples['kitty_coreml_jobs_finished_total{outcome="finished"}'] >= 1
    assert samples["kitty_coreml_generation_seconds_sum"] > 0
    assert samples["kitty_coreml_publish_failures_total"] == 0
    assert "# TYPE kitty_coreml_jobs gauge" in metrics.text
    assert client.get("/healthz").json() == {"status": "ok", "queue": "embedded", "workers": 1}
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/api/images/generate", "/api/images/jobs/{job_id}", "/api/images/latest", "/api/images/select",
                 "/api/images/stats", "/api/images/jobs/{job_id}/cancel", "/api/images/jobs/{job_id}/events"):
        assert path in paths
    assert "prompt" in json.dumps(paths["/api/images/generate"]["post"]["requestBody"])
    assert client.get("/docs").status_code == 200
