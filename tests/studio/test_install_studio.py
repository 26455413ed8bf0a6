"""`kitty-coreml install` for a Studio user: the original installer's bundles are registered instead of
downloaded again, and the commands go where the Studio host looks (or the installer says what to run)."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from kitty_coreml.install.links import HOST_SEARCHED, LinkStep
from kitty_coreml.install.progress import Reporter
from kitty_coreml.models import Registry
from kitty_coreml.settings import Settings
from kitty_coreml.studio import ORIGINAL_MODEL_ID
from tests.conftest import clean_env
from tests.install.conftest import FakeHub, Stage
from tests.studio.harness import argv_log, option, original_bundle, original_home, original_provider, request


@pytest.fixture
def stage(tmp_path: Path):
    hub = FakeHub()
    hub.thread.start()
    yield Stage(tmp_path, hub)
    hub.release.set()
    hub.server.shutdown()
    hub.server.server_close()


def test_install_imports_the_original_bundles_instead_of_downloading(stage: Stage, tmp_path: Path) -> None:
    user = original_home(tmp_path / "user")
    stage.env["HOME"] = str(user)
    report = stage.install_json()
    statuses = {step["name"]: step["status"] for step in report["steps"]}
    assert statuses["studio-import"] == "done" and "model:sd21-palettized" not in statuses
    assert stage.hub.gets() == []  # nothing downloaded
    models = Registry(stage.home / "models.json").read()
    assert models["default"] == "sd21-palettized"
    assert models["models"]["sd21-palettized"]["path"] == str(original_bundle(user, "1:1"))
    assert models["models"]["sd21-palettized-16x9"]["path"] == str(original_bundle(user, "16:9"))
    manifest = json.loads((stage.home / "studio-manifest.json").read_text())
    assert {label: entry["resourcePath"] for label, entry in manifest["ratios"].items()} == \
        {label: str(original_bundle(user, label)) for label in ("1:1", "4:3", "3:4", "16:9", "9:16")}
    again = stage.install_json()
    assert {step["name"]: step["status"] for step in again["steps"]}["studio-import"] == "skipped"

    # The install's own StableDiffusionSample is a build stand-in that makes no images: use the fake one.
    binary = user / "gits/apps/ml-stable-diffusion/.build/release/StableDiffusionSample"
    provider = original_provider(tmp_path, user, KITTY_COREML_HOME=str(stage.home),
                                 SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN=str(binary))
    answer = provider.run(request(aspectRatio="9:16")).answer
    assert answer["metadata"]["resourcePathSource"] == "kitty_manifest"
    assert option(argv_log(provider)[-1], "resource-path") == str(original_bundle(user, "9:16"))
    assert answer["modelId"] == f"{ORIGINAL_MODEL_ID}:cpuAndGPU"


def _settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env(clean_env(KITTY_COREML_HOME=str(tmp_path / "home"), PATH="/usr/bin:/bin", **env))


def test_on_a_mac_the_commands_go_where_the_host_looks(tmp_path: Path) -> None:
    homebrew = tmp_path / "opt-homebrew-bin"
    homebrew.mkdir()
    step = LinkStep(_settings(tmp_path), system="Darwin", host_folders=(tmp_path / "absent", homebrew))
    assert step.link_dir == homebrew  # not on the shell PATH, but the host adds it
    stream = io.StringIO()
    step.run(Reporter("plain", stream))
    link = homebrew / "systemsculpt-local-imagegen"
    assert os.path.realpath(link) == str(tmp_path / "home" / "bin" / "systemsculpt-local-imagegen")
    assert "note: the Studio host" not in stream.getvalue()
    ran = subprocess.run([str(link), "--help"], capture_output=True, text=True, env=clean_env())
    assert ran.returncode == 0 and "Usage: systemsculpt-local-imagegen" in ran.stdout


def test_elsewhere_the_installer_says_exactly_what_to_run(tmp_path: Path) -> None:
    links = tmp_path / "links"
    step = LinkStep(_settings(tmp_path, KITTY_COREML_LINK_DIR=str(links)), system="Darwin",
                    host_folders=(tmp_path / "absent",))
    stream = io.StringIO()
    step.run(Reporter("plain", stream))
    launcher = tmp_path / "home" / "bin" / "systemsculpt-local-imagegen"
    expected = f"sudo ln -sf {launcher} /usr/local/bin/systemsculpt-local-imagegen"
    assert expected in stream.getvalue() and ", ".join(str(p) for p in HOST_SEARCHED) in stream.getvalue()
    assert expected in step.plan()["studio_host_commands"]
    assert LinkStep(_settings(tmp_path, KITTY_COREML_LINK_DIR=str(links)), system="Linux").plan()[
        "studio_host_commands"] == []
