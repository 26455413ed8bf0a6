"""The conformance suite runs against every worker there is here: the diffusers worker with the smoke
model, the double of the Swift worker (tests/fakes/coreml_worker.py, on a fake resource folder) and
the stable-diffusion.cpp worker with a random-weight SD 1.5 model (built once per machine, cached)
always; on a Mac with KITTY_COREML_LIVE=1 also the Swift worker (KITTY_COREML_WORKER_BIN) on the Core ML
resource folder in KITTY_COREML_RESOURCE_PATH."""

from __future__ import annotations

import sys

import pytest

from tests.conformance.harness import WorkerSession, WorkerTarget, smoke_model_path
from tests.fakes import FAKE_WORKER_SCRIPT, make_resources
from kitty_coreml.install.sd15_random import cached_random_sd15
from kitty_coreml.settings import Settings


def _targets() -> list[str]:
    settings = Settings.from_env()
    names = ["diffusers", "coreml-double", "sdcpp"]
    if settings.live and settings.worker_bin is not None:
        names.append("coreml")
    return names


@pytest.fixture(scope="session", params=_targets())
def target(request, tmp_path_factory) -> WorkerTarget:
    if request.param == "diffusers":
        return WorkerTarget("diffusers", [sys.executable, "-m", "kitty_coreml.engines.diffusers_worker"],
                            smoke_model_path(tmp_path_factory.getbasetemp()), "cpuOnly", steps=150)
    if request.param == "coreml-double":
        # a step takes 10 ms, so a cancel sent after the first progress event lands mid-run
        argv = ["env", "FAKE_SD_STEP_DELAY=0.01", sys.executable, str(FAKE_WORKER_SCRIPT)]
        model = make_resources(tmp_path_factory.mktemp("coreml-double") / "sd", width=64, height=64, encoder=True)
        return WorkerTarget("coreml-double", argv, model, "cpuAndGPU", steps=150)
    if request.param == "sdcpp":
        # the real stable-diffusion.cpp on a random-weight SD 1.5 model, at 64x64: about 0.5 s a step here
        return WorkerTarget("sdcpp", [sys.executable, "-m", "kitty_coreml.engines.sdcpp_worker"],
                            cached_random_sd15(), "all", steps=3, scheduler="dpmpp",
                            generate_fields={"width": 64, "height": 64})
    settings = Settings.from_env()
    if settings.resource_path is None:
        pytest.fail("KITTY_COREML_LIVE=1 with a worker binary needs KITTY_COREML_RESOURCE_PATH (a Core ML model)")
    return WorkerTarget("coreml", [str(settings.worker_bin)], settings.resource_path, "cpuAndGPU", steps=30)


@pytest.fixture
def session(target):
    """A fresh worker, nothing loaded."""
    worker = WorkerSession(target.argv)
    yield worker
    worker.close()


@pytest.fixture(scope="module")
def loaded(target):
    """One worker with the target's model loaded, shared by the tests of a module."""
    worker = WorkerSession(target.argv)
    _, reply = worker.call({"type": "load", "model_path": str(target.model_path),
                            "compute_units": target.compute_units}, timeout=600)
    assert reply["type"] == "loaded", reply
    yield worker
    worker.close()
