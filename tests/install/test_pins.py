"""Catalog pins: what could not be confirmed says "unverified pin" in `models list` and `install
--dry-run`; installing such an entry records the commit and sha256 it got, and later runs are held to them."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

from kitty_coreml.install.catalog import pin_note
from kitty_coreml.models import CATALOG
from tests.conftest import KITTY, clean_env

from .conftest import ARCHIVE, MODEL_COMMIT, REPO, Stage


def test_only_pins_not_confirmed_are_called_unverified(tmp_path):
    assert {name: bool(pin_note(entry)) for name, entry in CATALOG.items()} == {
        "sd21-palettized": False, "sd15-palettized": False, "sdxl-base": True, "sdxl-mbp": True}
    assert all(entry.revision != "main" for entry in CATALOG.values())
    env = clean_env(KITTY_COREML_HOME=str(tmp_path / "home"))
    listed = subprocess.run([KITTY, "models", "list"], capture_output=True, text=True, env=env, check=True).stdout
    flagged = [line.split()[0] for line in listed.splitlines() if "unverified pin" in line]
    assert flagged == ["sdxl-base", "sdxl-mbp"]
    planned = subprocess.run([KITTY, "install", "--dry-run", "--json", "--model", "sdxl-base", "--model",
                              "sd21-palettized"], capture_output=True, text=True, env=env, check=True)
    plans = {step["name"]: step["plan"] for step in json.loads(planned.stdout)["steps"] if "model" in step["plan"]}
    assert plans["model:sdxl-base"]["pin"].startswith("unverified pin: ")
    assert plans["model:sd21-palettized"]["pin"] == "verified"


def test_install_records_what_it_got_and_holds_later_runs_to_it(stage: Stage):
    stage.write_catalog(sha256=None)  # a pinned commit, no sha256: an unverified pin
    stage.install_json("--model", "sd21-palettized")
    pins_file = stage.home / "pins.json"
    pins = json.loads(pins_file.read_text())
    recorded_sha = hashlib.sha256(stage.archive).hexdigest()
    assert pins["sd21-palettized"] == {"repo": REPO, "file": ARCHIVE, "revision": MODEL_COMMIT, "commit": MODEL_COMMIT,
                                       "sha256": recorded_sha,
                                       "size": len(stage.archive)}
    assert stage.run("install", "--verify", "--model", "sd21-palettized").returncode == 0

    tampered = {**pins["sd21-palettized"], "sha256": "0" * 64}
    pins_file.write_text(json.dumps({"sd21-palettized": tampered}))
    verify = stage.run("install", "--verify", "--model", "sd21-palettized")
    assert verify.returncode == 10
    assert f"not the recorded commit {MODEL_COMMIT} (sha256 {'0' * 64})" in verify.stderr

    # the folder is gone and must come again: the hub now serves other bytes, which are refused
    pins_file.write_text(json.dumps(pins))
    shutil.rmtree(stage.model_dir)
    changed = stage.archive + b"changed upstream"
    stage.hub.add(REPO, ARCHIVE, changed)
    again = stage.run("install", "--model", "sd21-palettized")
    assert again.returncode == 10, again.stderr
    assert hashlib.sha256(changed).hexdigest() in again.stderr and recorded_sha in again.stderr
    assert not stage.model_dir.exists() and json.loads(pins_file.read_text()) == pins
