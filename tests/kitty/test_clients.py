"""Each KITTY client's own flow (tests/kitty/clients.py, written from KITTY's code) against the real
`kitty-coreml serve` process, through KITTY's gateway where KITTY's clients go through it: every flow
ends as it does against KITTY's images-service."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import httpx
import pytest

from tests.proc_utils import wait_until
from tests.service.conftest import wait_job

from .clients import KittyCli, KittyUi

UI_SIZES = ["512x512", "768x768", "1024x1024", "1024x768", "768x1024"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def sidecar(home: Path, png_key: str) -> dict:
    return json.loads((home / "store" / png_key.replace(".png", ".json")).read_text())


def test_cli_generate_image_defaults_with_wait_finish(gateway, home):
    seen = KittyCli(gateway).generate_image(["studio", "photo", "of", "a", "matte", "black", "water", "bottle"],
                                            wait=True)
    assert seen.code == 0, seen.text
    assert seen.data["payload"] == {"prompt": "studio photo of a matte black water bottle", "width": 1024,
                                    "height": 1024, "steps": 30, "cfg": 7.0, "model": "sdxl_base"}
    assert set(seen.statuses) <= {"queued", "started", "finished"} and seen.statuses[-1] == "finished"
    assert "Unknown status" not in seen.text and "Image generated successfully!" in seen.lines
    assert png_size(home / "store" / seen.data["png_key"]) == (1024, 1024)
    made = sidecar(home, seen.data["png_key"])
    assert (made["model"], made["steps"], made["cfg"], made["warnings"]) == ("sdxl_base", 30, 7.0, [])


def test_cli_image_status_list_images_and_select_image(gateway, home):
    cli = KittyCli(gateway)
    queued = cli.generate_image(["a", "red", "cube"])
    assert queued.code == 0 and f"Check status with: kitty-cli image-status {queued.data['job_id']}" in queued.lines
    status: dict = {}

    def finished() -> bool:
        status["seen"] = cli.image_status(queued.data["job_id"])
        return any(line.startswith("PNG: ") for line in status["seen"].lines)

    wait_until(finished, 60, "image-status to show the PNG")
    png_key = status["seen"].lines[1].removeprefix("PNG: ")
    assert status["seen"].lines[0] == f"Job {queued.data['job_id']}: finished"
    assert status["seen"].lines[2] == f"Metadata: {png_key[:-4]}.json"
    listed = cli.list_images()
    assert listed.code == 0 and listed.lines[0].startswith(f"1 {png_key.split('/')[-1]} ")
    assert listed.data["items"][0]["last_modified"][:19] in listed.lines[0]
    selected = cli.select_image(1)
    assert selected.code == 0 and selected.data["key"] == png_key
    assert selected.data["image_ref"]["key"] == png_key
    assert selected.data["image_ref"]["storageUri"] and selected.data["image_ref"]["downloadUrl"]
    out_of_range = cli.select_image(5)
    assert out_of_range.code == 1 and out_of_range.lines == ["Index 5 out of range (1-1)"]


def test_shell_generate_waits_and_finishes(gateway, home):
    seen = KittyCli(gateway).shell_generate("studio photo of a water bottle")
    assert seen.code == 0 and seen.statuses[-1] == "finished", seen.text
    assert png_size(home / "store" / seen.data["png_key"]) == (1024, 1024)


@pytest.mark.parametrize("size", UI_SIZES)
def test_ui_sizes_are_made_or_fitted(gateway, home, size):
    seen = KittyUi(gateway).generate("neon-lit robotics lab", size=size)
    assert seen.lines == ["Image generated successfully!"], seen.text
    width, height = (int(n) for n in size.split("x"))
    assert png_size(home / "store" / seen.data["png_key"]) == (width, height)
    warnings = sidecar(home, seen.data["png_key"])["warnings"]
    if size == "1024x1024":
        assert warnings == []
    else:
        assert warnings[0].startswith(f"made at 1024x1024, fitted to {size} "), warnings


def test_ui_sd15_at_its_own_size_and_the_refiner_switch(gateway, home):
    ui = KittyUi(gateway)
    sd15 = ui.generate("a cube", size="512x512", model="sd15_base", use_refiner=True)
    assert "refiner" not in sd15.data["payload"] and sd15.lines == ["Image generated successfully!"]
    assert sidecar(home, sd15.data["png_key"])["warnings"] == []
    refined = ui.generate("a cube", model="sdxl_base", use_refiner=True, seed="1234")
    assert refined.data["payload"]["refiner"] == "sdxl_refiner" and refined.data["payload"]["seed"] == 1234
    assert refined.lines == ["Image generated successfully!"]
    made = sidecar(home, refined.data["png_key"])
    assert made["seed"] == 1234 and made["request"]["refiner"] == "sdxl_refiner" and made["warnings"] == []
    assert [item["key"] for item in ui.recent()][:2] == [refined.data["png_key"], sd15.data["png_key"]]


def test_cli_refiner_on_a_model_without_unet_refiner_runs_base_with_a_warning(gateway, home):
    seen = KittyCli(gateway).generate_image(["a", "cube"], width=512, height=512, model="sd15_base",
                                            refiner="sdxl_refiner", wait=True)
    assert seen.code == 0, seen.text
    warnings = sidecar(home, seen.data["png_key"])["warnings"]
    assert warnings == ["refiner 'sdxl_refiner' not applied: model 'sd15_base' has no UnetRefiner (only Core ML "
                        "SDXL bundles with one are refined); the base model ran alone"]


def test_ui_create_image_tool_body(ours, home):
    answer = KittyUi(ours.url).create_image_tool("a drone", size="landscape", style="sketch")
    assert answer["status"] == "queued" and answer["job_id"]
    assert answer["warnings"] == ["style 'sketch' ignored: styles are not applied (write it into the prompt)"]
    with ours.client() as client:
        job = wait_job(client, answer["job_id"])
    assert job["status"] == "finished" and job["result"]["images"][0]["width"] == 1024
    assert job["result"]["images"][0]["height"] == 768 and job["result"]["warnings"][0].startswith("style 'sketch'")


def test_unknown_model_fails_the_cli_with_the_names_there_are(ours, gateway):
    direct = KittyCli(ours.url).generate_image(["x"], model="realistic_vision", wait=True)
    assert direct.code == 1 and len(direct.lines) == 1 and direct.lines[0].startswith("Images API error 422: ")
    assert "realistic_vision" in direct.lines[0] and "sd15_base, sdxl_base, sdxl_refiner" in direct.lines[0]
    assert "models add realistic_vision" in direct.lines[0]
    # KITTY's gateway answers any upstream error 500 with httpx's status line, which drops the reason
    proxied = KittyCli(gateway).generate_image(["x"], model="realistic_vision", wait=True)
    assert proxied.code == 1 and proxied.lines[0].startswith("Images API error 500: ") and "422" in proxied.lines[0]


def test_cancelled_and_failed_jobs_end_the_cli_wait(env, tmp_path, service_factory, resources):
    models = tmp_path / "models.yaml"
    models.write_text(f"sdxl_base: {resources}\n")
    hang = service_factory({**env, "MODELS_YAML": str(models), "FAKE_SD_HANG_AT_STEP": "2",
                            "FAKE_SD_PID_FILE": str(tmp_path / "sd.pid")})
    cli = KittyCli(hang.url)
    waited: dict = {}
    thread = threading.Thread(target=lambda: waited.update(seen=cli.generate_image(["hangs"], wait=True)))
    thread.start()
    with hang.client() as client:
        wait_until(lambda: cli.last_job_id is not None, 60, "the CLI to queue its job")
        wait_job(client, cli.last_job_id, states=("started",))
        assert client.post(f"/api/images/jobs/{cli.last_job_id}/cancel").status_code == 200
    thread.join(timeout=60)
    seen = waited["seen"]
    assert seen.code == 1 and seen.statuses[-1] == "failed" and "Unknown status" not in seen.text
    assert seen.lines[-1].startswith("Generation failed: ") and "cancelled through the API" in seen.lines[-1]
    hang.stop()
    failing = service_factory({**env, "MODELS_YAML": str(models), "FAKE_SD_FAIL": "boom"})
    failed = KittyCli(failing.url).generate_image(["fails"], wait=True)
    assert failed.code == 1 and failed.lines[-1].startswith("Generation failed: ") and "boom" in failed.lines[-1]


def test_gallery_shows_images_kitty_made(ours, home):
    from PIL import Image

    folder = home / "store" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (64, 64), (10, 20, 30)).save(folder / "20261101_101500_0a1b2c3d.png")
    kitty_sidecar = {"engine": "diffusers", "device": "mps", "library": "diffusers", "timestamp": 1793528100.0,
                     "request": {"prompt": "made by KITTY", "width": 1024, "height": 1024, "steps": 30, "cfg": 7.0,
                                 "seed": 77, "model": "sdxl_base", "refiner": None}}
    (folder / "20261101_101500_0a1b2c3d.json").write_text(json.dumps(kitty_sidecar, indent=2))
    with ours.client() as client:
        items = client.get("/api/images/gallery").json()["items"]
    assert len(items) == 1
    item = items[0]
    assert (item["key"], item["prompt"], item["seed"], item["model"]) == (
        "images/20261101_101500_0a1b2c3d.png", "made by KITTY", 77, "sdxl_base", )
    assert (item["steps"], item["cfg"], item["width"]) == (30, 7.0, 1024)
    assert item["created"].startswith("2026-11-01T")


def test_root_is_kitty_json_to_clients_and_the_gallery_to_browsers(ours):
    probe = httpx.get(ours.url + "/")  # KITTY's start script: curl -sf
    assert probe.status_code == 200
    body = probe.json()
    assert {key: body[key] for key in ("status", "queue_name")} == {"status": "online", "queue_name": "images"}
    assert body["service"] and body["engine"] == "mock"
    browser = httpx.get(ours.url + "/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert browser.status_code == 307 and browser.headers["location"] == "/vision"


def test_stats_through_the_gateway_are_kittys_integers(gateway):
    KittyCli(gateway).generate_image(["x"], wait=True)
    stats = httpx.get(gateway + "/api/images/stats").json()
    assert all(isinstance(stats[name], int) for name in ("queued", "started", "finished", "failed"))
    assert stats["finished"] == 1 and stats["failed"] == 0
