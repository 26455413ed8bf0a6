"""KITTY's workers and models: plain `rq worker ... images` runs our jobs, the queue name is settable,
`generate --server` follows a job on KITTY's own service by polling, and `models add` / `--variant` /
`models remove` register folders under KITTY's names."""

from __future__ import annotations

import subprocess
from pathlib import Path

import redis
from rq import Queue

from kitty_coreml.orchestrator import plan
from kitty_coreml.request import GenerationRequest
from kitty_coreml.settings import Settings
from tests.conftest import BIN_DIR
from tests.fakes import make_resources
from tests.service.conftest import wait_job


def test_plain_rq_worker_on_the_images_queue_runs_our_jobs(kitty_env, service_factory, redis_url, home):
    service = service_factory(kitty_env, "--queue", redis_url)
    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": "rq", "model": "sd15_base", "width": 512,
                                                           "height": 512}).json()["job_id"]
        assert Queue("images", connection=redis.Redis.from_url(redis_url)).count == 1
        worker = subprocess.run([str(BIN_DIR / "rq"), "worker", "-w", "rq.worker.SimpleWorker", "images", "--url",
                                 redis_url, "--burst"], env=kitty_env, capture_output=True, text=True, timeout=120)
        assert worker.returncode == 0, worker.stderr
        job = wait_job(client, job_id)
    assert job["status"] == "finished", job
    assert (home / "store" / job["result"]["png_key"]).is_file()


def test_the_queue_name_is_settable(kitty_env, service_factory, redis_url):
    service = service_factory({**kitty_env, "KITTY_COREML_QUEUE_NAME": "gpu-images"}, "--queue", redis_url)
    with service.client() as client:
        assert client.post("/api/images/generate", json={"prompt": "x", "model": "sd15_base"}).status_code == 200
        assert client.get("/").json()["queue_name"] == "gpu-images"
        assert client.get("/api/images/stats").json()["queue_name"] == "gpu-images"
    connection = redis.Redis.from_url(redis_url)
    assert (Queue("gpu-images", connection=connection).count, Queue("images", connection=connection).count) == (1, 0)


def test_generate_server_polls_kittys_own_service(kitty, standin):
    run = kitty("generate", "a blue sphere", "--server", standin, "--wait", "--json")
    assert run.returncode == 0, run.stderr
    assert run.json["png_key"].startswith("images/") and run.json["images"][0]["key"] == run.json["png_key"]
    failed = kitty("generate", "a blue sphere", "--model", "realistic_vision", "--server", standin, "--wait")
    assert failed.returncode == 5 and failed.stderr.count("\n") == 1, failed.stderr
    assert "failed: " in failed.stderr and "KeyError: 'realistic_vision'" in failed.stderr


def test_models_add_variant_and_remove(kitty, tmp_path, home):
    square = make_resources(tmp_path / "xl-1024", family="sdxl", width=1024, height=1024, attention="original")
    wide = make_resources(tmp_path / "xl-1024x768", family="sdxl", width=1024, height=768, attention="original")
    added = kitty("models", "add", "sdxl_base", str(square), "--json")
    assert added.returncode == 0 and added.json["format"] == "coreml" and added.json["family"] == "sdxl"
    variant = kitty("models", "add", "sdxl_base", str(wide), "--variant")
    assert variant.returncode == 0 and "variant 1024x768" in variant.stdout
    listed = next(m for m in kitty("models", "list", "--json").json["installed"] if m["name"] == "sdxl_base")
    assert [(v["width"], v["height"], v["path"], v["ok"]) for v in listed["variants"]] == [(1024, 768, str(wide), True)]
    assert "variant   1024x768" in kitty("models", "list").stdout
    settings = Settings.from_env({"KITTY_COREML_HOME": str(home), "KITTY_COREML_ENGINE": "mock"})
    exact = plan(GenerationRequest("x", model="sdxl_base", width=1024, height=768), settings)
    assert exact["model"]["path"] == str(wide) and exact["warnings"] == []
    nearest = plan(GenerationRequest("x", model="sdxl_base", width=768, height=576), settings)
    assert nearest["model"]["path"] == str(wide)
    assert nearest["warnings"][0].startswith("made at 1024x768, fitted to 768x576")
    square_plan = plan(GenerationRequest("x", model="sdxl_base", width=512, height=512), settings)
    assert square_plan["model"]["path"] == str(square)
    diffusers = tmp_path / "diffusers-model"
    diffusers.mkdir()
    (diffusers / "model_index.json").write_text("{}")
    assert kitty("models", "add", "mine", str(diffusers), "--json").json["format"] == "diffusers"
    removed = kitty("models", "remove", "sdxl_base")
    assert removed.returncode == 0 and "sdxl_base" not in kitty("models", "list", "--json").stdout


def test_models_add_refuses_in_one_line(kitty, tmp_path):
    for args, words in [(("models", "add", "bad name", str(tmp_path)), "NAME: got 'bad name'"),
                        (("models", "add", "x", str(tmp_path / "nowhere")), "does not exist"),
                        (("models", "add", "x", str(tmp_path)), "neither a Core ML resource folder"),
                        (("models", "add", "x", str(tmp_path), "--variant"), "no model 'x' is registered"),
                        (("models", "remove", "x"), "no model 'x' is registered")]:
        run = kitty(*args)
        assert run.returncode != 0 and run.stderr.count("\n") == 1 and words in run.stderr, (args, run.stderr)


def test_models_yaml_errors_name_the_file(kitty, tmp_path, kitty_models):
    broken = tmp_path / "broken.yaml"
    broken.write_text("- just\n- a list\n")
    run = kitty("generate", "x", "--model", "sdxl_base", "--engine", "mock", extra_env={"MODELS_YAML": str(broken)})
    assert run.returncode != 0 and run.stderr.count("\n") == 1 and f"MODELS_YAML: {broken} is not a map" in run.stderr
    missing = tmp_path / "missing.yaml"
    missing.write_text(f"sdxl_base: {Path(tmp_path) / 'gone'}\n")
    run = kitty("generate", "x", "--model", "sdxl_base", "--engine", "mock", extra_env={"MODELS_YAML": str(missing)})
    assert run.returncode != 0 and "maps it to" in run.stderr and "which does not exist" in run.stderr


def test_serve_binds_kittys_service_host(kitty_env, service_factory):
    # KITTY's start script sets SERVICE_HOST; 127.0.0.2 is loopback on Linux, so no key is needed
    service = service_factory({**kitty_env, "SERVICE_HOST": "127.0.0.2"})
    assert service.url.startswith("http://127.0.0.2:")
    with service.client() as client:
        assert client.get("/", headers={"Accept": "application/json"}).json()["status"] == "online"


def test_serve_refuses_an_open_service_host_without_a_key(kitty, kitty_env):
    done = subprocess.run([str(BIN_DIR / "kitty-coreml"), "serve", "--port", "0"], capture_output=True, text=True,
                          env={**kitty_env, "SERVICE_HOST": "0.0.0.0"}, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode != 0
    assert "SERVICE_HOST 0.0.0.0 would open the API to the network without a key" in done.stderr
    assert "Traceback" not in done.stderr
