"""WorkerEngine against real worker processes: the diffusers worker on the smoke model for reuse and
reloads, and tests/fakes/crashy_worker.py for crashes, hangs and cancels."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kitty_coreml.engines.base import CancelToken, EngineJob
from kitty_coreml.engines.worker import WorkerEngine
from kitty_coreml.errors import Cancelled, EngineError, EngineTimeout, ModelError
from kitty_coreml.models import ModelInfo, model_from_folder
from kitty_coreml.request import GenerationRequest
from tests.conformance.harness import smoke_model_path
from tests.proc_utils import gone, wait_gone, wait_until

DIFFUSERS = [sys.executable, "-m", "kitty_coreml.engines.diffusers_worker"]
CRASHY = [sys.executable, str(Path(__file__).resolve().parents[1] / "fakes" / "crashy_worker.py")]
FAKE_MODEL = ModelInfo(name="fake", format="diffusers", path=Path("/models/fake"), width=64, height=64)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> ModelInfo:
    return model_from_folder(smoke_model_path(tmp_path_factory.getbasetemp()), "smoke")


def _job(tmp_path: Path, model: ModelInfo, name: str = "out", *, timeout_s: float = 120,
         compute_units: str = "cpuOnly", seed: int = 5, **fields) -> EngineJob:
    output_dir = tmp_path / name
    output_dir.mkdir()
    request = GenerationRequest(**{"prompt": "a cube", "steps": 3, **fields})
    return EngineJob(request=request, seed=seed, run_id="run_1", model=model, compute_units=compute_units,
                     output_dir=output_dir, timeout_s=timeout_s)


def _run(engine: WorkerEngine, job: EngineJob, cancel: CancelToken | None = None):
    events = []
    output = engine.generate(job, events.append, cancel or CancelToken())
    return output, events


@pytest.fixture
def engines():
    made: list[WorkerEngine] = []

    def make(command, **options) -> WorkerEngine:
        engine = WorkerEngine(command, name=options.pop("name", "diffusers"),
                              idle_unload_s=options.pop("idle_unload_s", 600), **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def test_one_warm_process_serves_many_requests_and_reloads_on_change(engines, smoke, tmp_path):
    engine = engines(DIFFUSERS)
    first, events = _run(engine, _job(tmp_path, smoke, "a"))
    pid = engine.worker_pid
    assert pid is not None
    assert [e.kind for e in events].count("loading") == 2  # start, load
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, steps[-1].total + 1))
    second, events = _run(engine, _job(tmp_path, smoke, "b", count=2))
    assert engine.worker_pid == pid
    assert not [e for e in events if e.kind == "loading"]  # warm: neither started nor loaded again
    assert [image.path.name for image in second.images] == ["image_0.png", "image_1.png"]
    assert _pixels(first.images[0].path) == _pixels(second.images[0].path)  # same seed, same pixels
    steps = [e for e in events if e.kind == "step"]
    assert [e.step for e in steps] == list(range(1, steps[-1].total + 1))  # one count over both images
    _, events = _run(engine, _job(tmp_path, smoke, "c", compute_units="all"))
    assert engine.worker_pid == pid
    assert [e.message for e in events if e.kind == "loading"] == ["loading smoke on all"]


def _pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return np.asarray(image).tobytes()


def test_image_i_of_a_request_is_bit_identical_to_a_single_image_with_seed_plus_i(engines, smoke, tmp_path):
    # The promise docs/protocol.md makes: per-image generators and batch-1 runs, so the batch size
    # cannot change the rounding. Checked on bytes, not closeness.
    engine = engines(DIFFUSERS)
    pair, _ = _run(engine, _job(tmp_path, smoke, "pair", count=2, seed=41, scheduler="dpmpp"))
    alone, _ = _run(engine, _job(tmp_path, smoke, "alone", seed=42, scheduler="dpmpp"))
    assert _pixels(pair.images[1].path) == _pixels(alone.images[0].path)
    assert _pixels(pair.images[0].path) != _pixels(pair.images[1].path)


def test_a_model_of_another_format_fails_loud(engines, tmp_path):
    engine = engines(CRASHY)
    coreml = ModelInfo(name="sd21", format="coreml", path=Path("/models/sd21"))
    with pytest.raises(ModelError, match="sd21.*coreml model.*diffusers models"):
        _run(engine, _job(tmp_path, coreml))


def test_a_model_the_worker_cannot_load_names_the_folder(engines, tmp_path):
    engine = engines(DIFFUSERS)
    missing = ModelInfo(name="gone", format="diffusers", path=tmp_path / "gone")
    with pytest.raises(ModelError, match=str(tmp_path / "gone")):
        _run(engine, _job(tmp_path, missing))


def test_a_crash_fails_that_request_with_stderr_and_the_next_one_works(engines, tmp_path):
    engine = engines(CRASHY)
    _run(engine, _job(tmp_path, FAKE_MODEL, "warm"))
    crashed_pid = engine.worker_pid
    with pytest.raises(EngineError) as failure:
        _run(engine, _job(tmp_path, FAKE_MODEL, "crash", prompt="crash"))
    assert "exit code 3" in failure.value.message
    assert "boom: simulated crash in the sampler" in failure.value.message
    assert gone(crashed_pid)
    output, _ = _run(engine, _job(tmp_path, FAKE_MODEL, "after"))
    assert engine.worker_pid not in (None, crashed_pid)
    assert output.images[0].path.is_file()


def test_timeout_kills_the_worker_and_everything_it_started(engines, tmp_path):
    engine = engines(CRASHY)
    _run(engine, _job(tmp_path, FAKE_MODEL, "warm"))
    pid = engine.worker_pid
    with pytest.raises(EngineTimeout, match="did not finish generating in time") as failure:
        _run(engine, _job(tmp_path, FAKE_MODEL, "hang", prompt="hang", timeout_s=3))
    tail = failure.value.details["stderr_tail"]
    grandchild = next(int(line.split()[1]) for line in tail if line.startswith("grandchild"))
    wait_gone(pid, timeout=10)
    wait_gone(grandchild, timeout=10)
    assert engine.worker_pid is None


def test_cancel_is_sent_and_honoured(engines, tmp_path):
    engine = engines(CRASHY)
    cancel = CancelToken()
    events = []

    def on_progress(event):
        events.append(event)
        if event.kind == "step" and event.step == 3:
            cancel.cancel("stop button")

    with pytest.raises(Cancelled, match="stop button"):
        engine.generate(_job(tmp_path, FAKE_MODEL, prompt="slow", steps=100), on_progress, cancel)
    assert engine.worker_pid is not None  # honoured: the worker stopped by itself and stays warm
    output, _ = _run(engine, _job(tmp_path, FAKE_MODEL, "after"))
    assert output.images[0].path.is_file()


def test_a_worker_ignoring_cancel_is_killed_after_the_grace(engines, tmp_path):
    engine = engines(CRASHY, cancel_grace_s=1.0)
    cancel = CancelToken()

    def on_progress(event):
        if event.kind == "step":
            cancel.cancel("stop button")

    with pytest.raises(Cancelled, match="did not stop within 1 s and was killed"):
        engine.generate(_job(tmp_path, FAKE_MODEL, prompt="hang"), on_progress, cancel)
    assert engine.worker_pid is None


def test_idle_worker_is_shut_down_and_restarted_on_demand(engines, tmp_path):
    engine = engines(CRASHY, idle_unload_s=0.3)
    _run(engine, _job(tmp_path, FAKE_MODEL, "a"))
    first = engine.worker_pid
    wait_until(lambda: gone(first), timeout=20, what="the idle worker to exit")
    assert engine.worker_pid is None
    _run(engine, _job(tmp_path, FAKE_MODEL, "b"))
    assert engine.worker_pid not in (None, first)


def test_close_shuts_the_worker_down_and_is_idempotent(engines, tmp_path):
    engine = engines(CRASHY)
    _run(engine, _job(tmp_path, FAKE_MODEL))
    pid = engine.worker_pid
    engine.close()
    engine.close()
    assert gone(pid)


def test_the_worker_dies_with_a_killed_parent(tmp_path):
    """kill -9 the process that owns a WorkerEngine: the worker must not outlive it."""
    script = textwrap.dedent(f"""
        import sys, threading
        from pathlib import Path
        from kitty_coreml.engines.base import CancelToken, EngineJob
        from kitty_coreml.engines.worker import WorkerEngine
        from kitty_coreml.models import ModelInfo
        from kitty_coreml.request import GenerationRequest

        engine = WorkerEngine({CRASHY!r}, name="diffusers", idle_unload_s=600)
        out = Path({str(tmp_path / "out")!r}); out.mkdir()
        job = EngineJob(request=GenerationRequest(prompt="x"), seed=1, run_id="r", compute_units="all",
                        model=ModelInfo(name="fake", format="diffusers", path=Path("/m")), output_dir=out)
        # from a thread that then ends: the worker must survive the thread, and die with the process
        thread = threading.Thread(target=engine.generate, args=(job, lambda e: None, CancelToken()))
        thread.start(); thread.join()
        print(engine.worker_pid, flush=True)
        sys.stdin.read()
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        worker_pid = int(parent.stdout.readline())
        assert not gone(worker_pid)  # alive although the thread that started it has ended
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        wait_gone(worker_pid, timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
