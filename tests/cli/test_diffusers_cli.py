"""`generate` and `batch` through the real CLI on the diffusers worker and the smoke model."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from kitty_coreml.models import Registry, model_from_folder
from tests.conformance.harness import smoke_model_path

DIFFUSERS = ("--engine", "diffusers", "--model", "smoke", "--steps", "4")


@pytest.fixture
def smoke_env(env, home, tmp_path_factory):
    """The session's smoke model registered in this test's home (building one per test costs seconds)."""
    Registry(home / "models.json").register(model_from_folder(smoke_model_path(tmp_path_factory.getbasetemp()),
                                                              "smoke"))
    return env


def _pixels(path: str) -> np.ndarray:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


def test_generate_count_two_gives_two_pngs(kitty, smoke_env):
    run = kitty("generate", "x", *DIFFUSERS, "--count", "2", "--json")
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["engine"] == "diffusers" and result["model"] == "smoke"
    images = [_pixels(image["path"]) for image in result["images"]]
    assert [image.shape for image in images] == [(64, 64, 3), (64, 64, 3)]
    assert not np.array_equal(images[0], images[1])


def test_same_seed_same_pixels_other_seed_other_pixels(kitty, smoke_env):
    runs = [kitty("generate", "a red cube", *DIFFUSERS, "--seed", seed, "--json") for seed in ("11", "11", "12")]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    first, again, other = (_pixels(run.json["images"][0]["path"]) for run in runs)
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_unknown_model_fails_loud_and_names_it(kitty, smoke_env):
    run = kitty("generate", "x", "--engine", "diffusers", "--model", "no-such-model")
    assert run.returncode == 3
    assert run.stderr.count("\n") == 1
    assert "unknown model 'no-such-model'" in run.stderr and "smoke" in run.stderr


def test_batch_one_warm_worker_one_image_per_prompt(kitty, smoke_env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\n# a comment\n  a blue ball  \na green cone\n")
    run = kitty("batch", str(prompts), *DIFFUSERS, "--json", extra_env={"KITTY_COREML_PROGRESS": "ndjson"})
    assert run.returncode == 0, run.stderr
    report = run.json
    assert report["failed"] == 0
    assert [item["prompt"] for item in report["items"]] == ["a red cube", "a blue ball", "a green cone"]
    assert all(len(item["images"]) == 1 for item in report["items"])
    assert len({item["runId"] for item in report["items"]}) == 3
    for item in report["items"]:
        assert _pixels(item["images"][0]["path"]).shape == (64, 64, 3)
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    loading = [event.get("message", "") for event in events if event.get("kind") == "loading"]
    assert sum(message.startswith("starting the diffusers worker") for message in loading) == 1
    assert sum(message.startswith("loading smoke") for message in loading) == 1


def test_batch_reports_a_failed_prompt_goes_on_and_exits_non_zero(kitty, smoke_env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n" + "y" * 8000 + "\na blue ball\n")
    run = kitty("batch", str(prompts), *DIFFUSERS, "--json")
    assert run.returncode == 1
    report = run.json
    assert report["failed"] == 1
    bad = report["items"][1]
    assert set(bad) == {"prompt", "error"} and bad["error"]["code"] == "invalid_request"
    assert [len(item.get("images", [])) for item in report["items"]] == [1, 0, 1]


def test_batch_of_an_empty_file_fails_loud(kitty, smoke_env, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# only a comment\n\n")
    run = kitty("batch", str(prompts), *DIFFUSERS)
    assert run.returncode == 2
    assert "PROMPTS_FILE: got" in run.stderr and "at least one prompt line" in run.stderr


def test_ctrl_c_stops_the_warm_worker_and_stores_nothing(smoke_env, home):
    import signal
    import subprocess

    import psutil

    from tests.conftest import KITTY
    from tests.proc_utils import read_events, wait_gone

    proc = subprocess.Popen([KITTY, "generate", "a slow cube", "--engine", "diffusers", "--model", "smoke",
                             "--steps", "150", "--count", "8"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**smoke_env, "KITTY_COREML_PROGRESS": "ndjson"})
    read_events(proc.stderr, lambda e: e["event"] == "step" and e["step"] >= 2, timeout=120)
    workers = [child.pid for child in psutil.Process(proc.pid).children(recursive=True)]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    assert "kitty-coreml: cancelled; the engine was stopped and nothing was stored" in proc.stderr.read()
    for pid in workers:
        wait_gone(pid)
    assert not list((home / "store").rglob("*.png"))


def test_doctor_with_the_smoke_model_installed_does_not_suggest_making_it(kitty, smoke_env):
    run = kitty("doctor", "--json", extra_env={"KITTY_COREML_SAMPLE_BIN": "", "KITTY_COREML_RESOURCE_PATH": ""})
    assert run.returncode == 0, run.stderr
    checks = {check["name"]: check for check in run.json["checks"]}
    fix = checks["core ml"]["fix"]
    assert "models smoke" not in fix and 'kitty-coreml generate "..." --engine diffusers --model smoke' in fix
    assert checks["model smoke"]["ok"]


def test_a_prompt_past_the_tokenizers_77_tokens_is_a_warning(kitty, smoke_env):
    long_prompt = " ".join(["a red cube"] * 30)
    result = kitty("generate", long_prompt, *DIFFUSERS, "--json").json
    [warning] = result["warnings"]
    assert re.fullmatch(r"the prompt is \d+ tokens, longer than the text encoder's 77, and was cut after '….+'",
                        warning), warning
    assert int(warning.split()[3]) > 77


def test_install_prints_each_step_once(smoke_env, home, tmp_path, tmp_path_factory):
    import shutil
    import subprocess

    from kitty_coreml.atomic import write_json
    from kitty_coreml.install.modelstep import RECEIPT_NAME, file_listing
    from tests.conftest import KITTY

    target = home / "models" / "smoke"  # the session's smoke model, installed: that step is already done
    shutil.copytree(smoke_model_path(tmp_path_factory.getbasetemp()), target)
    write_json(target / RECEIPT_NAME, {"model": "smoke", "files": file_listing(target)})
    Registry(home / "models.json").register(model_from_folder(target, "smoke"))
    env = {**smoke_env, "KITTY_COREML_INSTALL_COREML": "no", "KITTY_COREML_LINK_DIR": str(tmp_path / "links"),
           "KITTY_COREML_PROGRESS": "plain"}
    done = subprocess.run([KITTY, "install", "--model", "smoke"], env=env, capture_output=True, text=True,
                          timeout=240, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("kitty-coreml is installed (models smoke): ") and done.stdout.count("\n") == 1
    outcomes = [line for line in done.stderr.splitlines() if line[:2] in ("+ ", "= ", "- ")]
    titles = [line[2:].split(":")[0] for line in outcomes]
    assert "create the smoke model (tiny random weights, portable engine)" in titles
    assert len(titles) == len(set(titles)) >= 5, done.stderr
