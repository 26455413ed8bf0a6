"""WorkerEngine: a warm worker process behind the Engine protocol, over the worker protocol
(docs/protocol.md). One process serves many generate() calls; the model is loaded once and loaded
again only when the job asks for another one.

Supervision: the worker runs in its own process group and, on Linux, dies with this process
(PR_SET_PDEATHSIG). A request past its timeout kills the group; a cancel is sent to the worker and the
group is killed if it has not stopped within the grace period; a worker that exits during a request
fails that request with its stderr tail, and the next request starts a new one. After idle_unload_s
without a request the worker is shut down; close() and interpreter exit shut it down too.
"""

from __future__ import annotations

import atexit
import itertools
import json
import queue
import subprocess
import sys
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..errors import Cancelled, EngineError, EngineTimeout, KittyError, ModelError
from ..process import Watchdog, describe_exit, die_with_parent, kill_tree
from .base import CancelToken, EngineImage, EngineJob, EngineOutput, ProgressCallback, ProgressEvent
from .protocol import PROTOCOL_VERSION, encode

__all__ = ["WorkerEngine"]

_POLL_S = 0.1
_STDERR_LINES = 40
_FORMATS = {"sdcpp": "checkpoint"}
"""A worker's engine name (hello) -> the model format it loads, where the two differ."""
_LIVE: set[subprocess.Popen] = set()
"""Every worker process any WorkerEngine started and has not yet reaped: killed at interpreter exit."""
_LIVE_LOCK = threading.Lock()
# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. Workers are
# therefore spawned from this one long-lived thread, so a worker started from a short-lived request
# thread (the service's) outlives that thread and dies only with the process.
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kitty-worker-spawner")


def _kill_all_live() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
    for proc in procs:
        if proc.poll() is None:
            kill_tree(proc.pid, grace_s=1.0, popen=proc)


atexit.register(_kill_all_live)


class _Worker:
    """One running worker process: its pipes, a reader thread per stream and what it has said."""

    def __init__(self, command: list[str], env: dict[str, str] | None, name: str):
        self.name = name
        try:
            self.proc = _SPAWNER.submit(
                subprocess.Popen, command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, env=env, start_new_session=True, close_fds=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            ).result()
        except OSError as exc:
            raise EngineError(f"could not start the {name} worker {command[0]}: {exc.strerror or exc}",
                              hint="check that the worker command exists and is executable") from None
        self.watchdog: Watchdog | None = Watchdog(self.proc.pid)
        with _LIVE_LOCK:
            _LIVE.add(self.proc)
        self.messages: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.stderr_tail: deque[str] = deque(maxlen=_STDERR_LINES)
        self.loaded_key: tuple | None = None
        self.load_details: dict[str, Any] = {}
        self.result_details: dict[str, Any] = {}
        """What the worker said of the library, device and sampler behind its last result (sdcpp)."""
        self.hello: dict[str, Any] = {}
        self._stdout_reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._stderr_reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._stdout_reader.start()
        self._stderr_reader.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def _read_stdout(self) -> None:
        for raw in self.proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                message = None
            if not isinstance(message, dict):
                self.stderr_tail.append(f"(not a protocol line on stdout) {raw[:200]!r}")
                continue
            self.messages.put(message)
        self.messages.put(None)

    def _read_stderr(self) -> None:
        for raw in self.proc.stderr:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.stderr_tail.append(line)

    def send(self, message: dict[str, Any]) -> None:
        try:
            self.proc.stdin.write(encode(message))
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError, OSError):
            pass  # it has exited: its end of stdout says so, and the caller reports that

    def tail(self, lines: int = 8) -> str:
        """The last stderr lines on one line; after an exit or a kill, waits briefly for the last ones."""
        self._stderr_reader.join(timeout=2)
        return " | ".join(list(self.stderr_tail)[-lines:]) or "(nothing on stderr)"

    def kill(self) -> None:
        if self.alive():
            kill_tree(self.proc.pid, grace_s=0.5, popen=self.proc)
        else:
            kill_tree(self.proc.pid, grace_s=0, popen=None)  # its group may hold children
            self.proc.wait()
        self._release()

    def _release(self) -> None:
        if self.watchdog is not None:
            self.watchdog.release()
            self.watchdog = None
        with _LIVE_LOCK:
            _LIVE.discard(self.proc)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                stream.close()
            except OSError:
                pass


