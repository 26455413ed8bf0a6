"""What the Core ML engines would crash or fail late on is refused before either starts (SD3 img2img,
guidance below 1 on a batch-2 Unet), the doubles of Apple's binary and of the Swift worker fail where the
library does, and both engines see the same upright reference image whatever its EXIF orientation."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kitty_coreml.resources import inspect_resources
from tests.conformance.harness import WorkerSession
from tests.conftest import KITTY
from tests.fakes import make_resources, write_fake_worker

ENGINES = ["sample", "coreml-worker"]


@pytest.fixture
def launches(tmp_path: Path) -> Path:
    return tmp_path / "launches.log"


@pytest.fixture
def engine_env(env, tmp_path, launches):
    """env plus a Swift-worker double behind a wrapper that logs each launch, and the sample's argv log."""
    fake = write_fake_worker(tmp_path)
    wrapper = tmp_path / "logged-worker"
    wrapper.write_text(f"#!/bin/sh\necho worker >> '{launches}'\nexec '{fake}' \"$@\"\n")
    wrapper.chmod(0o755)
    return {**env, "KITTY_COREML_WORKER_BIN": str(wrapper), "FAKE_SD_ARGV_LOG": str(launches)}


def _kitty(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KITTY, *args], capture_output=True, text=True, env=env, timeout=120,
                          stdin=subprocess.DEVNULL)


def _reference(path: Path, size=(64, 64)) -> Path:
    Image.new("RGB", size, (200, 10, 10)).save(path)
    return path


def test_an_sd3_folder_does_not_advertise_img2img(tmp_path):
    info = inspect_resources(make_resources(tmp_path / "sd3", family="sd3", encoder=True))
    assert (tmp_path / "sd3" / "VAEEncoder.mlmodelc").is_dir()
    assert info.family == "sd3" and not info.has_encoder and info.unet_batch is None
    assert inspect_resources(make_resources(tmp_path / "sd", encoder=True)).has_encoder


@pytest.mark.parametrize("engine", ENGINES)
def test_sd3_img2img_is_refused_before_the_engine_starts(engine_env, tmp_path, launches, engine):
    sd3 = make_resources(tmp_path / "sd3", family="sd3", width=64, height=64, encoder=True)
    done = _kitty(engine_env, "generate", "a cube", "--model", str(sd3), "--engine", engine,
                  "--image", str(_reference(tmp_path / "ref.png")))
    assert done.returncode == 2, done.stderr
    line, = done.stderr.splitlines()
    assert line.startswith("kitty-coreml: error: image: got ") and "SD3" in line and "unsupported" in line
    assert not launches.exists(), launches.read_text()


@pytest.mark.parametrize("engine", ENGINES)
def test_guidance_below_1_on_a_batch_2_unet_is_refused_naming_the_batch(engine_env, tmp_path, launches, engine):
    model = make_resources(tmp_path / "sd", width=64, height=64)
    done = _kitty(engine_env, "generate", "a cube", "--model", str(model), "--engine", engine, "--guidance", "0.5")
    assert done.returncode == 2, done.stderr
    line, = done.stderr.splitlines()
    assert "guidance: got 0.5; allowed: 1..30" in line and "takes batch 2" in line
    assert not launches.exists()


@pytest.mark.parametrize("engine", ENGINES)
def test_guidance_below_1_runs_on_a_batch_1_unet(engine_env, tmp_path, launches, engine):
    model = make_resources(tmp_path / "sd", width=64, height=64, unet_batch=1)
    assert inspect_resources(model).unet_batch == 1
    done = _kitty(engine_env, "generate", "a cube", "--model", str(model), "--engine", engine, "--guidance", "0.5",
                  "--steps", "3", "--json")
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["images"]) == 1
    assert launches.read_text().strip()


def _run_fake_sample(fake_bin: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(fake_bin), *args], capture_output=True, text=True, timeout=60)


