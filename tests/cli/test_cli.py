"""The CLI as a user meets it: help, images list/select, doctor, dry-run, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

COMMANDS = [[], ["generate"], ["images"], ["images", "list"], ["images", "select"], ["doctor"], ["models"]]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help_reads_well(kitty, command):
    run = kitty(*command, "--help")
    assert run.returncode == 0
    assert "Usage:" in run.stdout and "Traceback" not in run.stdout


def test_generate_help_lists_every_flag(kitty):
    text = kitty("generate", "--help").stdout
    for flag in ["--negative", "--count", "--steps", "--guidance", "--scheduler", "--compute-units", "--seed",
                 "--run-id", "--image", "--strength", "--safety", "--no-safety", "--reduce-memory", "--timeout",
                 "--engine", "--model", "--json", "--dry-run"]:
        assert flag in text


def test_dry_run_resolves_and_launches_nothing(kitty, tmp_path, fake_bin, resources):
    log = tmp_path / "argv.jsonl"
    run = kitty("generate", "a red cube", "--run-id", "run_abc", "--negative=-blurry", "--dry-run",
                extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 0, run.stderr
    plan = run.json
    assert plan["seed"] == 2348168122 and plan["runId"] == "run_abc"
    assert plan["argv"][0] == str(fake_bin)
    assert plan["argv"][-2:] == ["--", "a red cube"]
    assert "--negative-prompt=-blurry" in plan["argv"] and f"--resource-path={resources}" in plan["argv"]
    assert plan["model"]["width"] == 512 and plan["computeUnits"] == "cpuAndNeuralEngine"
    assert not log.exists()


def test_images_list_and_select(kitty, home):
    assert kitty("images", "list", "--json").json == {"items": []}
    first = kitty("generate", "first", "--json").json["images"][0]
    second = kitty("generate", "second", "--count", "2", "--json").json["images"]
    listed = kitty("images", "list", "--json").json["items"]
    assert len(listed) == 3
    assert {item["key"] for item in listed} == {first["key"], *(image["key"] for image in second)}
    assert [item["key"] for item in listed] == sorted((item["key"] for item in listed), reverse=True)
    assert listed[-1]["key"] == first["key"], "the first image made is the oldest"
    assert len(kitty("images", "list", "--limit", "2", "--json").json["items"]) == 2
    newest = kitty("images", "select", "1", "--json").json
    assert newest["imageRef"]["storageUri"] == (home / "store" / listed[0]["key"]).as_uri()
    by_key = kitty("images", "select", first["key"], "--json").json
    assert by_key["imageRef"]["downloadUrl"] == first["storageUri"]
    assert "downloadUrl: file://" in kitty("images", "select", "1").stdout


@pytest.mark.parametrize(("ref", "message"), [("9", "image index 9: only 0 image(s) stored"),
                                              ("0", "indexes start at 1"),
                                              ("../secret.png", "key: got"),
                                              ("images/nothing.png", "no image with key")])
def test_select_refuses_bad_refs(kitty, ref, message):
    run = kitty("images", "select", ref)
    assert run.returncode == 2 and message in run.stderr and run.stderr.count("\n") == 1


def test_list_limit_validated(kitty):
    run = kitty("images", "list", "--limit", "0")
    assert run.returncode == 2 and "limit: got 0; allowed: an integer 1..1000" in run.stderr


def test_doctor_says_why_core_ml_cannot_run(kitty, home):
    run = kitty("doctor", "--json", extra_env={"KITTY_COREML_SAMPLE_BIN": "", "KITTY_COREML_RESOURCE_PATH": ""})
    report = run.json
    assert run.returncode == 1 and report["ready"] == []
    assert report["coreml"]["available"] is False
    assert "Core ML runs only on macOS 13.1+ on Apple Silicon" in report["coreml"]["reason"]
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["StableDiffusionSample"]["detail"] == "not applicable: Core ML cannot run here"
    assert "models smoke" in checks["models"]["fix"] and not checks["models"]["ok"]
    assert "models smoke" in checks["core ml"]["fix"]


def test_doctor_ready_with_binary_and_model(kitty):
    run = kitty("doctor")
    assert run.returncode == 0
    assert "[ok  ] StableDiffusionSample" in run.stdout
    assert "ready: sample engine with model KITTY_COREML_RESOURCE_PATH" in run.stdout


def test_core_ml_model_without_binary_on_linux_says_why(kitty):
    run = kitty("generate", "a cube", extra_env={"KITTY_COREML_SAMPLE_BIN": ""})
    assert run.returncode == 3
    assert "is a Core ML model and Core ML runs only on macOS 13.1+ on Apple Silicon" in run.stderr
    assert "--engine diffusers --model smoke" in run.stderr


def test_unknown_model_named(kitty):
    run = kitty("generate", "a cube", "--model", "nosuchmodel")
    assert run.returncode == 3
    assert "unknown model 'nosuchmodel'" in run.stderr and "sd21-palettized" in run.stderr


def test_bad_environment_is_one_line(kitty):
    run = kitty("generate", "a cube", extra_env={"KITTY_COREML_ENGINE": "turbo"})
    assert run.returncode == 2
    assert run.stderr == ("kitty-coreml: error: KITTY_COREML_ENGINE: got 'turbo'; allowed: auto, sample, "
                          "coreml-worker, diffusers, sdcpp, mock\n")


def test_json_errors_are_json(kitty):
    run = kitty("generate", "a cube", "--steps", "0", "--json")
    assert run.returncode == 2
    assert json.loads(run.stdout)["error"]["code"] == "invalid_request"


def test_debug_shows_traceback(kitty):
    run = kitty("--debug", "generate", "a cube", "--steps", "0")
    assert run.returncode != 0 and "Traceback" in run.stderr


def test_progress_plain_lines_when_not_a_terminal(kitty):
    run = kitty("generate", "a cube", "--steps", "10", extra_env={"KITTY_COREML_PROGRESS": "auto"})
    assert run.returncode == 0
    assert "step 9 of 10" in run.stderr and "step 10 of 10" in run.stderr and "of 11" not in run.stderr


def test_same_run_id_reproduces_the_seed(kitty):
    one = kitty("generate", "a red cube", "--run-id", "run_abc", "--json").json
    two = kitty("generate", "a red cube", "--run-id", "run_abc", "--json").json
    assert one["seed"] == two["seed"] == 2348168122
    assert Path(one["images"][0]["path"]).read_bytes() != b""
    explicit = kitty("generate", "a red cube", "--seed", "7", "--json").json
    assert explicit["seed"] == 7 and explicit["runId"].startswith("run_")
