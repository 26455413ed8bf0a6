"""generate(): validate -> model -> seed -> lock -> engine -> check PNGs -> metadata -> outbox -> publish.

Every way in (CLI, Studio provider, HTTP service, queue worker) comes through here."""

from __future__ import annotations

import fcntl
import os
import platform
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .engines import coreml_unavailable_reason, create_engine
from .engines.base import CancelToken, Engine, EngineJob, EngineOutput, ProgressCallback, ProgressEvent
from .errors import (Cancelled, ConfigError, InvalidRequest, KittyError, ModelError, OutputError,
                     PlatformUnsupported, PublishPending, SafetyRemovedAll)
from .models import MOCK_MODEL, ModelInfo, Registry, resolve_model
from .models.variants import apply as apply_variant
from .models.variants import pick as pick_variant
from .request import GenerationRequest, GenerationResult, ImageResult
from .resources import inspect_resources
from .seeds import resolve_seed
from .settings import ENGINE_NAMES, Settings
from .storage import Store, create_store, new_key

__all__ = ["generate", "plan", "resolve", "choose_engine", "default_compute_units", "MachineLock", "fit_image",
           "fit_png", "target_size"]


class MachineLock:
    """One generation at a time per machine, across processes: an flock on HOME/generate.lock.
    A second caller is told who holds it and waits (cancellable)."""

    def __init__(self, path: Path, *, on_wait: Callable[[str], None] | None = None,
                 cancel: CancelToken | None = None):
        self.path = path
        self.on_wait = on_wait
        self.cancel = cancel
        self._fd: int | None = None

    def __enter__(self) -> MachineLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if not self._try(fd):
                holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
                if self.on_wait:
                    self.on_wait(f"waiting for another generation (pid {holder}) to finish")
                while not self._try(fd):
                    if self.cancel is not None and self.cancel.wait(0.1):
                        raise Cancelled(f"stopped while waiting for the machine lock: {self.cancel.reason}")
                    if self.cancel is None:
                        time.sleep(0.1)
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    @staticmethod
    def _try(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing releases the flock
            self._fd = None


def default_compute_units(model: ModelInfo) -> str:
    """Split-einsum models belong on the Neural Engine, original-attention ones on the GPU."""
    if model.attention == "split_einsum":
        return "cpuAndNeuralEngine"
    if model.attention == "original":
        return "cpuAndGPU"
    return "all"


def choose_engine(request: GenerationRequest, settings: Settings, model: ModelInfo, *,
                  prefer_warm: bool = False) -> str:
    """The engine a request runs on: the one it names, else KITTY_COREML_ENGINE, else by model format."""
    wanted = request.engine or settings.engine
    if wanted == "auto":
        if model.format == "procedural":
            return "mock"
        if model.format == "diffusers":
            return "diffusers"
        if model.format == "checkpoint":  # only stable-diffusion.cpp loads single model files here
            return "sdcpp"
        if settings.sample_bin is None:
            reason = coreml_unavailable_reason()
            if reason:
                raise PlatformUnsupported(
                    f"model {model.name!r} is a Core ML model and {reason}",
                    hint="here use the portable engine: `kitty-coreml models smoke`, then "
                         "`--engine diffusers --model smoke`")
        if prefer_warm and (settings.worker_bin or settings.bin_dir / "kitty-coreml-worker").is_file():
            return "coreml-worker"
        return "sample"
    needs = {"sample": "coreml", "coreml-worker": "coreml", "diffusers": "diffusers", "sdcpp": "checkpoint"}.get(wanted)
    if needs and model.format != needs:
        raise ModelError(f"engine {wanted!r} needs a {needs} model; model {model.name!r} is {model.format}",
                         hint="pick a matching --model or --engine")
    return wanted


def _model_for(request: GenerationRequest, settings: Settings) -> ModelInfo:
    if request.model is None and (request.engine or settings.engine) == "mock":
        return MOCK_MODEL
    return resolve_model(request.model, registry=Registry(settings.registry_path), default_model=settings.model,
                         default_resource_path=settings.resource_path, models_yaml=settings.models_yaml)


def target_size(request: GenerationRequest, model: ModelInfo) -> tuple[int, int]:
    """The size of the images a request gets: the width and height it asks for, else the model's."""
    return request.width or model.width, request.height or model.height


def _sized(request: GenerationRequest, model: ModelInfo) -> tuple[ModelInfo, list[str]]:
    """The model's variant that makes the size asked for, else its nearest-aspect one (the images are then
    fitted: cover and centre crop), with the warning that says so."""
    if model.format == "procedural":
        return model, []
    width, height = target_size(request, model)
    if model.format == "checkpoint":  # stable-diffusion.cpp makes any size in steps of 64
        for name, value in (("width", width), ("height", height)):
            if value % 64:
                raise InvalidRequest(name, value, f"a multiple of 64 in 64..2048 for the single-file model "
                                                  f"{model.name!r} (stable-diffusion.cpp)")
        return replace(model, width=width, height=height), []
    model = apply_variant(model, pick_variant(model, width, height))
    if (model.width, model.height) == (width, height):
        return model, []
    return model, [f"made at {model.width}x{model.height}, fitted to {width}x{height} (model {model.name!r} "
                   f"has no {width}x{height} variant; the nearest aspect was scaled to cover and centre-cropped)"]


def _refiner_warnings(request: GenerationRequest, model: ModelInfo) -> list[str]:
    if request.refiner is None or (model.format == "coreml" and model.family == "sdxl" and model.has_refiner):
        return []
    return [f"refiner {request.refiner!r} not applied: model {model.name!r} has no UnetRefiner "
            "(only Core ML SDXL bundles with one are refined); the base model ran alone"]


def _check(request: GenerationRequest, model: ModelInfo, compute_units: str) -> list[str]:
    """Everything that would make the engine fail, found before it starts. Returns warnings."""
    warnings: list[str] = []
    if model.format == "coreml":
        info = inspect_resources(model.path)
        if info.missing:
            raise ModelError(f"model {model.name!r} at {model.path} is incomplete: missing {', '.join(info.missing)}",
                             hint=f"reinstall it: `kitty-coreml install --model {model.name}`")
        if model.family in ("sdxl", "sd3") and sys.platform == "darwin":
            release = tuple(int(p) for p in (platform.mac_ver()[0] or "0").split(".")[:1] if p.isdigit())
            if release < (14,):
                raise ModelError(f"model {model.name!r} is {model.family.upper()}, which needs macOS 14 or later "
                                 f"(this Mac runs {platform.mac_ver()[0]}; older systems ignore --xl and crash)")
        if model.attention == "original" and compute_units == "cpuAndNeuralEngine":
            # Apple's original-attention models run on every compute unit, only slower on the Neural Engine
            # (the original Studio provider runs them there): obey, and say so.
            warnings.append(f"model {model.name!r} uses original attention, which runs slower on "
                            "cpuAndNeuralEngine than on cpuAndGPU")
        if request.scheduler == "pndm" and request.steps < 2:
            raise InvalidRequest("steps", request.steps, "2..150 with the pndm scheduler on Core ML",
                                 hint="Apple's PNDM scheduler crashes on a single step; use 2 or more, or dpmpp")
        if request.input_image is not None and int(request.steps * request.effective_strength) < 1:
            raise InvalidRequest("strength", request.effective_strength,
                                 f"at least {1 / request.steps:.3g} with {request.steps} steps",
                                 hint="img2img runs steps x strength steps; Core ML crashes on zero")
        if request.safety and model.has_safety and (model.width, model.height) != (512, 512):
            raise InvalidRequest("safety", True, f"off for a {model.width}x{model.height} model",
                                 hint="the safety checker only handles 512x512; use --no-safety")
        if model.family == "sd3" and request.input_image is not None:
            raise InvalidRequest("image", str(request.input_image), f"none with the SD3 model {model.name!r} "
                                 "(unsupported: Apple's SD3 pipeline crashes on img2img)",
                                 hint="drop --image, or use an SD 1.x/2.x or SDXL model with a VAEEncoder")
        if model.family == "sd" and request.guidance < 1 and (info.unet_batch or 0) >= 2:
            raise InvalidRequest("guidance", request.guidance,
                                 f"1..30 for model {model.name!r}, whose Unet takes batch {info.unet_batch}",
                                 hint="below 1 Apple's pipeline sends the Unet one latent, which a Unet "
                                      "converted with batch 2 rejects; use --guidance 1 or more")
    if request.input_image is not None and not model.has_encoder:
        raise ModelError(f"model {model.name!r} has no VAEEncoder, so it cannot start from an image",
                         hint="drop --image, or install a model with an encoder (sd21-palettized has one)")
    return warnings


def _check_prefix(prefix: str) -> None:
    """S3_PREFIX makes every key: a bad one is found before the engine starts, not after the image exists."""
    parts = prefix.rstrip("/").split("/") if prefix else []
    if any(part in ("", ".", "..") or part.startswith(".") or not part.isprintable() or "\\" in part
           for part in parts):
        raise ConfigError(f"S3_PREFIX: got {prefix!r}; allowed: folder names joined by '/' "
                          "(none empty, '.', '..' or starting with '.'; no backslash or control characters)")


def resolve(request: GenerationRequest, settings: Settings, *, prefer_warm: bool = False,
            engine_name: str | None = None) -> tuple[GenerationRequest, ModelInfo, str, str, list[str]]:
    """(request with seed and run id filled in, model, engine name, compute units, warnings)."""
    _check_prefix(settings.prefix)
    if request.engine is not None and request.engine not in ENGINE_NAMES:  # before any model is looked up
        raise InvalidRequest("engine", request.engine, " | ".join(ENGINE_NAMES))
    model, warnings = _sized(request, _model_for(request, settings))
    name = engine_name or choose_engine(request, settings, model, prefer_warm=prefer_warm)
    compute_units = request.compute_units or default_compute_units(model)
    warnings += _check(request, model, compute_units) + _refiner_warnings(request, model)
    if model.format == "checkpoint" and request.scheduler == "pndm":
        # the default sampler everywhere else; stable-diffusion.cpp has none, so say what ran instead
        request = replace(request, scheduler="dpmpp")
        warnings.append("stable-diffusion.cpp has no PNDM sampler: ran dpmpp (DPM++ 2M) instead")
    seed, run_id = resolve_seed(request.prompt, request.seed, request.run_id)
    resolved = replace(request, seed=seed, run_id=run_id, compute_units=compute_units,
                       timeout_s=request.timeout_s or settings.timeout_s)
    return resolved, model, name, compute_units, warnings


def _job(request: GenerationRequest, model: ModelInfo, compute_units: str, run_dir: Path,
         input_image: Path | None) -> EngineJob:
    if model.format == "procedural" and request.width and request.height:
        model = replace(model, width=request.width, height=request.height)
    return EngineJob(request=request, seed=request.seed, run_id=request.run_id, model=model,
                     compute_units=compute_units, output_dir=run_dir, timeout_s=request.timeout_s,
                     input_image=input_image)


def plan(request: GenerationRequest, settings: Settings) -> dict[str, Any]:
    """What generate() would do, launching nothing (--dry-run)."""
    resolved, model, name, compute_units, warnings = resolve(request, settings)
    run_dir = settings.runs_dir / "dry-run"
    staged = run_dir / "input.png" if resolved.input_image else None
    engine = create_engine(name, settings)
    try:
        described = engine.describe(_job(resolved, model, compute_units, run_dir, staged))
    finally:
        engine.close()
    return {"seed": resolved.seed, "runId": resolved.run_id, "request": resolved.to_dict(),
            "model": model.to_dict(), "computeUnits": compute_units, "store": settings.store,
            "warnings": warnings, **described}


def _cover_crop(image: Any, width: int, height: int) -> Any:
    from PIL import Image, ImageOps

    return ImageOps.fit(image.convert("RGB"), (width, height), method=Image.Resampling.LANCZOS)


def fit_image(source: Path, dest: Path, width: int, height: int) -> Path:
    """Scale an image to cover width x height, centre-crop it, and save it as RGB PNG."""
    from PIL import Image, ImageOps

    with Image.open(source) as image:
        fitted = _cover_crop(ImageOps.exif_transpose(image), width, height)  # a phone photo's EXIF rotation
    fitted.save(dest, format="PNG")
    return dest


def fit_png(data: bytes, width: int, height: int) -> bytes:
    """A generated PNG scaled to cover width x height and centre-cropped (a size no variant makes)."""
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        fitted = _cover_crop(image, width, height)
    out = io.BytesIO()
    fitted.save(out, format="PNG")
    return out.getvalue()


def _check_images(output: EngineOutput, count: int, width: int, height: int) -> tuple[list[tuple[int, bytes]], list[str]]:
    from .pngmeta import decode_png_size

    kept: list[tuple[int, bytes]] = []
    warnings: list[str] = []
    removed = [image.index for image in output.images if image.path is None]
    if len(output.images) != count:
        raise OutputError(f"engine {output.engine} returned {len(output.images)} image(s); {count} were asked for")
    for image in output.images:
        if image.path is None:
            continue
        data = image.path.read_bytes()
        try:
            size = decode_png_size(data)
        except ValueError as exc:
            raise OutputError(f"image {image.index} from {output.engine} is not a PNG that decodes: {exc}") from None
        if size != (width, height):
            raise OutputError(f"image {image.index} from {output.engine} is {size[0]}x{size[1]}; "
                              f"the model makes {width}x{height}")
        kept.append((image.index, data))
    if removed and not kept:
        raise SafetyRemovedAll(f"the safety checker removed all {count} image(s)",
                               hint="change the prompt, or turn the checker off with --no-safety")
    for index in removed:
        warnings.append(f"image {index + 1} of {count} was removed by the safety checker")
    return kept, warnings


def _sidecar(request: GenerationRequest, model: ModelInfo, engine: str, index: int, key: str, width: int,
             height: int, timings: dict[str, float], warnings: list[str]) -> dict[str, Any]:
    from .pngmeta import seed_record

    return {
        "key": key,
        "prompt": request.prompt,
        "negative_prompt": request.negative_prompt,
        "seed": request.seed,
        "runId": request.run_id,
        "index": index,
        "count": request.count,
        "width": width,
        "height": height,
        "steps": request.steps,
        "cfg": request.guidance,
        "scheduler": request.scheduler,
        "computeUnits": request.compute_units,
        "strength": request.effective_strength if request.input_image else None,
        "model": model.name,
        "family": model.family,
        "engine": engine,
        "seedRecord": seed_record(engine=engine, seed=request.seed, index=index, count=request.count),
        "created": datetime.now(timezone.utc).isoformat(),
        "timings": timings,
        "warnings": warnings,
        "request": request.to_dict() | {"cfg": request.guidance},  # KITTY's sidecar names guidance cfg
    }


def generate(request: GenerationRequest, settings: Settings, *, engine: Engine | None = None,
             store: Store | None = None, on_progress: ProgressCallback | None = None,
             cancel: CancelToken | None = None) -> GenerationResult:
    """Generate, check, store and publish. Raises a KittyError on any failure; PublishPending when the
    images are safe in the outbox but could not be published (details["result"] holds the result)."""
    from .pngmeta import METADATA_KEY, a1111_parameters, add_text_chunks
    from .storage.outbox import publish_item, publish_items, stage

    started = time.monotonic()
    emit = on_progress or (lambda event: None)
    cancel = cancel or CancelToken()
    resolved, model, engine_name, compute_units, warnings = resolve(
        request, settings, engine_name=engine.name if engine is not None else None)
    store = store or create_store(settings)
    own_engine = engine is None
    engine = engine or create_engine(engine_name, settings)
    # A run id is a label (metadata and the seed rule), never part of a path: the folder is random.
    run_dir = settings.runs_dir / f"run-{secrets.token_hex(8)}"
    items: list[tuple[int, Any]] = []
    keep_run_dir = False
    try:
        run_dir.mkdir(parents=True)
        with MachineLock(settings.lock_path, cancel=cancel,
                         on_wait=lambda text: emit(ProgressEvent("waiting", message=text))):
            lock_s = time.monotonic() - started
            job = _job(resolved, model, compute_units, run_dir, None)
            if resolved.input_image is not None:
                job = replace(job, input_image=fit_image(resolved.input_image, run_dir / "input.png",
                                                         job.model.width, job.model.height))
            output = engine.generate(job, emit, cancel)
        images, image_warnings = _check_images(output, resolved.count, job.model.width, job.model.height)
        warnings += output.warnings + image_warnings
        width, height = target_size(resolved, job.model)
        if (width, height) != (job.model.width, job.model.height):
            images = [(index, fit_png(data, width, height)) for index, data in images]
        timings = {"lock_wait_s": round(lock_s, 4), **{k: round(v, 4) for k, v in output.timings.items()}}
        for index, data in images:
            key = new_key(settings.prefix)
            sidecar = _sidecar(resolved, job.model, output.engine, index, key, width, height, timings, warnings)
            if output.details:
                sidecar["engineDetails"] = output.details
            texts = {
                "parameters": a1111_parameters(
                    prompt=resolved.prompt, negative_prompt=resolved.negative_prompt, steps=resolved.steps,
                    scheduler=resolved.scheduler, guidance=resolved.guidance, seed=resolved.seed,
                    width=width, height=height, model=model.name, engine=output.engine,
                    index=index, count=resolved.count,
                    extra={"Image index": index, "Run id": resolved.run_id, "Engine": output.engine}),
                METADATA_KEY: _json(_without_local_paths(sidecar, model)),
            }
            try:
                items.append((index, stage(settings.outbox_dir, key, add_text_chunks(data, texts), sidecar)))
            except (KittyError, OSError) as exc:
                keep_run_dir = True  # the images not yet in the outbox are only there
                raise _staging_failed(exc, items, len(images), run_dir) from None
    except KittyError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write the run's files under {settings.home}: {exc.strerror or exc}",
                          hint="check free disk space and permissions of KITTY_COREML_HOME") from None
    finally:
        if own_engine:
            engine.close()
        if not keep_run_dir:
            shutil.rmtree(run_dir, ignore_errors=True)
    # Everything generated is on disk in the outbox now; publishing can fail without losing it.
    publish_started = time.monotonic()
    report = publish_items(store, [item for _, item in items])
    published = {stored.key: stored for stored in report["published"]}
    failed = list(report["failed"])
    for _, item in items:
        if item.key in report["busy"]:  # a concurrent `publish --pending` took it: wait for its outcome
            try:
                published[item.key] = publish_item(store, item)
            except KittyError as exc:
                failed.append({"key": item.key, "error": exc.one_line()})
    results = []
    for index, item in items:
        stored = published.get(item.key)
        results.append(ImageResult(
            index=index, key=item.key, width=width, height=height,
            storage_uri=stored.storage_uri if stored else item.png.absolute().as_uri(),
            path=str(stored.path) if stored and stored.path else (None if stored else str(item.png)),
            published=stored is not None))
    timings["publish_s"] = round(time.monotonic() - publish_started, 4)
    timings["total_s"] = round(time.monotonic() - started, 4)
    result = GenerationResult(seed=resolved.seed, run_id=resolved.run_id, model=model.name,
                              engine=output.engine, images=results, warnings=warnings, timings=timings,
                              request=resolved.to_dict())
    if failed:
        raise PublishPending(
            f"{len(failed)} of {len(items)} image(s) could not be published and are kept in the outbox "
            f"{settings.outbox_dir}: {failed[0]['error']}",
            hint="run `kitty-coreml publish --pending` once the store is reachable",
            details={"result": result.to_dict(), "failed": failed})
    return result


