"""`systemsculpt-local-imagegen --request FILE`: the Studio host's local image provider (CONTRACTS.md
section 5), a drop-in for the original: the same request, environment, defaults, answer and one-line
failures, on top of the one orchestrator; warm when a `kitty-coreml serve` of this home is running.

The answer is one JSON object on stdout and exit 0, or one line `[systemsculpt-local-imagegen] <message>`
(at most 420 characters, what the host shows) on stderr and exit 1. Nothing else reaches stdout: while it
works, anything written to stdout goes to stderr. Imports stay light (no typer, no Pillow at import
time): the host starts it once per image.

Privacy: the answer's metadata names files and sources, never an absolute local path (the host stores
it with the image); the full record stays in the local sidecar next to each PNG."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import Cancelled, InvalidRequest, KittyError, ModelError, OutputError
from .contract import (INFLUENCE_STRENGTH, MAX_ERROR_CHARS, MOCK_MODEL_ID, ORIGINAL_MODEL_ID, PROG,
                       QUALITY_PRESETS, RATIO_TOLERANCE, RESPONSE_SCHEMA, USAGE, StudioRequest, load_request,
                       mock_size, parse_ratio, ratio_label)

if TYPE_CHECKING:
    from ..engines.base import CancelToken, ProgressCallback
    from ..models import ModelInfo
    from ..settings import Settings, StudioSettings
    from .discovery import FoundBinary, FoundBundle

__all__ = ["STUDIO_PREFIX", "Resolved", "resolve_resources", "model_id", "sweep_expired", "answer", "main"]

STUDIO_PREFIX = "studio/"
"""Where Studio calls keep their images in the local store (HOME/store/studio/), swept after
KITTY_COREML_STUDIO_RETENTION_S; with KITTY_COREML_STUDIO_KEEP they go to the KITTY store instead."""
WAIT_REPORTED_S = 1.0
"""A wait for the warm engine this long or longer is said in the warnings (the host's 480 s include it)."""
_ORIGINAL_NAMES = ("sd21-palettized", "coreml-stable-diffusion-2-1-base-palettized")


@dataclass(frozen=True)
class Resolved:
    model: ModelInfo
    bundle: FoundBundle
    warnings: list[str]


def resolve_resources(aspect_ratio: str, studio: StudioSettings, settings: Settings) -> Resolved:
    """The bundle for a ratio (discovery.py's order), checked complete; its real native size must have
    the ratio: a model that cannot make it fails here instead of making another shape."""
    from ..models import model_from_folder
    from ..resources import inspect_resources
    from .discovery import BUNDLE_HINT, find_bundle

    warnings: list[str] = []
    bundle = find_bundle(aspect_ratio, studio, settings)
    info = inspect_resources(bundle.path)
    if info.missing:
        raise ModelError(f"the {aspect_ratio} bundle {bundle.name} ({_source_words(bundle.source)}) is missing "
                         f"{', '.join(info.missing)}", hint=BUNDLE_HINT)
    model = model_from_folder(bundle.path, bundle.name)
    wanted = parse_ratio(aspect_ratio)
    if wanted is not None and abs((model.width / model.height) / wanted - 1) > RATIO_TOLERANCE:
        raise ModelError(
            f"aspect ratio {aspect_ratio} cannot be made by {bundle.name} ({_source_words(bundle.source)}): its "
            f"native size is {model.width}x{model.height} ({ratio_label(model.width, model.height)})",
            hint="Core ML models have one size each: map a bundle converted for this ratio in the manifest, "
                 "or unset SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH")
    declared = bundle.declared
    if declared[0] and declared[1] and declared != (model.width, model.height):
        warnings.append(f"the manifest says {aspect_ratio} is {declared[0]}x{declared[1]}, but {bundle.name} "
                        f"makes {model.width}x{model.height}; used the model's size")
    return Resolved(model=model, bundle=bundle, warnings=warnings)


def _source_words(source: str) -> str:
    return {"env_override": "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH",
            "manifest": "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH",
            "kitty_manifest": "kitty-coreml's Studio manifest", "kitty_model": "kitty-coreml's default model",
            "kitty_registry": "kitty-coreml's models", "systemsculpt_install": "the original installer's models",
            }.get(source, source)


def model_id(bundle: FoundBundle, compute_units: str) -> str:
    """The original's modelId for the bundles it knew (SD 2.1 base palettized, any ratio); ours otherwise."""
    where = str(bundle.path)
    if bundle.source == "systemsculpt_install" or bundle.name.startswith(_ORIGINAL_NAMES) \
            or any(name in where for name in (_ORIGINAL_NAMES[1], "/native-ratios/sd21-palettized")):
        return f"{ORIGINAL_MODEL_ID}:{compute_units}"
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", bundle.name).strip("-") or "model"
    return f"local/macos-coreml-{name}:{compute_units}"


def sweep_expired(settings: Settings, retention_s: float) -> int:
    """Delete Studio images (and their sidecars) older than the retention; the host copied them into
    the vault right after the call that made them. Returns how many files went."""
    folder = settings.images_root / STUDIO_PREFIX
    cutoff = time.time() - retention_s
    removed = 0
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.endswith((".png", ".json")) or not entry.is_file(follow_symlinks=False):
            continue
        try:
            if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed += 1
        except OSError:
            continue  # another call swept it first
    return removed


# --------------------------------------------------------------------------------------------------
# One generation


def _generation_plan(request: StudioRequest, studio: StudioSettings) -> tuple[int, float, list[str]]:
    warnings: list[str] = []
    steps, guidance = QUALITY_PRESETS[request.quality]
    steps = studio.step_count if studio.step_count is not None else steps
    guidance = studio.guidance_scale if studio.guidance_scale is not None else guidance
    if steps == 1 and studio.scheduler == "pndm":
        # Apple's PNDM scheduler traps on a single step (Scheduler.swift force-unwraps a nil): use two.
        steps = 2
        warnings.append("1 step crashes the pndm scheduler; ran 2 steps (or set "
                        "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER=dpmpp)")
    return steps, guidance, warnings


def _compute_units(model: ModelInfo, studio: StudioSettings, warnings: list[str]) -> str:
    """An explicit SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS is obeyed (original attention runs on the
    Neural Engine too, only slower: a warning); unset, an original-attention bundle goes to the GPU."""
    if model.attention != "original":
        return studio.compute_units
    if not studio.compute_units_set:
        warnings.append(f"{model.name} uses original attention: ran on cpuAndGPU instead of the default "
                        "cpuAndNeuralEngine")
        return "cpuAndGPU"
    if studio.compute_units == "cpuAndNeuralEngine":
        warnings.append(f"{model.name} uses original attention, which runs slower on cpuAndNeuralEngine "
                        "than on cpuAndGPU (SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS)")
    return studio.compute_units


def _guidance_for_batch(model: ModelInfo, guidance: float, warnings: list[str]) -> float:
    """Below 1 Apple's SD pipeline sends one latent, which a Unet converted with batch 2 rejects: run
    guidance 1 and say so, as a single pndm step runs as two."""
    from ..resources import inspect_resources

    batch = inspect_resources(model.path).unet_batch if model.family == "sd" else None
    if guidance < 1 and (batch or 0) >= 2:
        warnings.append(f"guidance below 1 fails on {model.path.name}, whose Unet takes batch {batch}; ran "
                        "guidance 1 (or set SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE to 1 or more)")
        return 1.0
    return guidance


def answer(request: StudioRequest, studio: StudioSettings, settings: Settings, *,
           on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Run one Studio request (warm on a running service, else through the orchestrator here) and
    build the v1 response."""
    from ..request import GenerationRequest
    from ..seeds import studio_seed

    steps, guidance, warnings = _generation_plan(request, studio)
    warnings = list(request.warnings) + warnings
    strength = INFLUENCE_STRENGTH[request.reference_influence]
    seed = studio_seed(request.prompt, request.run_id)
    # The seed rule reads an empty run id as "local"; the run is recorded under that name too.
    run_id = request.run_id or "local"
    if not re.fullmatch(r"[\x21-\x7e]{1,200}", run_id):
        run_id = None  # the orchestrator names the run; the seed above still follows the host's run id
    prefix = settings.prefix if studio.keep_images else STUDIO_PREFIX
    settings = settings.model_copy(update={"store": "local", "prefix": prefix})
    if not studio.keep_images:
        sweep_expired(settings, studio.retention_s)
    backend_metadata: dict[str, Any] = {}
    reference = request.input_images[0] if request.input_images else None
    binary: FoundBinary | None = None
    if studio.backend == "mock":
        # As the original's mock: references are neither needed nor decoded.
        if reference is not None:
            warnings.append("the mock backend ignores reference images")
        reference = None
        mock_width, mock_height = mock_size(request.aspect_ratio)
        engine, model_name, identifier = "mock", "mock", MOCK_MODEL_ID
        compute_units = studio.compute_units
    else:
        from .discovery import find_binary

        resolved = resolve_resources(request.aspect_ratio, studio, settings)
        warnings += resolved.warnings
        model = resolved.model
        compute_units = _compute_units(model, studio, warnings)
        identifier = model_id(resolved.bundle, compute_units)
        guidance = _guidance_for_batch(model, guidance, warnings)
        mock_width = mock_height = None
        engine, model_name = "sample", str(model.path)
        if reference is not None:
            if not model.has_encoder:
                raise ModelError(f"a reference image needs img2img, but {model.name} has no VAEEncoder.mlmodelc",
                                 hint="map a bundle that has the VAE encoder, or send no inputImages")
            if not reference.is_file():
                raise InvalidRequest("inputImages[0].stagedPath", str(reference), "an existing image file")
        binary = find_binary(studio, settings)
        settings = settings.model_copy(update={"sample_bin": binary.path})
        backend_metadata.update(
            sampleBinary=binary.path.name, sampleBinarySource=binary.source, resourceName=resolved.bundle.name,
            resourcePathSource=resolved.bundle.source,
            manifestPath=studio.manifest_path.name if resolved.bundle.source in ("manifest", "kitty_manifest")
            else None,
            modelFamily=model.family, attention=model.attention, computeUnits=compute_units)
    generation = GenerationRequest(
        prompt=_without_lone_surrogates(request.prompt), count=request.count, steps=steps, guidance=guidance,
        scheduler=studio.scheduler, compute_units=compute_units, seed=seed, run_id=run_id,
        timeout_s=studio.timeout_ms / 1000, input_image=reference,
        strength=strength if reference is not None else None, safety=not studio.disable_safety,
        reduce_memory=studio.reduce_memory, model=model_name, engine=engine,
        width=mock_width, height=mock_height,
    )
    served = None
    if engine == "sample" and reference is None and studio.warm:
        served = _try_warm(generation, settings, studio, warnings, on_progress, cancel)
    if served is not None:
        result_engine, paths, timings, result_warnings, warm_metadata = served
    else:
        from .. import orchestrator

        result = orchestrator.generate(generation, settings, on_progress=on_progress, cancel=cancel)
        result_engine, timings, result_warnings = result.engine, dict(result.timings), result.warnings
        paths = [_local_path(image) for image in result.images]
        warm_metadata = {"warm": False}
    said = [w for w in warnings if "uses original attention" in w]
    warnings += [w for w in result_warnings if w not in warnings and not (said and "uses original attention" in w)]
    images = _images(paths, studio, warnings)
    if len(images) < request.count and not any("safety" in w for w in warnings):
        warnings.append(f"returned {len(images)} of the {request.count} images asked for")
    first = images[0]
    metadata = {
        "backend": studio.backend, "engine": result_engine, "seed": seed, "runId": request.run_id,
        "stepCount": steps, "guidanceScale": guidance, "scheduler": studio.scheduler,
        "width": first["width"], "height": first["height"],
        "requestedAspectRatio": request.aspect_ratio,
        "actualAspectRatio": ratio_label(first["width"], first["height"]),
        "qualityPreset": request.quality, "referenceInfluence": request.reference_influence,
        "referenceStrength": strength if reference is not None else None,
        "usedReferenceImage": reference is not None,
        "safetyChecker": not studio.disable_safety, "reduceMemory": studio.reduce_memory,
        "imagesRequested": request.count, "imagesReturned": len(images),
        "kept": "kitty_store" if studio.keep_images else f"{studio.retention_s:g} s",
        **backend_metadata, **warm_metadata, "timings": timings,
    }
    return {"schema": RESPONSE_SCHEMA, "modelId": identifier, "images": images, "warnings": warnings,
            "metadata": metadata}


def _without_lone_surrogates(prompt: str) -> str:
    """The prompt as Apple's binary received it from the original (node passes argv as UTF-8, a lone
    surrogate becoming U+FFFD); the seed is taken from the host's prompt before this."""
    return "".join("\ufffd" if 0xD800 <= ord(char) <= 0xDFFF else char for char in prompt)


def _local_path(image: Any) -> Path:
    if not image.path:
        raise OutputError(f"image {image.index} was generated but is not on this machine (key {image.key})",
                          hint="the Studio provider keeps its images in the local store under KITTY_COREML_HOME")
    return Path(image.path)


def _try_warm(generation: Any, settings: Settings, studio: StudioSettings, warnings: list[str],
              on_progress: ProgressCallback | None, cancel: CancelToken | None):
    """The request on the running service's warm engine: (engine, paths, timings, warnings, metadata),
    or None when no service of this home answers (then it runs cold here)."""
    from ..service.local import WarmUnavailable, find_service, run_warm

    service = find_service(settings)
    if service is None:
        return None
    dest = settings.images_root / settings.prefix.rstrip("/")
    # The service picks its own (warm) engine for the bundle; "sample" would start the binary cold there.
    warm_request = replace(generation, engine=None)
    try:
        run = run_warm(service, warm_request, settings, dest, on_progress=on_progress, cancel=cancel)
    except WarmUnavailable as exc:
        warnings.append(f"the running kitty-coreml serve did not take the request ({exc.message}); ran cold")
        return None
    result = run.result
    if not studio.keep_images:
        _forget_service_copies(result, settings)
    timings = {**dict(result.get("timings") or {}), "warm_queue_wait_s": round(run.queue_wait_s, 3)}
    lock_wait = float(timings.get("lock_wait_s") or 0)
    own = []
    if run.queue_wait_s + lock_wait >= WAIT_REPORTED_S:
        own.append(f"waited {run.queue_wait_s + lock_wait:.1f} s for the warm engine of kitty-coreml serve "
                   f"(queue {run.queue_wait_s:.1f} s, machine lock {lock_wait:.1f} s) before generating")
    metadata = {"warm": True, "warmQueueWaitS": round(run.queue_wait_s, 3), "warmLockWaitS": round(lock_wait, 3),
                "warmQueuePosition": run.position}
    return result.get("engine"), run.images, timings, [*own, *(result.get("warnings") or [])], metadata


def _forget_service_copies(result: dict[str, Any], settings: Settings) -> None:
    """The service stored the images where it keeps its own; a Studio call keeps only its copies (which
    retention sweeps). Only files of this home's local store are touched."""
    root = settings.images_root.resolve()
    for image in result.get("images") or []:
        path = image.get("path")
        if not path:
            continue
        png = Path(path).resolve()
        if png.is_relative_to(root) and png.suffix == ".png":
            for stale in (png, png.with_suffix(".json")):
                stale.unlink(missing_ok=True)


def _images(paths: list[Path], studio: StudioSettings, warnings: list[str]) -> list[dict[str, Any]]:
    """Each image as the host wants it, its size read from the PNG itself."""
    import base64

    from ..pngmeta import decode_png_size

    files = []
    for path in paths:
        try:
            files.append((path, decode_png_size(path.read_bytes())))
        except (ValueError, OSError) as exc:
            raise OutputError(f"image {path.name} cannot be read back as a PNG ({exc})") from None
    if not files:
        raise OutputError("the generation finished without any image")
    entries = [{"mimeType": "image/png", "path": str(path), "fileName": path.name, "width": w, "height": h}
               for path, (w, h) in files]
    if studio.output == "base64":
        total = sum(4 * math.ceil(path.stat().st_size / 3) for path, _ in files)
        if total <= studio.base64_budget_bytes:
            for entry, (path, _) in zip(entries, files, strict=True):
                del entry["path"]
                entry["base64"] = base64.b64encode(path.read_bytes()).decode("ascii")
        else:
            warnings.append(f"{len(files)} images are {total / 2**20:.1f} MiB as base64, over the "
                            f"{studio.base64_budget_bytes / 2**20:.1f} MiB budget (KITTY_COREML_STUDIO_BASE64_BUDGET); "
                            "returned as paths")
    return entries


# --------------------------------------------------------------------------------------------------
# The command


def _parse_args(args: Sequence[str]) -> Path:
    """The request path from `--request FILE` or `--request=FILE`; anything else is refused."""
    request: str | None = None
    index = 0
    while index < len(args):
        token = args[index]
        if token == "--request":
            if index + 1 >= len(args) or not args[index + 1].strip():
                raise InvalidRequest("--request", None, "a path to the request JSON file")
            request = args[index + 1]
            index += 2
            continue
        if token.startswith("--request="):
            request = token.split("=", 1)[1]
        else:
            raise InvalidRequest("argument", token, f"--request <file.json> or --help ({USAGE})")
        index += 1
    if not request or not request.strip():
        raise InvalidRequest("--request", None, f"a path to the request JSON file ({USAGE})")
    return Path(request.strip())


class _CollectLogs:
    """Log records and Python warnings become answer warnings instead of stray stderr lines."""

    def __init__(self) -> None:
        import logging

        self.messages: list[str] = []
        collector = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                collector.messages.append(" ".join(record.getMessage().split()))

        self.handler = Handler(level=logging.WARNING)
        logging.captureWarnings(True)
        logging.getLogger().addHandler(self.handler)


def _ndjson_progress(event: Any) -> None:
    sys.stderr.write(json.dumps({"event": "progress", **event.to_dict()}, ensure_ascii=False) + "\n")
    sys.stderr.flush()


def main(argv: Sequence[str] | None = None, *, env: Mapping[str, str] | None = None) -> None:
    """Entry point of `systemsculpt-local-imagegen`: exits 0 with one JSON object on stdout, or 1 with
    one `[systemsculpt-local-imagegen] <message>` line on stderr."""
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        sys.stdout.write(f"{USAGE}\n\nReads a studio.local-image-generation.request.v1 JSON file and prints "
                         "one studio.local-image-generation.response.v1 JSON object.\nSee docs/studio.md for "
                         "the SYSTEMSCULPT_LOCAL_* variables.\n")
        sys.stdout.flush()
        sys.exit(0)
    sys.stdout.flush()
    answer_fd = os.dup(1)
    os.dup2(2, 1)  # until the answer: whatever prints to stdout lands on stderr, never in the JSON
    code = 1
    try:
        payload = _run(args, env)
        code = 0
    except KittyError as exc:
        fail(studio_terms(exc.one_line()))
    except KeyboardInterrupt:
        fail("cancelled: interrupted")
    except Exception as exc:  # the last guard: no traceback reaches the host
        fail(f"internal error: {type(exc).__name__}: {exc}")
    finally:
        sys.stdout.flush()
        os.dup2(answer_fd, 1)
        os.close(answer_fd)
    if code == 0:
        try:
            sys.stdout.write(json.dumps(payload, ensure_ascii=False) + "\n")
            sys.stdout.flush()
        except BrokenPipeError:
            pass  # the host stopped reading: nothing to tell it
    sys.exit(code)


_STUDIO_TERMS = (
    ("--timeout", "SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS"),
    ("--steps/--count", "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT or the image count"),
    ("--steps", "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT"),
    ("--no-safety", "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY=true"),
    ("--compute-units", "SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS"),
    ("KITTY_COREML_SAMPLE_BIN", "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"),
)
"""The engine's messages name kitty-coreml's CLI flags; the Studio user has the SYSTEMSCULPT_* settings."""


def studio_terms(message: str) -> str:
    for flag, setting in _STUDIO_TERMS:
        message = re.sub(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", setting, message)
    return message


def one_line(message: str) -> str:
    """The failure line the host shows: prefixed, one line, at most MAX_ERROR_CHARS characters (the
    middle gives way, so the start and the hint at the end both stay)."""
    line = f"[{PROG}] {' '.join(message.split())}"
    if len(line) <= MAX_ERROR_CHARS:
        return line
    keep = MAX_ERROR_CHARS - 3
    head = keep * 2 // 3
    return line[:head] + "..." + line[len(line) - (keep - head):]


def fail(message: str) -> None:
    sys.stderr.write(one_line(message) + "\n")
    sys.stderr.flush()


def _run(args: list[str], env: Mapping[str, str] | None) -> dict[str, Any]:
    import signal

    from ..engines.base import CancelToken
    from ..settings import Settings, StudioSettings

    request_path = _parse_args(args)
    logs = _CollectLogs()
    request = load_request(request_path)
    studio = StudioSettings.from_env(env)
    settings = Settings.from_env(env)
    cancel = CancelToken()

    def on_signal(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if cancel.cancelled:  # a second signal: stop waiting for the engine to wind down
            raise Cancelled(f"cancelled: received {name} again")
        cancel.cancel(f"received {name}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, on_signal)  # the terminal or the host went away: stop the same way
    progress: Callable[[Any], None] | None = _ndjson_progress if settings.progress == "ndjson" else None
    payload = answer(request, studio, settings, on_progress=progress, cancel=cancel)
    if cancel.cancelled:
        raise Cancelled(f"cancelled: {cancel.reason}")
    payload["warnings"] += [m for m in logs.messages if m not in payload["warnings"]]
    return payload
