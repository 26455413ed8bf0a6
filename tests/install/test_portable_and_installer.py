"""The portable path (Linux: smoke model, no Core ML) and installers/install.sh."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
INSTALLER = ROOT / "installers" / "install.sh"
CLI = Path(sys.executable).with_name("kitty-coreml")


def _env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITTY_COREML_", "SYSTEMSCULPT_", "HF_"))}
    env.update({"KITTY_COREML_HOME": str(tmp / "home"), "KITTY_COREML_LINK_DIR": str(tmp / "links"),
                "KITTY_COREML_INSTALL_COREML": "no", "KITTY_COREML_PROGRESS": "plain", **extra})
    return env


def test_portable_install_sets_up_the_smoke_model_and_verify_names_a_deleted_file(tmp_path):
    env = _env(tmp_path)
    done = subprocess.run([str(CLI), "install", "--json"], env=env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    steps = {s["name"]: s for s in json.loads(done.stdout)["steps"]}
    assert steps["ml-stable-diffusion"]["status"] == "not_applicable"
    assert "KITTY_COREML_INSTALL_COREML=no" in steps["ml-stable-diffusion"]["detail"]
    assert steps["model:smoke"]["status"] == "done"

    listed = subprocess.run([str(CLI), "models", "list", "--json"], env=env, capture_output=True, text=True,
                            timeout=60)
    report = json.loads(listed.stdout)
    assert [m["name"] for m in report["installed"]] == ["smoke"] and report["default"] == "smoke"
    assert report["installed"][0]["disk_bytes"] > 0
    available = {a["name"]: a for a in report["available"]}
    assert available["sd21-palettized"]["repo"] == "apple/coreml-stable-diffusion-2-1-base-palettized"
    assert available["sd21-palettized"]["installed"] is False

    assert subprocess.run([str(CLI), "install", "--verify"], env=env, capture_output=True,
                          timeout=60).returncode == 0
    weights = tmp_path / "home" / "models" / "smoke" / "unet" / "diffusion_pytorch_model.safetensors"
    weights.unlink()
    broken = subprocess.run([str(CLI), "install", "--verify"], env=env, capture_output=True, text=True, timeout=60)
    assert broken.returncode == 10 and f"{weights} is missing" in broken.stderr


def test_a_core_ml_model_where_core_ml_cannot_run_is_refused_in_one_line(tmp_path):
    done = subprocess.run([str(CLI), "install", "--model", "sd21-palettized"], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 10
    assert done.stderr.count("\n") == 1 and "sd21-palettized is a Core ML model" in done.stderr
    assert not (tmp_path / "home").exists()


def test_installer_help_lists_every_flag():
    done = subprocess.run([str(INSTALLER), "--help"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0
    accepted = set(re.findall(r"^\s+(?:-h\|)?(--[a-z-]+)\)", INSTALLER.read_text(), re.MULTILINE))
    assert {"--prefix", "--python", "--model", "--link-dir", "--verify", "--dry-run", "--json"} <= accepted
    for flag in accepted:
        assert re.search(rf"^\s+(?:-h, )?{re.escape(flag)}\b", done.stdout, re.MULTILINE), f"{flag} is not in --help"


def test_installer_fails_in_one_line_on_a_bad_option_or_python(tmp_path):
    bad = subprocess.run([str(INSTALLER), "--frobnicate"], capture_output=True, text=True, timeout=30)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "--frobnicate" in bad.stderr
    old = tmp_path / "python2"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    done = subprocess.run([str(INSTALLER), "--prefix", str(tmp_path / "p"), "--python", str(old)],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 1 and "is not a Python 3.11 or newer" in done.stderr


@pytest.mark.timeout(1800)  # a hang guard, not a time limit: a loaded machine installs torch slowly
def test_installer_sets_up_a_prefix_offline_and_a_second_run_redoes_nothing(tmp_path):
    """The whole installer on Linux: a fresh virtual environment from pip's local sources (about a minute,
    most of it installing torch from the wheel on disk)."""
    prefix = tmp_path / "prefix"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITTY_COREML_", "SYSTEMSCULPT_", "HF_"))}
    env["KITTY_COREML_LINK_DIR"] = str(tmp_path / "links")
    first = subprocess.run([str(INSTALLER), "--prefix", str(prefix)], env=env, capture_output=True, text=True,
                           timeout=1500)
    assert first.returncode == 0, first.stderr[-2000:]
    generated = subprocess.run([str(prefix / "bin" / "kitty-coreml"), "generate", "a red cube", "--json"],
                               env={k: v for k, v in env.items() if k != "KITTY_COREML_LINK_DIR"}, cwd="/",
                               capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr[-2000:]
    answer = json.loads(generated.stdout)
    assert answer["model"] == "smoke" and Path(answer["images"][0]["path"]).is_file()
    assert str(prefix) in answer["images"][0]["path"]
    # `serve` and `worker`, which the README names, have what they import (the service extra)
    imports = subprocess.run([str(prefix / "venv" / "bin" / "python"), "-c", "import fastapi, uvicorn, rq, redis"],
                             capture_output=True, text=True, timeout=60)
    assert imports.returncode == 0, imports.stderr

    second = subprocess.run([str(INSTALLER), "--prefix", str(prefix), "--json"], env=env, capture_output=True,
                            text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "installing" not in second.stderr, "nothing is reinstalled"
    statuses = {s["status"] for s in json.loads(second.stdout)["steps"]}
    assert statuses <= {"skipped", "not_applicable"}
