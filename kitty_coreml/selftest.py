"""`kitty-coreml selftest`: the Apple half proved in one command and one JSON report.

Both modes run the same checks against the binaries the settings name (StableDiffusionSample and the
Swift worker) and one Core ML model: the worker's protocol basics, the contract of Apple's binary, one
generate per engine (with load, first-step, per-step and total timings), one Studio provider call and
one cancel. `--live` (a Mac only) first builds the worker from swift_bridge/, picks the smallest
installed Core ML model, and runs the conformance suite (tests/conformance) against the worker too.
Without --live the checks run wherever the settings point, which is how CI runs them against the test
doubles. Nothing is published to the user's store: images go to a temporary folder."""

from __future__ import annotations

import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .engines import coreml_unavailable_reason
from .engines.base import CancelToken, ProgressEvent
from .errors import Cancelled, KittyError, ModelError, PlatformUnsupported
from .models import ModelInfo, Registry, model_from_folder
from .resources import inspect_resources
from .settings import Settings

__all__ = ["run_selftest", "SELFTEST_STEPS"]

SELFTEST_STEPS = 4
"""Steps of each test generation: enough to time a step after the first, few enough to be quick."""
_CANCEL_STEPS = 50
_PROTOCOL_TIMEOUT_S = 900.0  # a first load on the Neural Engine compiles the model: minutes
_SAMPLE_OPTIONS = ("--resource-path", "--image", "--strength", "--image-count", "--step-count", "--output-path",
                   "--seed", "--guidance-scale", "--compute-units", "--scheduler", "--xl", "--sd3",
                   "--disable-safety", "--reduce-memory")


class _Check:
    """One named check: its outcome, duration and details go into the report, an exception becomes its
    failure (one line), and the next check still runs."""

    def __init__(self, report: dict[str, Any], name: str):
        self.report, self.name = report, name
        self.entry: dict[str, Any] = {"name": name, "ok": False}

    def __enter__(self) -> dict[str, Any]:
        self.started = time.monotonic()
        return self.entry

    def __exit__(self, kind, exc, tb) -> bool:
        self.entry["seconds"] = round(time.monotonic() - self.started, 4)
        if exc is None:
            self.entry["ok"] = True
        else:
            text = exc.one_line() if isinstance(exc, KittyError) else f"{type(exc).__name__}: {exc}"
            self.entry["error"] = " ".join(text.split())
            self.report["failures"].append({"check": self.name, "error": self.entry["error"]})
        self.report["checks"].append(self.entry)
        return exc is None or isinstance(exc, Exception)


