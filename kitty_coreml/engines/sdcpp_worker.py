"""The stable-diffusion.cpp warm worker: the worker protocol (docs/protocol.md) on
stable-diffusion-cpp-python, for single-file models (.gguf, .safetensors, .ckpt) on CUDA, Metal,
Vulkan or the CPU, whichever backend the installed build was compiled with (docs/sdcpp.md).

    python -m kitty_coreml.engines.sdcpp_worker

What sd.cpp cannot do, the worker says in hello rather than pretending: there is no PNDM sampler
(`schedulers` is ["dpmpp"], and pndm is answered `unsupported`), and a running image cannot be
stopped (an exception in its progress callback is ignored), so `features` has
`cancel_between_images`: a cancel takes effect when the current image is done.

sd.cpp keeps its progress and log callbacks in globals and calls them from C at any time, also while
loading; the Python package registers a per-call callback that is freed when the call returns, and
the next call through the stale pointer crashes. So this worker registers both callbacks once, for
the life of the process, and routes them to whatever generate is running.

Environment: KITTY_COREML_SDCPP_THREADS (default: the physical cores), KITTY_COREML_SDCPP_VERBOSE=1
(sd.cpp's info and debug lines on stderr), KITTY_COREML_SDCPP_FLASH_ATTN=1, KITTY_COREML_SDCPP_VAE_ON_CPU=1,
KITTY_COREML_SDCPP_OFFLOAD=1 (weights in RAM, moved to VRAM when needed).
"""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..settings import SDCPP_WEIGHT_TYPES as WEIGHT_TYPES
from .sdcpp_probe import backend_label, probe
from .worker_runtime import (
    Job,
    LineWriter,
    PythonWorker,
    RequestFailed,
    check_field,
    own_version,
    read_generate,
    run_worker,
    save_png,
)

__all__ = ["main", "MODEL_SUFFIXES", "WEIGHT_TYPES", "SAMPLERS"]

COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")
MODEL_SUFFIXES = (".gguf", ".safetensors", ".ckpt")
SAMPLERS = {"dpmpp": ("dpm++2m", "discrete")}
"""Protocol scheduler -> (sd.cpp sample method, sd.cpp scheduler): the closest match of diffusers'
DPMSolverMultistepScheduler. sd.cpp has no PNDM."""
FAMILIES = {"SD 1.x": "sd", "SD 2.x": "sd", "SDXL": "sdxl", "SD3": "sd3"}
"""sd.cpp's version names (the `Version:` line it logs while loading) -> protocol families."""
NATIVE_SIZE = {"SD 1.x": 512, "SD 2.x": 768, "SDXL": 1024, "SD3": 1024}
_LOG_DEBUG, _LOG_INFO, _LOG_WARN, _LOG_ERROR = range(4)
_FALSE = ("", "0", "false", "no", "off")


def _flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() not in _FALSE


class _Callbacks:
    """sd.cpp's global progress and log callbacks, registered once and kept alive here."""

    def __init__(self) -> None:
        import stable_diffusion_cpp as sd

        self.on_step: Callable[[int, int], None] | None = None
        self.log_tail: deque[str] = deque(maxlen=12)
        self.warned = 0
        """Warning and error lines logged so far: a mark for errors_since, which the bounded tail cannot be."""
        self.verbose = _flag("KITTY_COREML_SDCPP_VERBOSE")
        self.versions: list[str] = []
        self._progress = sd.sd_progress_callback(self._progress_cb)
        self._log = sd.sd_log_callback(self._log_cb)
        sd.sd_set_progress_callback(self._progress, ctypes.c_void_p(0))
        sd.sd_set_log_callback(self._log, ctypes.c_void_p(0))

    def _progress_cb(self, step: int, steps: int, seconds: float, data: Any) -> None:
        handler = self.on_step
        if handler is not None:
            try:
                handler(int(step), int(steps))
            except Exception as exc:  # never let an exception unwind into C
                print(f"kitty-coreml sdcpp worker: progress handler failed: {exc}", file=sys.stderr)

    def _log_cb(self, level: int, text: bytes, data: Any) -> None:
        line = (text or b"").decode("utf-8", "replace").rstrip()
        if not line:
            return
        if "Version: " in line:
            self.versions.append(line.split("Version: ", 1)[1].strip())
        if level >= _LOG_WARN:
            self.log_tail.append(line)
            self.warned += 1
        if self.verbose or level >= _LOG_WARN:
            print(line, file=sys.stderr, flush=True)

    def errors_since(self, mark: int) -> str:
        """The last warning and error lines (three at most) logged after `mark` (a value of `warned`)."""
        new = min(self.warned - mark, len(self.log_tail))
        lines = list(self.log_tail)[len(self.log_tail) - new:] if new > 0 else []
        return " | ".join(" ".join(line.split()) for line in lines[-3:])


