"""The same requests against KITTY's images-service (a stand-in written from its main.py) and against
`kitty-coreml serve`: the status codes match and every field KITTY answers is in our answer, with the
same type. The differences docs/kitty.md lists are asserted too, so that list stays true."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import clean_env
from tests.proc_utils import wait_until
from tests.service.conftest import Service, stop_process

from .conftest import start_standin, write_kitty_models

CLI_DEFAULT = {"prompt": "studio photo of a matte black water bottle", "width": 1024, "height": 1024, "steps": 30,
               "cfg": 7.0, "model": "sdxl_base"}
SAME_ANSWERS = [
    ("default kitty-cli body", CLI_DEFAULT),
    ("UI size and seed", {**CLI_DEFAULT, "width": 1024, "height": 768, "seed": 1234}),
    ("UI refiner switch", {**CLI_DEFAULT, "refiner": "sdxl_refiner"}),
    ("sd15 at 512", {**CLI_DEFAULT, "model": "sd15_base", "width": 512, "height": 512}),
    ("seed null", {**CLI_DEFAULT, "seed": None, "refiner": None}),
    ("numeric strings", {**CLI_DEFAULT, "width": "768", "height": "768", "steps": "20", "cfg": "6.5", "seed": "9"}),
    ("the UI tool's body", {"prompt": "a drone", "size": "portrait", "style": "cartoon"}),
    ("fields KITTY does not know", {"prompt": "x", "sampler": "euler", "batch": 2}),
    ("no prompt", {"width": 1024}),
    ("width above 2048", {**CLI_DEFAULT, "width": 4096}),
    ("steps above 150", {**CLI_DEFAULT, "steps": 151}),
    ("cfg not a number", {**CLI_DEFAULT, "cfg": "strong"}),
    ("seed not an integer", {**CLI_DEFAULT, "seed": "lucky"}),
]
DIFFERENCES = [  # (what, body, KITTY's status, ours) — each is in docs/kitty.md with its reason
    ("width below 512", {**CLI_DEFAULT, "width": 256, "height": 256}, 422, 200),
    ("steps below 10", {**CLI_DEFAULT, "steps": 5}, 422, 200),
    ("cfg below 1", {**CLI_DEFAULT, "cfg": 0.5}, 422, 200),
    ("size not a multiple of 8", {**CLI_DEFAULT, "width": 1001}, 200, 422),
    ("a model no one has", {**CLI_DEFAULT, "model": "realistic_vision"}, 200, 422),
]


def shape(value: Any) -> Any:
    """The field names and JSON types of an answer, recursively (a list by its first item)."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else type(value).__name__


def covers(ours: Any, kitty: Any, where: str = "answer") -> None:
    """Every field of KITTY's answer is in ours with the same type (ours may carry more); a null of
    KITTY's matches anything."""
    if kitty == "NoneType":
        return
    if isinstance(kitty, dict):
        assert isinstance(ours, dict), f"{where}: KITTY answers an object, we answer {ours}"
        for key, item in kitty.items():
            assert key in ours, f"{where}: KITTY's field {key!r} is missing from ours ({sorted(ours)})"
            covers(ours[key], item, f"{where}.{key}")
    elif isinstance(kitty, list):
        assert isinstance(ours, list), f"{where}: KITTY answers a list, we answer {ours}"
        if kitty and ours:
            covers(ours[0], kitty[0], f"{where}[0]")
    else:
        assert ours == kitty, f"{where}: KITTY answers a {kitty}, we answer a {ours}"


def both(standin: str, ours: str, method: str, path: str, **kwargs) -> tuple[httpx.Response, httpx.Response]:
    return (httpx.request(method, standin + path, timeout=30, **kwargs),
            httpx.request(method, ours + path, timeout=30, **kwargs))


