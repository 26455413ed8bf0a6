"""KITTY's setting: MODELS_YAML naming fake Core ML bundles (SDXL 1024x1024 with UnetRefiner, SD 512x512),
our real service in front of it, KITTY's gateway stand-in in front of that, and KITTY's service stand-in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.fakes import make_resources
from tests.proc_utils import wait_until
from tests.service.conftest import free_port, mock_env, redis_url, service_factory, stop_process  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def write_kitty_models(folder: Path) -> dict[str, Path]:
    """KITTY's models.yaml, with the folders it names: {"yaml": file, "sdxl": folder, "sd15": folder}."""
    sdxl = make_resources(folder / "sd_xl_base", family="sdxl", width=1024, height=1024, attention="original")
    shutil.copytree(sdxl / "Unet.mlmodelc", sdxl / "UnetRefiner.mlmodelc")
    sd15 = make_resources(folder / "sd15_base", width=512, height=512)
    yaml = folder / "models.yaml"
    yaml.write_text(f"# KITTY's format\nsdxl_base: {sdxl}\nsdxl_refiner: {sdxl}\nsd15_base: sd15_base\n")
    return {"yaml": yaml, "sdxl": sdxl, "sd15": sd15}


@pytest.fixture
def kitty_models(tmp_path: Path) -> dict[str, Path]:
    return write_kitty_models(tmp_path / "models")


@pytest.fixture
def kitty_env(mock_env, kitty_models) -> dict[str, str]:  # noqa: F811
    return {**mock_env, "MODELS_YAML": str(kitty_models["yaml"])}


@pytest.fixture
def ours(kitty_env, service_factory):  # noqa: F811
    return service_factory(kitty_env)


def _serve(argv: list[str], url: str, probe: str):
    process = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdin=subprocess.DEVNULL,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def up() -> bool:
        assert process.poll() is None, process.stderr.read()
        try:
            return httpx.get(url + probe, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(up, 30, f"{argv[1]} to answer")
    return process


@pytest.fixture
def gateway(ours):
    """KITTY's gateway stand-in with IMAGES_BASE = our service."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _serve(["-m", "tests.kitty.gateway", str(port), ours.url], url, "/healthz")
    yield url
    stop_process(process)


def start_standin(root: Path) -> tuple[str, subprocess.Popen]:
    """KITTY's images-service stand-in, knowing the models of KITTY's models.yaml.example."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _serve(["-m", "tests.kitty.standin_service", str(port), str(root), "sdxl_base", "sdxl_refiner",
                      "sd15_base"], url, "/")
    return url, process


@pytest.fixture
def standin(tmp_path):
    url, process = start_standin(tmp_path / "standin")
    yield url
    stop_process(process)