def _without_local_paths(sidecar: dict[str, Any], model: ModelInfo) -> dict[str, Any]:
    """The record that travels inside the PNG (into vaults, wherever the image is shared): the model's name
    and the input image's file name instead of their folders. The full record stays in the sidecar."""
    request = dict(sidecar["request"])
    if request.get("model") and (os.sep in request["model"] or request["model"].startswith("~")):
        request["model"] = model.name
    if request.get("input_image"):
        request["input_image"] = Path(request["input_image"]).name
    return {**sidecar, "request": request}


def _staging_failed(exc: BaseException, staged: list[tuple[int, Any]], made: int, run_dir: Path) -> OutputError:
    """Staging stopped part-way (a full disk): say which images are safe in the outbox and where the others are."""
    reason = exc.message if isinstance(exc, KittyError) else (getattr(exc, "strerror", None) or str(exc))
    safe = f"{len(staged)} of {made} image(s) reached the outbox" + (
        f" ({', '.join(item.key for _, item in staged)}; `kitty-coreml publish --pending` sends them)" if staged else "")
    return OutputError(f"could not keep every image: {reason}; {safe}; the engine's PNGs are left in {run_dir}",
                       hint="free disk space under KITTY_COREML_HOME, then generate again or copy them from there")


def _json(data: dict[str, Any]) -> str:
    import json

    return json.dumps(data, ensure_ascii=False, separators=(",", ":"), default=str)
