"""The fast subset that .ci/run also runs with every dependency at its declared floor (.ci/floors.py):
each command's --help, one generate per engine that runs here, and one Studio call. In the main run it
checks today's versions; in the floors run it proves that pyproject's `>=` lines are true."""

from __future__ import annotations

import json
import subprocess

import pytest

from kitty_coreml.models import Registry, model_from_folder
from tests.conftest import BIN_DIR, clean_env
from tests.conformance.harness import smoke_model_path
from tests.proc_utils import wait_until
from tests.service.conftest import mock_env, redis_url, service_factory, start_worker, stop_process  # noqa: F401 (fixtures)


def _command_paths() -> list[list[str]]:
    """Every command and sub-command the CLI registers, read from the click tree typer builds."""
    import typer

    from kitty_coreml.cli import _COMMAND_MODULES, _load_commands
    from kitty_coreml.cli.app import app

    _load_commands([])
    assert _COMMAND_MODULES, "the CLI registers no command"
    paths: list[list[str]] = []

    def walk(command, path: list[str]) -> None:
        paths.append(path)
        for name, sub in sorted(getattr(command, "commands", {}).items()):
            if not sub.hidden:
                walk(sub, [*path, name])

    walk(typer.main.get_command(app), [])
    return paths


COMMAND_PATHS = _command_paths()


def test_the_cli_has_the_commands_the_readme_names():
    names = {path[0] for path in COMMAND_PATHS if path}
    assert {"generate", "batch", "images", "publish", "models", "install", "doctor", "serve", "worker"} <= names


@pytest.mark.parametrize("path", COMMAND_PATHS, ids=lambda p: " ".join(p) or "root")
def test_every_command_prints_its_help(kitty, path):
    run = kitty(*path, "--help")
    assert run.returncode == 0, run.stderr
    assert "Usage:" in run.stdout and "Traceback" not in run.stdout + run.stderr


def _stored_pngs(run) -> list[dict]:
    assert run.returncode == 0, run.stderr
    images = run.json["images"]
    for image in images:
        with open(image["path"], "rb") as handle:
            assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    return images


def test_generate_on_apples_binary_double(kitty):
    images = _stored_pngs(kitty("generate", "a red cube", "--count", "2", "--json"))
    assert [(image["width"], image["height"]) for image in images] == [(512, 512)] * 2


def test_generate_on_the_mock_engine(kitty):
    images = _stored_pngs(kitty("generate", "a red cube", "--engine", "mock", "--json"))
    assert len(images) == 1


def test_generate_on_the_diffusers_engine(kitty, home, tmp_path_factory):
    Registry(home / "models.json").register(model_from_folder(smoke_model_path(tmp_path_factory.getbasetemp()),
                                                              "smoke"))
    run = kitty("generate", "a red cube", "--engine", "diffusers", "--model", "smoke", "--steps", "2", "--json",
                timeout=300)
    images = _stored_pngs(run)
    assert [(image["width"], image["height"]) for image in images] == [(64, 64)]


def test_one_studio_call_on_the_mock_backend(tmp_path, home):
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"schema": "studio.local-image-generation.request.v1", "prompt": "a red cube",
                                   "count": 1, "aspectRatio": "1:1", "runId": "run_abc", "inputImages": []}))
    env = clean_env(KITTY_COREML_HOME=str(home), SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="mock")
    proc = subprocess.run([str(BIN_DIR / "systemsculpt-local-imagegen"), "--request", str(request)],
                          capture_output=True, text=True, env=env, cwd="/", stdin=subprocess.DEVNULL, timeout=120)
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout)
    assert answer["schema"] == "studio.local-image-generation.response.v1" and len(answer["images"]) == 1


# The images service at the floors: fastapi, uvicorn, starlette, rq and redis in one round trip each.
FINISHED = "finished"


def _finished_job(client, job_id: str) -> dict:
    seen: dict = {}

    def settled() -> bool:
        seen.update(client.get(f"/api/images/jobs/{job_id}").json())
        return seen.get("status") in (FINISHED, "failed")

    wait_until(settled, 120, f"job {job_id} to finish")
    assert seen["status"] == FINISHED, seen
    return seen


def test_a_job_through_the_embedded_queue(mock_env, service_factory):
    service = service_factory(mock_env)
    with service.client() as client:
        job_id = client.post("/api/images/generate", json={"prompt": "a red cube", "width": 64, "height": 64}
                             ).json()["job_id"]
        png_key = _finished_job(client, job_id)["result"]["png_key"]
        assert [item["key"] for item in client.get("/api/images/latest").json()["items"]] == [png_key]


def test_a_job_through_redis_and_a_worker(mock_env, service_factory, redis_url, tmp_path):
    service = service_factory(mock_env, "--queue", redis_url)
    worker = start_worker({**mock_env, "KITTY_COREML_HOME": str(tmp_path / "worker-home")}, redis_url)
    try:
        with service.client() as client:
            job_id = client.post("/api/images/generate", json={"prompt": "a red cube", "width": 64, "height": 64}
                                 ).json()["job_id"]
            assert _finished_job(client, job_id)["result"]["png_key"].endswith(".png")
    finally:
        stop_process(worker)