def finish(base: str, job_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(httpx.get(f"{base}/api/images/jobs/{job_id}", timeout=30).json())
        return seen["status"] in ("finished", "failed")

    wait_until(done, 60, f"job {job_id} at {base}")
    return seen


@pytest.fixture(scope="module")
def services(tmp_path_factory):
    """One stand-in and one service for the requests that leave nothing behind that others read."""
    root = tmp_path_factory.mktemp("side-by-side")
    models = write_kitty_models(root / "models")
    ours = Service(clean_env(KITTY_COREML_HOME=str(root / "home"), KITTY_COREML_ENGINE="mock",
                             KITTY_COREML_PROGRESS="none", MODELS_YAML=str(models["yaml"]))).start()
    standin, process = start_standin(root / "standin")
    yield standin, ours.url
    stop_process(process)
    ours.stop()


@pytest.fixture
def fresh_services(standin, ours):
    return standin, ours.url


def test_service_info_answers_alike(services):
    kitty, mine = both(*services, "GET", "/")
    assert kitty.status_code == mine.status_code == 200
    covers(shape(mine.json()), shape(kitty.json()))
    assert mine.json()["status"] == kitty.json()["status"] == "online"
    assert mine.json()["queue_name"] == kitty.json()["queue_name"] == "images"


@pytest.mark.parametrize("what, body", SAME_ANSWERS, ids=[what for what, _ in SAME_ANSWERS])
def test_generate_answers_alike_through_to_the_image(services, what, body):
    standin, mine = services
    kitty_answer, our_answer = both(standin, mine, "POST", "/api/images/generate", json=body)
    assert our_answer.status_code == kitty_answer.status_code, (what, kitty_answer.text, our_answer.text)
    if kitty_answer.status_code != 200:
        assert set(kitty_answer.json()) <= set(our_answer.json())  # {"detail": ...}
        return
    covers(shape(our_answer.json()), shape(kitty_answer.json()))
    kitty_job = finish(standin, kitty_answer.json()["job_id"])
    our_job = finish(mine, our_answer.json()["job_id"])
    assert our_job["status"] == kitty_job["status"] == "finished", (kitty_job, our_job)
    covers(shape(our_job), shape(kitty_job))
    keys = (kitty_job["result"]["png_key"], our_job["result"]["png_key"])
    for base, key in zip(services, keys):
        selected = httpx.post(f"{base}/api/images/select", json={"key": key}, timeout=30)
        assert selected.status_code == 200 and selected.json()["imageRef"]["key"] == key
    kitty_selected, our_selected = (httpx.post(f"{base}/api/images/select", json={"key": key}, timeout=30).json()
                                    for base, key in zip(services, keys))
    covers(shape(our_selected), shape(kitty_selected))


def test_listing_selecting_stats_and_unknowns_answer_alike(fresh_services):
    standin, mine = services = fresh_services
    for base in services:
        job = httpx.post(f"{base}/api/images/generate", json=CLI_DEFAULT, timeout=30).json()
        finish(base, job["job_id"])
    kitty, ours = both(standin, mine, "GET", "/api/images/latest", params={"limit": 5})
    assert kitty.status_code == ours.status_code == 200
    covers(shape(ours.json()), shape(kitty.json()))
    assert ours.json()["items"] and kitty.json()["items"]
    kitty, ours = both(standin, mine, "GET", "/api/images/stats")
    assert kitty.status_code == ours.status_code == 200
    covers(shape(ours.json()), shape(kitty.json()))
    assert {k: ours.json()[k] for k in kitty.json()} == kitty.json() == {"queued": 0, "started": 0, "finished": 1,
                                                                          "failed": 0}
    for path in ("/api/images/jobs/0f9a3c2e-1111-4222-8333-944445555666", "/api/images/jobs/nope"):
        kitty, ours = both(standin, mine, "GET", path)
        assert kitty.status_code == ours.status_code == 404 and "detail" in ours.json()
    kitty, ours = both(standin, mine, "POST", "/api/images/select", json={"key": "images/20200101_000000_00000000.png"})
    assert kitty.status_code == ours.status_code == 404 and "detail" in ours.json()
    kitty, ours = both(standin, mine, "POST", "/api/images/select", json={})
    assert kitty.status_code == ours.status_code == 422


@pytest.mark.parametrize("what, body, kitty_status, our_status", DIFFERENCES, ids=[d[0] for d in DIFFERENCES])
def test_the_documented_differences(services, what, body, kitty_status, our_status):
    kitty, ours = both(*services, "POST", "/api/images/generate", json=body)
    assert (kitty.status_code, ours.status_code) == (kitty_status, our_status), (what, kitty.text, ours.text)
