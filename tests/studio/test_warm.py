"""The warm path: with `kitty-coreml serve` running for this home, Studio calls (and `kitty-coreml generate`)
go to its warm engine, so the model loads once per session. A real service subprocess, the fake
kitty-coreml-worker counting its loads (tests/fakes/coreml_worker.py), the provider run as the host runs it."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from kitty_coreml.pngmeta import read_text_chunks
from kitty_coreml.seeds import studio_seed
from kitty_coreml.studio import ORIGINAL_MODEL_ID
from tests.conftest import KITTY, clean_env
from tests.proc_utils import wait_until
from tests.service.conftest import Service
from tests.studio.harness import (argv_log, original_bundle, original_home, original_provider, request,
                                  write_fake_worker)
from tests.studio.host_rules import check_outcome

EXPORTS = {"SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS": "cpuAndNeuralEngine"}


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return original_home(tmp_path)


@pytest.fixture
def loads(tmp_path: Path) -> Path:
    return tmp_path / "loads.jsonl"


@pytest.fixture
def service(tmp_path: Path, home: Path, loads: Path):
    """`kitty-coreml serve` of the user's home (~/.kitty-coreml) on the fake warm worker. Core ML cannot
    run on this machine, so the service is told where Apple's binary is (on a Mac it needs nothing)."""
    (tmp_path / "worker").mkdir()
    env = clean_env(HOME=str(home), KITTY_COREML_WORKER_BIN=str(write_fake_worker(tmp_path / "worker")),
                    KITTY_COREML_SAMPLE_BIN=str(home / "gits/apps/ml-stable-diffusion/.build/release/"
                                                       "StableDiffusionSample"),
                    FAKE_WORKER_LOADS=str(loads), KITTY_COREML_PROGRESS="none")
    started = Service(env).start()
    wait_until(lambda: (home / ".kitty-coreml" / "service.json").exists(), 30, "the service to announce itself")
    yield started
    started.stop(signal.SIGTERM)


def _loads(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_two_calls_load_the_model_once(tmp_path: Path, home: Path, loads: Path, service: Service) -> None:
    provider = original_provider(tmp_path, home, **EXPORTS)
    first = provider.run(request("a red cube", runId="run_1")).answer
    second = provider.run(request("a blue cube", runId="run_2")).answer
    assert [answer["metadata"]["engine"] for answer in (first, second)] == ["coreml-worker"] * 2
    assert first["metadata"]["warm"] is True and second["metadata"]["warm"] is True
    assert argv_log(provider) == []  # Apple's binary never started cold
    assert [(load["model_path"], load["compute_units"]) for load in _loads(loads)] == \
        [(str(original_bundle(home, "1:1")), "cpuAndNeuralEngine")]
    assert first["modelId"] == f"{ORIGINAL_MODEL_ID}:cpuAndNeuralEngine"
    assert first["metadata"]["seed"] == studio_seed("a red cube", "run_1")
    # The provider's copies are in its swept folder; the service kept none of them in the KITTY store.
    for answer in (first, second):
        path = Path(answer["images"][0]["path"])
        assert path.is_relative_to(home / ".kitty-coreml" / "store" / "studio")
        assert str(home) not in json.dumps(read_text_chunks(path.read_bytes()))
    assert httpx.get(service.url + "/api/images/latest").json()["items"] == []


def test_concurrent_calls_queue_on_the_warm_engine_and_say_so(tmp_path: Path, home: Path, loads: Path,
                                                              service: Service) -> None:
    provider = original_provider(tmp_path, home, KITTY_COREML_PROGRESS="ndjson", **EXPORTS)
    lock = home / ".kitty-coreml" / "generate.lock"
    with open(lock, "a+") as held:
        # Another generation holds the machine: one job waits on the lock, the other in the queue.
        fcntl.flock(held, fcntl.LOCK_EX)
        calls = [provider.start(request(f"cube {n}", runId=f"run_{n}", aspectRatio="4:3")) for n in (1, 2)]
        wait_until(lambda: httpx.get(service.url + "/api/images/stats").json().get("queued") == 1
                   and httpx.get(service.url + "/api/images/stats").json().get("started") == 1, 60,
                   "one job started and one queued")
        fcntl.flock(held, fcntl.LOCK_UN)
    outcomes = []
    for call in calls:
        stdout, stderr = call.communicate(timeout=120)
        outcomes.append(check_outcome(call.returncode, stdout, stderr))
    answers = [outcome.answer for outcome in outcomes]
    assert all(answer["metadata"]["warm"] for answer in answers)
    # The one that started first waited on the machine lock, and said so on its progress stream ...
    locked = [o for o in outcomes if any(e["kind"] == "waiting" for e in o.progress)]
    assert len(locked) >= 1 and locked[0].answer["metadata"]["warmLockWaitS"] > 0
    # ... the other waited in the service's queue until the engine was free.
    queued = [a for a in answers if a["metadata"]["warmQueueWaitS"] > 0]
    assert queued and all(a["metadata"]["imagesReturned"] == 1 for a in answers)
    assert len(_loads(loads)) == 1


def test_warm_off_and_no_service_run_cold(tmp_path: Path, home: Path, loads: Path, service: Service) -> None:
    provider = original_provider(tmp_path, home, **EXPORTS)
    answer = provider.run(request(), extra_env={"KITTY_COREML_STUDIO_WARM": "off"}).answer
    assert answer["metadata"]["warm"] is False and answer["metadata"]["engine"] == "sample"
    assert len(argv_log(provider)) == 1 and _loads(loads) == []


def test_a_stale_announcement_is_ignored(tmp_path: Path, home: Path) -> None:
    announce = home / ".kitty-coreml" / "service.json"
    announce.parent.mkdir(parents=True)
    announce.write_text(json.dumps({"url": "http://127.0.0.1:9", "pid": os.getpid()}))
    provider = original_provider(tmp_path, home)
    answer = provider.run(request()).answer
    assert answer["metadata"]["warm"] is False and len(argv_log(provider)) == 1


def test_generate_is_served_warm_by_default_and_cold_on_request(tmp_path: Path, home: Path, loads: Path,
                                                                service: Service) -> None:
    env = clean_env(HOME=str(home), KITTY_COREML_PROGRESS="none", FAKE_SD_ARGV_LOG=str(tmp_path / "argv.jsonl"),
                    KITTY_COREML_SAMPLE_BIN=service.env["KITTY_COREML_SAMPLE_BIN"])
    model = str(original_bundle(home, "1:1"))

    def generate(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([KITTY, "generate", "a red cube", "--model", model, "--steps", "4",
                               "--compute-units", "cpuAndNeuralEngine", *args], capture_output=True, text=True,
                              env=env, stdin=subprocess.DEVNULL, timeout=120)

    warm = [generate("--json"), generate("--json")]
    assert all(proc.returncode == 0 for proc in warm), warm[0].stderr
    results = [json.loads(proc.stdout) for proc in warm]
    assert [result["engine"] for result in results] == ["coreml-worker"] * 2
    assert all(result["servedBy"] == {"warm": True, "url": service.url} for result in results)
    assert len(_loads(loads)) == 1 and not (tmp_path / "argv.jsonl").exists()
    said = generate()
    assert said.returncode == 0 and f"served warm by kitty-coreml serve at {service.url}" in said.stderr
    cold = generate("--cold")
    assert cold.returncode == 0 and "served cold by the sample engine" in cold.stderr
    assert len(argv_log(original_provider(tmp_path, home))) == 1