def _first_line(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def _worker_binary(settings: Settings) -> Path:
    return settings.worker_bin or settings.bin_dir / "kitty-coreml-worker"


def _smallest_coreml_model(settings: Settings) -> ModelInfo:
    """The smallest installed Core ML model (by disk use); KITTY_COREML_RESOURCE_PATH when set."""
    if settings.resource_path is not None:
        return model_from_folder(settings.resource_path, "resource_path")
    sized = []
    for name in Registry(settings.registry_path).names():
        try:
            model = Registry(settings.registry_path).get(name)
        except KittyError:
            continue
        if model is not None and model.format == "coreml":
            sized.append((sum(p.stat().st_size for p in model.path.rglob("*") if p.is_file()), name, model))
    if not sized:
        raise ModelError("selftest needs an installed Core ML model and none is installed",
                         hint="run `kitty-coreml install` (the default model is the smallest), or set "
                              "KITTY_COREML_RESOURCE_PATH to a resource folder")
    return min(sized, key=lambda item: item[:2])[2]


class _Timeline:
    """Progress events with their times: load (until sampling starts), first step, per step, total."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.sampling: float | None = None
        self.steps: list[float] = []

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.kind == "sampling" and self.sampling is None:
            self.sampling = now
        elif event.kind == "step":
            self.steps.append(now)

    def timings(self) -> dict[str, float | None]:
        ended = time.monotonic()
        sampling = self.sampling if self.sampling is not None else (self.steps[0] if self.steps else None)
        per_step = (self.steps[-1] - self.steps[0]) / (len(self.steps) - 1) if len(self.steps) > 1 else None

        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, 4)

        return {"load_s": rounded(sampling - self.started if sampling is not None else None),
                "first_step_s": rounded(self.steps[0] - sampling if self.steps and sampling is not None else None),
                "per_step_s": rounded(per_step), "steps": len(self.steps), "total_s": rounded(ended - self.started)}


def _generate(settings: Settings, model: ModelInfo, engine: str, store_root: Path, *, steps: int,
              on_progress: Callable[[ProgressEvent], None], cancel: CancelToken | None = None):
    from .orchestrator import generate
    from .request import GenerationRequest
    from .storage.local import LocalStore

    request = GenerationRequest(prompt="kitty-coreml selftest: a red cube on a wooden table", count=1,
                                steps=steps, scheduler="dpmpp", seed=42, model=str(model.path), engine=engine)
    return generate(request, settings, store=LocalStore(store_root, settings.prefix), on_progress=on_progress,
                    cancel=cancel)


def _check_generate(entry: dict[str, Any], settings: Settings, model: ModelInfo, engine: str, store_root: Path) -> None:
    timeline = _Timeline()
    result = _generate(settings, model, engine, store_root, steps=SELFTEST_STEPS, on_progress=timeline)
    entry["timings"] = timeline.timings()
    entry["engine_timings"] = result.timings
    entry["images"] = [f"{image.width}x{image.height}" for image in result.images]
    if timeline.timings()["steps"] < 2:
        raise AssertionError(f"the {engine} engine reported {timeline.timings()['steps']} step(s) for {SELFTEST_STEPS}")


def _check_cancel(entry: dict[str, Any], settings: Settings, model: ModelInfo, store_root: Path) -> None:
    """A generate on the warm worker, cancelled at its first step: it must stop with Cancelled."""
    cancel = CancelToken()
    asked: list[float] = []

    def on_progress(event: ProgressEvent) -> None:
        if event.kind == "step" and not asked:
            asked.append(time.monotonic())
            cancel.cancel("selftest cancel")

    try:
        _generate(settings, model, "coreml-worker", store_root, steps=_CANCEL_STEPS, on_progress=on_progress,
                  cancel=cancel)
    except Cancelled:
        entry["stopped_after_s"] = round(time.monotonic() - asked[0], 4) if asked else None
        return
    raise AssertionError(f"a generate cancelled at its first step of {_CANCEL_STEPS} finished instead")


def _check_sample_contract(entry: dict[str, Any], binary: Path) -> None:
    """CONTRACTS.md section 1: --help exits 0 naming every option kitty-coreml passes; an unknown option
    is a parse error (exit 64, `Error: Unknown option`)."""
    shown = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=120,
                           stdin=subprocess.DEVNULL)
    if shown.returncode != 0:
        raise AssertionError(f"{binary} --help exited {shown.returncode}")
    missing = [option for option in _SAMPLE_OPTIONS if option not in shown.stdout + shown.stderr]
    if missing:
        raise AssertionError(f"{binary} --help does not list {', '.join(missing)}")
    bad = subprocess.run([str(binary), "--kitty-selftest-no-such-option", "a cube"], capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    if bad.returncode != 64 or "Error: Unknown option '--kitty-selftest-no-such-option'" not in bad.stderr:
        raise AssertionError(f"an unknown option gave exit {bad.returncode}, stderr {bad.stderr.strip()[:200]!r}")
    entry["options"] = len(_SAMPLE_OPTIONS)


class _RawWorker:
    """The worker at the protocol level: lines in, lines out, every read with a timeout."""

    def __init__(self, binary: Path):
        self.process = subprocess.Popen([str(binary)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def call(self, line: str, timeout: float = 60.0) -> dict[str, Any]:
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()
        while True:
            raw = self.lines.get(timeout=timeout)
            if not raw:
                raise AssertionError(f"the worker exited ({self.process.wait(5)}) without answering {line[:80]}")
            message = json.loads(raw)
            if message.get("type") != "progress":
                return message

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _check_worker_protocol(entry: dict[str, Any], binary: Path, model: ModelInfo, compute_units: str) -> None:
    """docs/protocol.md's basics: hello, a malformed line answered with id null, load reporting the size
    resources.py reads, shutdown answered with bye and exit 0."""
    worker = _RawWorker(binary)
    try:
        hello = worker.call('{"type":"hello","id":"1","protocol_version":1}')
        if hello.get("type") != "hello" or hello.get("engine") != "coreml" or model.family not in hello.get("families", []):
            raise AssertionError(f"hello answered {hello}")
        entry["engine_version"] = hello.get("engine_version")
        bad = worker.call("not json")
        if (bad.get("type"), bad.get("id"), bad.get("code")) != ("error", None, "malformed"):
            raise AssertionError(f"a line that is not JSON was answered {bad}")
        started = time.monotonic()
        loaded = worker.call(json.dumps({"type": "load", "id": "2", "model_path": str(model.path),
                                         "compute_units": compute_units, "family": model.family}),
                             timeout=_PROTOCOL_TIMEOUT_S)
        entry["load_s"] = round(time.monotonic() - started, 4)
        info = inspect_resources(model.path)
        if loaded.get("type") != "loaded" or (loaded.get("width"), loaded.get("height")) != (info.width, info.height):
            raise AssertionError(f"load answered {loaded}; resources.py reads {info.width}x{info.height}")
        bye = worker.call('{"type":"shutdown","id":"3"}')
        status = worker.process.wait(10)
        if bye.get("type") != "bye" or status != 0:
            raise AssertionError(f"shutdown answered {bye} and the worker exited {status}")
    finally:
        worker.close()


def _check_studio(entry: dict[str, Any], settings: Settings, model: ModelInfo, sample_binary: Path, home: Path) -> None:
    """One call of the Studio host's command, as the host makes it (cwd /, a request file, no stdin)."""
    request = home / "studio-request.json"
    request.write_text(json.dumps({"schema": "studio.local-image-generation.request.v1", "prompt": "a red cube",
                                   "count": 1, "aspectRatio": "1:1", "runId": "kitty-selftest",
                                   "localOptions": {"quality": "fast"}}))
    command = Path(sys.executable).with_name("systemsculpt-local-imagegen")
    env = {**os.environ, "KITTY_COREML_HOME": str(home / "studio-home"),
           "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "coreml_diffusion",
           "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(sample_binary),
           "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(model.path)}
    started = time.monotonic()
    done = subprocess.run([str(command), "--request", str(request)], capture_output=True, text=True, env=env,
                          cwd="/", stdin=subprocess.DEVNULL, timeout=settings.timeout_s)
    entry["timings"] = {"total_s": round(time.monotonic() - started, 4)}
    if done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}: {done.stderr.strip()[:300]}")
    response = json.loads(done.stdout)
    images = response.get("images") or []
    if not images or not all(Path(image.get("path", "")).is_file() or image.get("base64") for image in images):
        raise AssertionError(f"the response holds no usable image: {done.stdout[:300]}")
    entry["model_id"] = response.get("modelId")


def run_selftest(settings: Settings, *, live: bool) -> dict[str, Any]:
    """Run every check and return the report; raises only when --live is asked for off a Mac."""
    reason = coreml_unavailable_reason()
    if live and reason:
        raise PlatformUnsupported(f"selftest --live needs a Mac: {reason}",
                                  hint="here `kitty-coreml selftest` runs the same checks against the binaries "
                                       "KITTY_COREML_SAMPLE_BIN and KITTY_COREML_WORKER_BIN name")
    from . import __version__

    report: dict[str, Any] = {"live": live, "ok": False, "versions": {}, "model": None, "checks": [], "failures": []}
    worker = _worker_binary(settings)
    with tempfile.TemporaryDirectory(prefix="kitty-selftest-") as scratch:
        scratch_dir = Path(scratch)
        if live:
            with _Check(report, "build the worker") as entry:
                from .install.progress import Reporter
                from .install.toolchain import WorkerBuildStep

                entry["detail"] = WorkerBuildStep(settings).run(Reporter("none"))
        report["versions"] = {
            "kitty_coreml": __version__, "python": platform.python_version(),
            "system": f"{platform.system()} {platform.release()} {platform.machine()}",
            "macos": platform.mac_ver()[0] or None, "swift": _first_line(["swift", "--version"]),
            "ml_stable_diffusion": settings.ml_sd_commit,
            "worker": _first_line([str(worker), "--version"]) if worker.is_file() else None,
        }
        model = None
        with _Check(report, "pick a Core ML model") as entry:
            model = _smallest_coreml_model(settings)
            report["model"] = model.to_dict()
        sample = None
        with _Check(report, "find StableDiffusionSample") as entry:
            from .engines.sample import find_sample_binary

            sample = find_sample_binary(settings.sample_bin, settings.bin_dir)
            entry["detail"] = str(sample)
            report["versions"]["sample_binary"] = str(sample)
        if sample is not None:
            with _Check(report, "contract: StableDiffusionSample") as entry:
                _check_sample_contract(entry, sample)
        if model is not None:
            from .orchestrator import default_compute_units

            units = default_compute_units(model)
            with _Check(report, "protocol: kitty-coreml-worker") as entry:
                _check_worker_protocol(entry, worker, model, units)
            if live:
                with _Check(report, "conformance suite: kitty-coreml-worker") as entry:
                    entry.update(_conformance(settings, worker, model))
            for engine in ("sample", "coreml-worker"):
                with _Check(report, f"generate: {engine}") as entry:
                    _check_generate(entry, settings, model, engine, scratch_dir / "store")
            if sample is not None:
                with _Check(report, "studio provider") as entry:
                    _check_studio(entry, settings, model, sample, scratch_dir)
            with _Check(report, "cancel: coreml-worker") as entry:
                _check_cancel(entry, settings, model, scratch_dir / "store")
    report["ok"] = not report["failures"]
    return report


def _conformance(settings: Settings, worker: Path, model: ModelInfo) -> dict[str, Any]:
    """tests/conformance from the source clone, against the worker, with KITTY_COREML_LIVE=1."""
    from .install.toolchain import swift_bridge_dir

    bridge = swift_bridge_dir(settings)
    suite = bridge.parent / "tests" / "conformance" if bridge else None
    if suite is None or not suite.is_dir():
        raise AssertionError("the conformance suite is not here: run selftest from the kitty-coreml clone "
                             "(or set KITTY_COREML_SOURCE_DIR to it)")
    env = {**os.environ, "KITTY_COREML_LIVE": "1", "KITTY_COREML_WORKER_BIN": str(worker),
           "KITTY_COREML_RESOURCE_PATH": str(model.path)}
    # only the Swift worker's parametrisation: the diffusers and double targets are CI's
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k",
                           "coreml and not double", str(suite)],
                          capture_output=True, text=True, env=env, cwd=bridge.parent, stdin=subprocess.DEVNULL,
                          timeout=3600)
    summary = (done.stdout.strip().splitlines() or ["no output"])[-1]
    if done.returncode != 0:
        raise AssertionError(f"pytest exited {done.returncode}: {summary}")
    return {"summary": summary}