class WorkerEngine:
    """The Engine protocol on a warm worker process that speaks docs/protocol.md.

    command: the worker's argv (no shell). name: the engine's name in results. idle_unload_s: shut the
    worker down after this many seconds without a request. env: the worker's whole environment
    (default: this process's). cancel_grace_s: how long a cancelled worker may take to stop before it
    is killed. shutdown_grace_s: the same for a shutdown."""

    def __init__(self, command: list[str], *, name: str, idle_unload_s: float, env: dict[str, str] | None = None,
                 cancel_grace_s: float = 10.0, shutdown_grace_s: float = 5.0,
                 load_options: dict[str, Any] | None = None):
        if not command:
            raise ValueError("command: an argv list with at least the program")
        self.command = [str(part) for part in command]
        self.name = name
        self.idle_unload_s = idle_unload_s
        self.env = env
        self.cancel_grace_s = cancel_grace_s
        self.shutdown_grace_s = shutdown_grace_s
        self.load_options = dict(load_options or {})
        """Fields every load carries beyond the protocol's own (the sdcpp worker's weight_type)."""
        self._worker: _Worker | None = None
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._idle_timer: threading.Timer | None = None
        self._epoch = 0
        """Bumped by every request; an idle timer armed in an older epoch does nothing."""

    @property
    def worker_pid(self) -> int | None:
        """The running worker's process id, None when none runs."""
        worker = self._worker
        return worker.pid if worker is not None and worker.alive() else None

    def describe(self, job: EngineJob) -> dict[str, Any]:
        return {"engine": self.name, "worker": self.command, "model": str(job.model.path),
                "computeUnits": job.compute_units, "warm": self.worker_pid is not None}

    def generate(self, job: EngineJob, on_progress: ProgressCallback, cancel: CancelToken) -> EngineOutput:
        with self._lock:
            self._epoch += 1
            self._stop_idle_timer()
            deadline = time.monotonic() + job.timeout_s
            timings: dict[str, float] = {}
            try:
                started = time.monotonic()
                worker = self._ready_worker(on_progress, cancel, deadline)
                timings["worker_start_s"] = time.monotonic() - started
                started = time.monotonic()
                self._ensure_loaded(worker, job, on_progress, cancel, deadline)
                timings["load_s"] = time.monotonic() - started
                started = time.monotonic()
                images, warnings = self._generate(worker, job, on_progress, cancel, deadline)
                timings["generate_s"] = time.monotonic() - started
                return EngineOutput(engine=self.name, images=images, timings=timings,
                                    log_tail=list(worker.stderr_tail), warnings=warnings,
                                    details=dict(worker.result_details))
            finally:
                self._arm_idle_timer()

    def close(self) -> None:
        """Shut the worker down (kill it after the shutdown grace). Safe to call twice, from any thread."""
        self._stop_idle_timer()
        if not self._lock.acquire(timeout=0.5):
            worker = self._worker  # a request is running in another thread: end it the hard way
            if worker is not None:
                worker.kill()
            return
        try:
            self._shutdown_worker()
        finally:
            self._lock.release()

    # -- the worker's life ------------------------------------------------------------------------
    def _ready_worker(self, on_progress: ProgressCallback, cancel: CancelToken, deadline: float) -> _Worker:
        worker = self._worker
        if worker is not None and worker.alive():
            return worker
        if worker is not None:  # it died while idle (killed, out of memory): start afresh
            worker.kill()
            self._worker = None
        on_progress(ProgressEvent("loading", message=f"starting the {self.name} worker"))
        worker = _Worker(self.command, self.env, self.name)
        self._worker = worker
        reply = self._exchange(worker, {"type": "hello", "protocol_version": PROTOCOL_VERSION},
                               on_progress, cancel, deadline, doing="starting")
        worker.hello = reply
        return worker

    def _ensure_loaded(self, worker: _Worker, job: EngineJob, on_progress: ProgressCallback,
                       cancel: CancelToken, deadline: float) -> None:
        model = job.model
        engine_format = _FORMATS.get(worker.hello.get("engine"), worker.hello.get("engine"))
        if model.path is None or model.format != engine_format:
            raise ModelError(f"model {model.name!r} is a {model.format} model; the {self.name} engine runs "
                             f"{engine_format} models",
                             hint="pick a model of that format, or another --engine")
        key = (str(model.path), job.compute_units, model.family, job.request.reduce_memory, job.request.safety)
        if worker.loaded_key == key:
            return
        on_progress(ProgressEvent("loading", message=f"loading {model.name} on {job.compute_units}"))
        worker.loaded_key = None
        reply = self._exchange(worker, {"type": "load", "model_path": str(model.path), "compute_units": job.compute_units,
                                "family": model.family, "reduce_memory": job.request.reduce_memory,
                                "safety": job.request.safety, **self.load_options},
                       on_progress, cancel, deadline, doing="loading")
        worker.loaded_key = key
        worker.load_details = reply.get("details") or {}

    def _generate(self, worker: _Worker, job: EngineJob, on_progress: ProgressCallback, cancel: CancelToken,
                  deadline: float) -> tuple[list[EngineImage], list[str]]:
        request = job.request
        message: dict[str, Any] = {
            "type": "generate", "prompt": request.prompt, "negative_prompt": request.negative_prompt,
            "count": request.count, "steps": request.steps, "guidance": request.guidance,
            "scheduler": request.scheduler, "seed": job.seed, "output_dir": str(Path(job.output_dir).absolute()),
        }
        if job.input_image is not None:
            message.update(input_image=str(Path(job.input_image).absolute()), strength=request.effective_strength)
        if "any" in worker.hello.get("sizes", ()):  # the worker makes the size asked, not only its model's own
            message.update(width=job.model.width, height=job.model.height)
        on_progress(ProgressEvent("sampling", images=request.count))
        reply = self._exchange(worker, message, on_progress, cancel, deadline, doing="generating")
        paths = reply.get("images")
        if not isinstance(paths, list) or len(paths) != request.count:
            raise EngineError(f"the {self.name} worker listed {paths!r} for {request.count} image(s)")
        images = []
        output_dir = Path(job.output_dir).absolute()
        for index, path in enumerate(paths):
            if path is not None and Path(path).parent != output_dir:
                raise EngineError(f"the {self.name} worker wrote {path} outside the run folder {output_dir}")
            images.append(EngineImage(index=index, path=Path(path) if path is not None else None))
        on_progress(ProgressEvent("saved", images=sum(1 for image in images if image.path is not None)))
        details = reply.get("details")
        if isinstance(details, dict):
            worker.result_details = {**worker.load_details, **details}
        return images, [warning for warning in reply.get("warnings") or [] if isinstance(warning, str)]

    def _exchange(self, worker: _Worker, message: dict[str, Any], on_progress: ProgressCallback,
                  cancel: CancelToken, deadline: float, *, doing: str) -> dict[str, Any]:
        """Send one request and wait for its final reply, relaying progress; enforce the deadline and
        the cancel grace; turn an error reply, an exit or a timeout into a KittyError."""
        try:
            return self._await_reply(worker, message, on_progress, cancel, deadline, doing)
        except KittyError:
            raise
        except BaseException:
            # Ctrl-C or a failing progress callback left the worker mid-request: it cannot be reused
            self._discard(worker)
            raise

    def _await_reply(self, worker: _Worker, message: dict[str, Any], on_progress: ProgressCallback,
                     cancel: CancelToken, deadline: float, doing: str) -> dict[str, Any]:
        message_id = f"r{next(self._ids)}"
        worker.send({"id": message_id, **message})
        cancel_sent_at: float | None = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                self._discard(worker)
                worker.tail()
                raise EngineTimeout(f"the {self.name} worker did not finish {doing} in time and was killed",
                                    hint="raise --timeout, or lower --steps/--count",
                                    details={"stderr_tail": list(worker.stderr_tail)})
            if cancel.cancelled:
                if cancel_sent_at is None:
                    cancel_sent_at = now
                    worker.send({"id": f"r{next(self._ids)}", "type": "cancel", "target": message_id})
                elif now - cancel_sent_at >= self.cancel_grace_s:
                    self._discard(worker)
                    worker.tail()
                    raise Cancelled(f"generation cancelled ({cancel.reason}); the {self.name} worker did not "
                                    f"stop within {self.cancel_grace_s:g} s and was killed",
                                    details={"stderr_tail": list(worker.stderr_tail)})
            try:
                reply = worker.messages.get(timeout=_POLL_S)
            except queue.Empty:
                continue
            if reply is None:
                code = worker.proc.wait()
                tail = worker.tail()
                self._discard(worker)
                raise EngineError(f"the {self.name} worker died while {doing} ({describe_exit(code)}); "
                                  f"stderr: {tail}", hint="the next request starts a new worker",
                                  details={"stderr_tail": list(worker.stderr_tail)})
            if reply.get("id") != message_id:
                if reply.get("type") == "error" and reply.get("id") is None:
                    worker.stderr_tail.append(f"(worker refused a line) {reply.get('message')}")
                continue  # the ack of our cancel, or a late line of an earlier request
            kind = reply.get("type")
            if kind == "progress":
                on_progress(ProgressEvent("step", step=reply.get("step"), total=reply.get("total")))
                continue
            if kind == "error":
                raise self._error(reply, cancel, doing)
            return reply

    def _error(self, reply: dict[str, Any], cancel: CancelToken, doing: str) -> KittyError:
        code, text = reply.get("code"), reply.get("message") or "(no message)"
        if code == "cancelled":
            return Cancelled(f"generation cancelled ({cancel.reason})" if cancel.cancelled else f"cancelled: {text}")
        if code in ("load_failed", "unsupported"):
            return ModelError(f"the {self.name} worker could not use the model: {text}")
        return EngineError(f"the {self.name} worker failed while {doing} ({code}): {text}")

    def _discard(self, worker: _Worker) -> None:
        worker.kill()
        if self._worker is worker:
            self._worker = None

    def _shutdown_worker(self) -> None:
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if worker.alive():
            worker.send({"id": f"r{next(self._ids)}", "type": "shutdown"})
            try:
                worker.proc.wait(timeout=self.shutdown_grace_s)
            except subprocess.TimeoutExpired:
                pass
        worker.kill()

    # -- idle unload ---------------------------------------------------------------------------------
    def _arm_idle_timer(self) -> None:
        if self._worker is None:
            return
        epoch = self._epoch
        timer = threading.Timer(self.idle_unload_s, self._idle_shutdown, args=(epoch,))
        timer.daemon = True
        self._idle_timer = timer
        timer.start()

    def _stop_idle_timer(self) -> None:
        timer, self._idle_timer = self._idle_timer, None
        if timer is not None:
            timer.cancel()

    def _idle_shutdown(self, epoch: int) -> None:
        with self._lock:
            if epoch == self._epoch:
                self._shutdown_worker()
