"""The stable-diffusion.cpp worker, for real: the package built from source, a random-weight model with
the SD 1.5 architecture (made offline, cached per machine), 64x64 images in two steps."""

from __future__ import annotations

import os
import sys

import pytest
from PIL import Image

from kitty_coreml.engines.protocol import encode
from kitty_coreml.install.sd15_random import cached_random_sd15
from tests.conformance.harness import WorkerSession

WORKER = [sys.executable, "-m", "kitty_coreml.engines.sdcpp_worker"]


@pytest.fixture(scope="module")
def model():
    return cached_random_sd15()


@pytest.fixture(scope="module")
def worker(model):
    session = WorkerSession(WORKER)
    _, reply = session.call({"type": "load", "model_path": str(model), "compute_units": "all"}, timeout=600)
    assert reply["type"] == "loaded", reply
    yield session
    session.close()


def _generate(out, **fields):
    out.mkdir(parents=True, exist_ok=True)
    return {"type": "generate", "prompt": "a lighthouse at dusk", "count": 1, "steps": 2, "guidance": 7.0,
            "scheduler": "dpmpp", "seed": 1234, "width": 64, "height": 64, "output_dir": str(out), **fields}


def _file_bytes(path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def test_hello_says_backend_devices_memory_and_what_sd_cpp_cannot_do():
    session = WorkerSession(WORKER)
    try:
        _, hello = session.call({"type": "hello", "protocol_version": 1}, timeout=120)
    finally:
        session.close()
    assert hello["engine"] == "sdcpp" and "stable-diffusion-cpp-python 0.4" in hello["engine_version"]
    assert "CPU" in hello["backends"]
    cpu = next(device for device in hello["devices"] if device["kind"] == "cpu")
    assert cpu["total_bytes"] > 0
    assert hello["schedulers"] == ["dpmpp"]  # no PNDM in sd.cpp
    assert "cancel_between_images" in hello["features"] and "cancel" not in hello["features"]
    assert hello["sizes"] == ["any"]


def test_load_reports_the_version_sd_cpp_recognised(worker, model):
    _, reply = worker.call({"type": "load", "model_path": str(model), "compute_units": "all"})
    assert reply["type"] == "loaded" and reply["family"] == "sd"
    assert (reply["width"], reply["height"]) == (512, 512)  # SD 1.x's own size; generates choose theirs
    assert reply["details"]["model_version"] == "SD 1.x"
    assert reply["details"]["backend"] == "CPU" and reply["details"]["weight_type"] == "file"


def test_count_two_reports_steps_writes_two_rgb_pngs_and_image_two_is_seed_plus_one(worker, tmp_path):
    events, reply = worker.call(_generate(tmp_path / "pair", count=2), timeout=600)
    assert reply["type"] == "result", reply
    assert [(event["step"], event["total"]) for event in events] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert [os.path.basename(path) for path in reply["images"]] == ["image_0.png", "image_1.png"]
    for path in reply["images"]:
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "RGB", (64, 64))
    assert _file_bytes(reply["images"][0]) != _file_bytes(reply["images"][1])
    assert reply["details"]["sampler"] == "dpm++2m" and reply["details"]["scheduler"] == "discrete"

    _, again = worker.call(_generate(tmp_path / "again", count=2), timeout=600)
    assert [_file_bytes(p) for p in again["images"]] == [_file_bytes(p) for p in reply["images"]]
    _, second = worker.call(_generate(tmp_path / "second", seed=1235), timeout=600)
    assert _file_bytes(second["images"][0]) == _file_bytes(reply["images"][1])


def test_a_size_sd_cpp_cannot_make_is_a_bad_request_naming_it(worker, tmp_path):
    message_id = worker.new_id()  # the schema refuses this request: sent raw, as a careless client would
    worker.send_raw(encode({**_generate(tmp_path / "odd", width=100), "id": message_id}))
    _, reply = worker.final(message_id, timeout=60)
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "width: got 100" in reply["message"]


def test_a_garbage_model_file_is_load_failed_and_the_worker_lives_on(tmp_path, model):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(os.urandom(64 * 1024))
    session = WorkerSession(WORKER)
    try:
        _, reply = session.call({"type": "load", "model_path": str(garbage), "compute_units": "all"}, timeout=120)
        assert (reply["type"], reply["code"]) == ("error", "load_failed"), reply
        assert str(garbage) in reply["message"] and "(" in reply["message"]  # with sd.cpp's own words
        for _ in range(12):  # more warnings than the worker keeps: each failure still quotes its own
            _, again = session.call({"type": "load", "model_path": str(garbage), "compute_units": "all"}, timeout=120)
        assert again["message"] == reply["message"]
        _, loaded = session.call({"type": "load", "model_path": str(model), "compute_units": "all"}, timeout=600)
        assert loaded["type"] == "loaded"  # the same process: no crash, nothing left of the bad load
        assert session.call({"type": "shutdown"})[1]["type"] == "bye"
        assert session.proc.wait(timeout=60) == 0
    finally:
        session.close()


def test_a_model_larger_than_memory_is_refused_naming_the_sizes(tmp_path):
    huge = tmp_path / "huge.gguf"
    with open(huge, "wb") as handle:  # sparse: 8 TiB on paper, no disk used
        handle.truncate(8 << 40)
    session = WorkerSession(WORKER)
    try:
        _, reply = session.call({"type": "load", "model_path": str(huge), "compute_units": "all"}, timeout=120)
    finally:
        session.close()
    assert (reply["type"], reply["code"]) == ("error", "load_failed")
    assert "huge.gguf needs about 8192.0 GiB" in reply["message"] and "free of" in reply["message"]


def test_weights_quantized_as_they_load(model, tmp_path):
    session = WorkerSession(WORKER)
    try:
        _, reply = session.call({"type": "load", "model_path": str(model), "compute_units": "all",
                                 "weight_type": "q8_0"}, timeout=600)
        assert reply["type"] == "loaded" and reply["details"]["weight_type"] == "q8_0"
        _, result = session.call(_generate(tmp_path / "q8"), timeout=600)
        assert result["type"] == "result" and result["details"]["weight_type"] == "q8_0"
    finally:
        session.close()