def test_apples_binary_double_fails_where_the_library_does(fake_bin, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    reference = _reference(tmp_path / "ref.png")
    sd3 = make_resources(tmp_path / "sd3", family="sd3", width=64, height=64, encoder=True)
    crashed = _run_fake_sample(fake_bin, "--sd3", f"--resource-path={sd3}", f"--image={reference}",
                               f"--output-path={out}", "--step-count=4", "--", "a cube")
    assert crashed.returncode == -5 and "Fatal error: Index out of range" in crashed.stderr  # SIGTRAP
    batch2 = make_resources(tmp_path / "b2", width=64, height=64)
    failed = _run_fake_sample(fake_bin, f"--resource-path={batch2}", "--guidance-scale=0.5",
                              f"--output-path={out}", "--step-count=4", "--", "a cube")
    assert failed.returncode == 1
    assert failed.stderr == ("Error: MultiArray shape (1 x 4 x 8 x 8) does not match the shape (2 x 4 x 8 x 8) "
                             "specified in the model description\n")
    batch1 = make_resources(tmp_path / "b1", width=64, height=64, unet_batch=1)
    assert _run_fake_sample(fake_bin, f"--resource-path={batch1}", "--guidance-scale=0.5", f"--output-path={out}",
                            "--step-count=4", "--", "a cube").returncode == 0


def test_swift_worker_double_refuses_what_the_worker_refuses(tmp_path):
    worker = write_fake_worker(tmp_path)
    sd3 = make_resources(tmp_path / "sd3", family="sd3", width=64, height=64, encoder=True)
    batch2 = make_resources(tmp_path / "b2", width=64, height=64)
    out = tmp_path / "out"
    out.mkdir()
    generate = {"type": "generate", "prompt": "a cube", "count": 1, "steps": 4, "guidance": 7.5,
                "scheduler": "dpmpp", "seed": 1, "output_dir": str(out)}
    session = WorkerSession([str(worker)])  # every line either side writes is checked against the schema
    try:
        _, loaded = session.call({"type": "load", "model_path": str(sd3), "compute_units": "all", "family": "sd3"})
        assert loaded["type"] == "loaded" and loaded["has_encoder"] is False
        _, refused = session.call({**generate, "input_image": str(_reference(tmp_path / "ref.png"))})
        assert refused["code"] == "unsupported" and "sd3" in refused["message"]
        session.call({"type": "load", "model_path": str(batch2), "compute_units": "all"})
        _, refused = session.call({**generate, "guidance": 0.5})
        assert refused["code"] == "unsupported" and "batch 2" in refused["message"]
    finally:
        session.close()
    assert not list(out.iterdir())


def _rotated_photo(path: Path) -> Path:
    """A 64x32 JPEG stored sideways: left half red, right half blue, EXIF orientation 6 (rotate 90
    degrees clockwise to view), so upright it is 32x64 with red on top."""
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, format="JPEG", quality=95, exif=exif.tobytes())
    return path


def test_both_engines_see_the_same_upright_reference(engine_env, tmp_path):
    model = make_resources(tmp_path / "tall", width=32, height=64, encoder=True)
    photo = _rotated_photo(tmp_path / "photo.jpg")
    seen = {}
    for engine in ENGINES:
        copy = tmp_path / f"seen-by-{engine}.png"
        done = _kitty({**engine_env, "FAKE_SD_INPUT_COPY": str(copy)}, "generate", "a cube", "--model", str(model),
                      "--engine", engine, "--image", str(photo), "--steps", "4")
        assert done.returncode == 0, done.stderr
        seen[engine] = copy.read_bytes()
        with Image.open(copy) as image:
            assert image.size == (32, 64)
            assert image.getexif().get(0x0112) in (None, 1)  # nothing left for an engine to rotate
            rgb = image.convert("RGB")
            top, bottom = rgb.getpixel((16, 8)), rgb.getpixel((16, 56))
        assert top[0] > 200 and top[2] < 60, top
        assert bottom[2] > 200 and bottom[0] < 60, bottom
    assert seen["sample"] == seen["coreml-worker"]