@dataclass
class _Loaded:
    key: tuple
    model: Any
    version: str
    device: str
    width: int
    height: int
    weight_type: str
    reply: dict[str, Any]


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def _free_memory(build: Any) -> tuple[str, int, int] | None:
    """(where, free bytes, total bytes) for the weights: the first GPU's memory, else the RAM available
    (ggml's CPU device reports the machine's total as free)."""
    for device in build.gpu_devices:
        if device.total_bytes:
            return device.name, device.free_bytes, device.total_bytes
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return "RAM", os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page
    except (ValueError, OSError, AttributeError):  # not a POSIX system that says
        return None


class SdcppWorker(PythonWorker):
    def __init__(self, writer: LineWriter, stdin: IO[bytes]):
        super().__init__(writer, stdin)
        self.loaded: _Loaded | None = None
        self._callbacks: _Callbacks | None = None
        self._build: Any = None

    def _library(self) -> tuple[_Callbacks, Any]:
        if self._callbacks is None:

            self._build = probe()
            self._callbacks = _Callbacks()
        return self._callbacks, self._build

    # -- the requests ---------------------------------------------------------------------------
    def hello_fields(self) -> dict[str, Any]:
        _, build = self._library()
        fresh = probe()  # free memory now, not at start
        return {"engine": "sdcpp",
                "engine_version": f"kitty-coreml {own_version()}; stable-diffusion-cpp-python "
                                  f"{build.package_version}; stable-diffusion.cpp {build.library_version}",
                "device": build.device, "families": sorted(set(FAMILIES.values())), "sizes": ["any"],
                "compute_units": list(COMPUTE_UNITS), "schedulers": list(SAMPLERS),
                "features": ["img2img", "cancel_between_images"], "backends": build.backends,
                "devices": [{"name": d.name, "description": d.description, "kind": d.kind,
                             "free_bytes": d.free_bytes, "total_bytes": d.total_bytes} for d in fresh.devices]}

    def load(self, message: dict[str, Any]) -> dict[str, Any]:
        model_path = check_field(message, "model_path", (str,))
        compute_units = check_field(message, "compute_units", (str,), choices=COMPUTE_UNITS)
        family = check_field(message, "family", (str,), default=None, choices=("sd", "sdxl", "sd3"))
        weight_type = check_field(message, "weight_type", (str,), default="file", choices=WEIGHT_TYPES)
        check_field(message, "reduce_memory", (bool,), default=False)
        check_field(message, "safety", (bool,), default=False)  # sd.cpp has none: has_safety says so
        path = Path(model_path)
        if not path.is_absolute():
            raise RequestFailed("bad_request", f"model_path: got {model_path!r}; allowed: an absolute path")
        key = (str(path), compute_units, family, weight_type)
        if self.loaded is not None and self.loaded.key == key:
            return {**self.loaded.reply, "id": message["id"], "seconds": 0.0}
        self.unload()
        if not path.is_file() or path.suffix.lower() not in MODEL_SUFFIXES:
            raise RequestFailed("load_failed", f"{path} is not a model file stable-diffusion.cpp loads "
                                               f"(a {', '.join(MODEL_SUFFIXES)} file)")
        callbacks, build = self._library()
        if compute_units == "cpuOnly" and build.device != "cpu":
            raise RequestFailed("load_failed", f"compute_units: got 'cpuOnly'; this stable-diffusion.cpp build "
                                               f"computes on {build.gpu_devices[0].name} (sd.cpp chooses its "
                                               f"device when it starts; allowed: all, cpuAndGPU)")
        self._check_memory(path, weight_type)
        started = time.monotonic()
        mark, versions_before = callbacks.warned, len(callbacks.versions)
        model = self._construct(path, weight_type, callbacks, mark)
        version = callbacks.versions[-1] if len(callbacks.versions) > versions_before else "unknown"
        loaded_family = FAMILIES.get(version)
        if family is not None and loaded_family is not None and family != loaded_family:
            model.close()
            raise RequestFailed("load_failed", f"family: got {family!r}; {path.name} is {version} ({loaded_family})")
        size = NATIVE_SIZE.get(version, 512)
        backend = backend_label(build.gpu_backends[0]) if build.device != "cpu" else "CPU"
        device_name = build.gpu_devices[0].name if build.device != "cpu" else "CPU"
        reply = {"type": "loaded", "id": message["id"], "model_path": str(path), "compute_units": compute_units,
                 "device": build.device, "family": loaded_family or family or "sd", "width": size, "height": size,
                 "has_encoder": True, "has_safety": False, "seconds": round(time.monotonic() - started, 4),
                 "details": {"library": "stable-diffusion.cpp", "library_version": build.library_version,
                             "package_version": build.package_version, "backend": backend,
                             "device_name": device_name, "model_version": version, "weight_type": weight_type}}
        self.loaded = _Loaded(key=key, model=model, version=version, device=build.device, width=size, height=size,
                              weight_type=weight_type, reply=reply)
        return reply

    @staticmethod
    def _check_memory(path: Path, weight_type: str) -> None:
        """A model that cannot fit is refused before sd.cpp tries: its own allocation failure is a log
        line and a NULL context, and on some backends an abort."""
        where = _free_memory(probe())  # free memory now, not when the worker started
        if where is None:
            return
        name, free, total = where
        needed = path.stat().st_size
        if weight_type in ("f32",):
            needed *= 2
        if needed > free:
            raise RequestFailed("load_failed", f"{path.name} needs about {_gib(needed)} to load; {name} has "
                                               f"{_gib(free)} free of {_gib(total)} (free memory, or load a "
                                               f"quantized file or weight type such as q8_0 or q4_0)")

    @staticmethod
    def _construct(path: Path, weight_type: str, callbacks: _Callbacks, mark: int) -> Any:
        from stable_diffusion_cpp import StableDiffusion

        threads = int(os.environ.get("KITTY_COREML_SDCPP_THREADS") or 0)
        options: dict[str, Any] = {
            "model_path": str(path), "n_threads": threads if threads > 0 else -1,
            "wtype": "default" if weight_type == "file" else weight_type, "verbose": callbacks.verbose,
            "flash_attn": _flag("KITTY_COREML_SDCPP_FLASH_ATTN"), "keep_vae_on_cpu": _flag("KITTY_COREML_SDCPP_VAE_ON_CPU"),
            "offload_params_to_cpu": _flag("KITTY_COREML_SDCPP_OFFLOAD"),
        }
        if threads <= 0:
            import stable_diffusion_cpp as sd

            options["n_threads"] = max(1, int(sd.sd_get_num_physical_cores()))
        try:
            model = StableDiffusion(**options)
        except Exception as exc:
            raise RequestFailed("load_failed", f"cannot load {path}: {type(exc).__name__}: {exc}") from exc
        if not model._model.model:  # a NULL context: freeing it, as the package would, crashes
            model._model.model = None
            said = callbacks.errors_since(mark)
            raise RequestFailed("load_failed", f"cannot load {path}: stable-diffusion.cpp did not accept it"
                                               f"{' (' + said + ')' if said else ''}")
        return model

    def unload(self) -> None:
        if self.loaded is None:
            return
        loaded, self.loaded = self.loaded, None
        loaded.model.close()

    def generate(self, job: Job) -> dict[str, Any]:
        message = job.message
        fields = read_generate(message)
        count, steps, seed, output_dir = fields.count, fields.steps, fields.seed, fields.output_dir
        if self.loaded is None:
            raise RequestFailed("not_loaded", "no model is loaded; send load first")
        loaded = self.loaded
        width = self._size(message, "width", loaded.width)
        height = self._size(message, "height", loaded.height)
        if fields.scheduler not in SAMPLERS:
            raise RequestFailed("unsupported", f"scheduler: got {fields.scheduler!r}; stable-diffusion.cpp has "
                                               f"no PNDM sampler; allowed: {', '.join(SAMPLERS)}")
        sample_method, sd_scheduler = SAMPLERS[fields.scheduler]
        starting = None if fields.input_image is None else self._starting_image(fields.input_image, width, height)
        callbacks, build = self._library()
        done_steps = 0
        per_image: list[int] = []

        def on_step(step: int, total: int) -> None:
            if step < 1 or total < 1:
                return
            if not per_image:
                per_image.append(total)
            if total == per_image[0] and step <= total:
                self.writer.send({"type": "progress", "id": message["id"], "step": done_steps + step,
                                  "total": per_image[0] * count})

        arguments: dict[str, Any] = {
            "prompt": fields.prompt, "negative_prompt": fields.negative, "width": width, "height": height,
            "cfg_scale": fields.guidance, "sample_steps": steps, "sample_method": sample_method,
            "scheduler": sd_scheduler, "batch_count": 1,
        }
        if starting is not None:
            arguments.update(init_image=starting, strength=fields.strength)
        started = time.monotonic()
        images = []
        # One image per call, seeded seed + i: a cancel can act between images (not inside one), and
        # image i is then the same as a count-1 request with seed + i.
        callbacks.on_step = on_step
        try:
            for index in range(count):
                if job.stop.is_set():
                    raise RequestFailed("cancelled", f"cancelled after {index} of {count} image(s) "
                                                     "(stable-diffusion.cpp stops between images)")
                mark = callbacks.warned
                try:
                    made = loaded.model.generate_image(**arguments, seed=(seed + index) % 2**32)
                except Exception as exc:
                    raise RequestFailed("generation_failed", f"{type(exc).__name__}: {exc}") from exc
                if not made:
                    said = callbacks.errors_since(mark)
                    raise RequestFailed("generation_failed", f"stable-diffusion.cpp made no image{': ' + said if said else ''}")
                images.append(made[0])
                done_steps += per_image[0] if per_image else steps
        finally:
            callbacks.on_step = None
        if job.stop.is_set():
            raise RequestFailed("cancelled", f"cancelled after the last of {count} image(s)")
        paths = [save_png(image, output_dir, index) for index, image in enumerate(images)]
        details = {key: loaded.reply["details"][key] for key in ("library", "library_version", "backend",
                                                                 "device_name", "weight_type")}
        memory = _free_memory(build) if build.device != "cpu" else None
        if memory is not None:
            details["device_free_bytes"] = memory[1]
        return {"type": "result", "id": message["id"], "images": paths, "seed": seed, "width": width,
                "height": height, "seconds": round(time.monotonic() - started, 4),
                "details": {**details, "sampler": sample_method, "scheduler": sd_scheduler}}

    @staticmethod
    def _size(message: dict[str, Any], name: str, native: int) -> int:
        value = check_field(message, name, (int,), default=None, lo=64, hi=2048)
        if value is None:
            return native
        if value % 64:
            raise RequestFailed("bad_request", f"{name}: got {value}; allowed: a multiple of 64 in 64..2048")
        return value

    @staticmethod
    def _starting_image(path_text: str, width: int, height: int) -> Any:
        from PIL import Image

        try:
            with Image.open(path_text) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as exc:
            raise RequestFailed("bad_request", f"input_image: cannot read {path_text!r}: {exc}") from None
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        return image


def main() -> None:
    run_worker(SdcppWorker)


if __name__ == "__main__":
    main()
