"""The Studio host's local image provider: `systemsculpt-local-imagegen --request FILE` (CONTRACTS.md
section 5). A drop-in for the old provider: the same request, environment, defaults, answer and
one-line failures, on top of the one orchestrator.

The answer is one JSON object on stdout and exit 0, or one line `[systemsculpt-local-imagegen] <message>`
on stderr and exit 1. Nothing else reaches stdout: while it works, anything written to stdout goes to
stderr. This module keeps its imports light (no typer, no Pillow at import time): the host starts it
once per generation.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, InstallError, InvalidRequest, KittyError, ModelError, OutputError

if TYPE_CHECKING:
    from .engines.base import CancelToken, ProgressCallback
    from .models import ModelInfo
    from .settings import Settings, StudioSettings

__all__ = [
    "PROG", "REQUEST_SCHEMA", "RESPONSE_SCHEMA", "MANIFEST_SCHEMA", "MOCK_MODEL_ID",
    "QUALITY_PRESETS", "INFLUENCE_STRENGTH", "RATIO_SIZES",
    "StudioRequest", "RatioEntry", "Manifest",
    "parse_request", "load_request", "normalize_quality", "normalize_influence", "parse_ratio",
    "mock_size", "read_manifest", "write_manifest", "manifest_entry",
    "resolve_resources", "answer", "main",
]

PROG = "systemsculpt-local-imagegen"
REQUEST_SCHEMA = "studio.local-image-generation.request.v1"
RESPONSE_SCHEMA = "studio.local-image-generation.response.v1"
MANIFEST_SCHEMA = "studio.local-diffusion.model-manifest.v1"
MOCK_MODEL_ID = "local/macos-procedural-v1"
USAGE = f"Usage: {PROG} --request <request-json-path>"
INSTALL_HINT = "run `kitty-coreml install` on a Mac (it also writes the Studio manifest)"

QUALITY_PRESETS: dict[str, tuple[int, float]] = {"fast": (14, 7.0), "balanced": (20, 7.5), "high": (32, 8.0)}
"""quality -> (steps, guidance)."""
_QUALITY_ALIASES = {"draft": "fast", "highdetail": "high", "detail": "high"}
INFLUENCE_STRENGTH: dict[str, float] = {"subtle": 0.75, "balanced": 0.55, "strong": 0.35}
"""reference influence -> img2img strength (lower keeps more of the reference)."""
_INFLUENCE_ALIASES = {"low": "subtle", "high": "strong"}
RATIO_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (512, 512), "4:3": (768, 576), "3:4": (576, 768), "16:9": (1024, 576), "9:16": (576, 1024),
}
"""The host's aspect ratios and the size of each (the mock backend draws at these sizes)."""
MAX_COUNT = 8
RATIO_TOLERANCE = 0.02
"""A model makes a ratio when its native width/height is within 2% of it (e.g. 912x512 for 16:9)."""
_RATIO = re.compile(r"^(\d+(?:\.\d+)?):(\d+(?:\.\d+)?)$")


# --------------------------------------------------------------------------------------------------
# The request


@dataclass(frozen=True)
class StudioRequest:
    prompt: str
    count: int = 1
    aspect_ratio: str = "1:1"
    run_id: str = ""
    input_images: list[Path] = field(default_factory=list)
    quality: str = "balanced"
    reference_influence: str = "balanced"
    warnings: list[str] = field(default_factory=list)
    """What the request asked that was ignored or replaced, said back to the host."""


def _compact(raw: Any) -> str:
    return re.sub(r"[_\s-]+", "", str(raw).strip().lower())


def normalize_quality(raw: Any) -> tuple[str, str | None]:
    """(preset, warning): fast/balanced/high with the host's aliases; unknown -> balanced, said."""
    if raw is None or str(raw).strip() == "":
        return "balanced", None
    name = _compact(raw)
    name = _QUALITY_ALIASES.get(name, name)
    if name in QUALITY_PRESETS:
        return name, None
    return "balanced", f"quality {str(raw)!r} is unknown (allowed: fast, balanced, high); used balanced"


def normalize_influence(raw: Any) -> tuple[str, str | None]:
    """(influence, warning): subtle/balanced/strong with the host's aliases; unknown -> balanced, said."""
    if raw is None or str(raw).strip() == "":
        return "balanced", None
    name = _compact(raw)
    name = _INFLUENCE_ALIASES.get(name, name)
    if name in INFLUENCE_STRENGTH:
        return name, None
    return "balanced", (f"referenceInfluence {str(raw)!r} is unknown (allowed: subtle, balanced, strong); "
                        "used balanced")


def _text_field(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(name, value, "a string")
    if "\x00" in value:
        raise InvalidRequest(name, value, "text without NUL characters")
    return value.strip()


def _count(value: Any) -> int:
    """Floored and clamped to 1..8, as the host's provider does; a value that is no number is an error."""
    if value is None:
        return 1
    number = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int | float) or (
            isinstance(number, float) and not math.isfinite(number)):
        raise InvalidRequest("count", value, "a number (floored, clamped to 1..8)")
    return max(1, min(MAX_COUNT, math.floor(number)))


def parse_request(data: Any) -> StudioRequest:
    """Validate a v1 request object. Every refusal names the field, the value and what is allowed."""
    from .request import MAX_PROMPT_CHARS

    if not isinstance(data, dict):
        raise InvalidRequest("request", type(data).__name__, "a JSON object")
    schema = data.get("schema")
    if schema is not None and not isinstance(schema, str):
        raise InvalidRequest("schema", schema, f"{REQUEST_SCHEMA!r} or empty")
    if schema and schema.strip() and schema.strip() != REQUEST_SCHEMA:
        raise InvalidRequest("schema", schema, f"{REQUEST_SCHEMA!r} or empty")
    prompt = _text_field(data, "prompt")
    if not prompt:
        raise InvalidRequest("prompt", data.get("prompt"), "non-empty text")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidRequest("prompt", f"{len(prompt)} characters", f"at most {MAX_PROMPT_CHARS} characters")
    aspect_ratio = re.sub(r"\s+", "", _text_field(data, "aspectRatio")) or "1:1"
    warnings: list[str] = []

    options = data.get("localOptions")
    options = options if isinstance(options, dict) else {}

    def option(*candidates: tuple[Mapping[str, Any], str]) -> Any:
        for where, key in candidates:
            if where.get(key) is not None:
                return where[key]
        return None

    quality, note = normalize_quality(option((options, "quality"), (data, "quality"), (data, "qualityPreset")))
    warnings += [note] if note else []
    influence, note = normalize_influence(option((options, "referenceInfluence"), (data, "referenceInfluence")))
    warnings += [note] if note else []

    raw_images = data.get("inputImages")
    if raw_images is not None and not isinstance(raw_images, list):
        raise InvalidRequest("inputImages", raw_images, "a list of {stagedPath} objects")
    images: list[Path] = []
    for index, item in enumerate(raw_images or []):
        if not isinstance(item, dict):
            continue  # the host's rule: non-object entries are skipped
        where = next((str(item[k]).strip() for k in ("stagedPath", "path") if str(item.get(k) or "").strip()), "")
        if not where:
            warnings.append(f"inputImages[{index}] has neither stagedPath nor path; ignored")
            continue
        if "\x00" in where:
            raise InvalidRequest(f"inputImages[{index}].stagedPath", where, "a path without NUL characters")
        images.append(Path(where).expanduser())
    if len(images) > 1:
        warnings.append(f"used only the first reference image ({images[0]}); ignored: "
                        + ", ".join(str(p) for p in images[1:]))
    return StudioRequest(prompt=prompt, count=_count(data.get("count")), aspect_ratio=aspect_ratio,
                         run_id=_text_field(data, "runId"), input_images=images, quality=quality,
                         reference_influence=influence, warnings=warnings)


def load_request(path: Path) -> StudioRequest:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise InvalidRequest("--request", str(path), f"a readable JSON file ({exc.strerror or exc})") from None
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise InvalidRequest("--request", str(path), f"UTF-8 JSON (byte {exc.start} is not UTF-8)") from None
    except ValueError as exc:
        raise InvalidRequest("--request", str(path), f"valid JSON (invalid request JSON: {exc})") from None
    except RecursionError:
        raise InvalidRequest("--request", str(path), "JSON nested less deeply (a request is a flat object)") from None
    return parse_request(data)


def parse_ratio(label: str) -> float | None:
    """`W:H` -> W/H; None when the label is not of that form."""
    match = _RATIO.match(label.replace(" ", ""))
    if not match:
        return None
    width, height = float(match.group(1)), float(match.group(2))
    return width / height if width > 0 and height > 0 else None


def _ratio_label(width: int, height: int) -> str:
    """The exact ratio of a size when it is one of the host's, else the reduced fraction."""
    for label, (w, h) in RATIO_SIZES.items():
        if abs((width / height) / (w / h) - 1) <= RATIO_TOLERANCE:
            return label
    divisor = math.gcd(width, height)
    return f"{width // divisor}:{height // divisor}"


def mock_size(aspect_ratio: str) -> tuple[int, int]:
    """The mock's size for a ratio: the table's, else 512 high and as wide as the ratio (256..1024)."""
    if aspect_ratio in RATIO_SIZES:
        return RATIO_SIZES[aspect_ratio]
    ratio = parse_ratio(aspect_ratio)
    if ratio is None:
        raise InvalidRequest("aspectRatio", aspect_ratio, "W:H, e.g. " + ", ".join(RATIO_SIZES))
    return max(256, min(1024, round(512 * ratio))), 512


# --------------------------------------------------------------------------------------------------
# The manifest: aspect ratio -> resource folder


@dataclass(frozen=True)
class RatioEntry:
    resource_path: Path
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Other keys of the entry (latentWidth, attentionImplementation, ...), kept when rewritten."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    ratios: dict[str, RatioEntry]
    extra: dict[str, Any] = field(default_factory=dict)


def _expand(raw: str, base: Path) -> Path:
    path = Path(raw.replace("${HOME}", str(Path.home()))).expanduser()
    return path if path.is_absolute() else (base / path).absolute()


def read_manifest(path: Path) -> Manifest:
    """Read a Studio manifest. Relative resource paths are relative to the manifest's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Studio manifest {path} does not exist", hint=INSTALL_HINT) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Studio manifest {path} is not readable JSON ({exc})",
                          hint=f"fix it or write it again with {INSTALL_HINT}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        shown = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"Studio manifest {path}: schema is {shown!r}; expected {MANIFEST_SCHEMA!r}")
    ratios_raw = data.get("ratios")
    if not isinstance(ratios_raw, dict) or not ratios_raw:
        raise ConfigError(f"Studio manifest {path}: `ratios` must be a non-empty object of ratio -> entry")
    ratios = {}
    for label, entry in ratios_raw.items():
        resource = entry.get("resourcePath") if isinstance(entry, dict) else None
        if not isinstance(resource, str) or not resource.strip():
            raise ConfigError(f"Studio manifest {path}: ratio {label!r} has no resourcePath")
        sizes = [entry.get(k) for k in ("width", "height")]
        width, height = (int(s) if isinstance(s, int) and not isinstance(s, bool)
                         or isinstance(s, float) and math.isfinite(s) else None for s in sizes)
        extra = {k: v for k, v in entry.items() if k not in ("resourcePath", "width", "height")}
        ratios[label] = RatioEntry(_expand(resource.strip(), path.parent.absolute()), width, height, extra)
    return Manifest(path=path, ratios=ratios, extra={k: v for k, v in data.items() if k not in ("schema", "ratios")})


def manifest_entry(resource_path: Path) -> RatioEntry:
    """An entry for a resource folder, its size read from the model (what installers should write)."""
    from .models import model_from_folder

    model = model_from_folder(Path(resource_path))
    return RatioEntry(Path(resource_path).absolute(), model.width, model.height,
                      {"latentWidth": model.width // 8, "latentHeight": model.height // 8})


def write_manifest(path: Path, ratios: Mapping[str, RatioEntry | Path | str], *,
                   extra: Mapping[str, Any] | None = None) -> Manifest:
    """Write a manifest atomically (temporary name, then rename). A bare path is read with
    manifest_entry; its width and height come from the model."""
    from .atomic import write_json

    entries = {label: value if isinstance(value, RatioEntry) else manifest_entry(Path(value))
               for label, value in ratios.items()}
    if not entries:
        raise ConfigError("a Studio manifest needs at least one ratio")
    data: dict[str, Any] = dict(extra or {})
    data["schema"] = MANIFEST_SCHEMA
    data["ratios"] = {}
    for label, entry in entries.items():
        item = dict(entry.extra)
        item["resourcePath"] = str(entry.resource_path)
        if entry.width is not None and entry.height is not None:
            item["width"], item["height"] = entry.width, entry.height
        data["ratios"][label] = item
    write_json(Path(path), data)
    return read_manifest(Path(path))


# --------------------------------------------------------------------------------------------------
# Resources


@dataclass(frozen=True)
class Resolved:
    model: ModelInfo
    source: str
    """env_override, manifest or default_model."""
    manifest_path: Path | None
    warnings: list[str]


def resolve_resources(aspect_ratio: str, studio: StudioSettings, settings: Settings) -> Resolved:
    """The resource folder for a ratio: SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH for every ratio; else
    the manifest's entry; with no manifest, kitty-coreml's default model. The folder's real native size
    must have the ratio: a model that cannot make it fails here instead of making another shape."""
    from .models import Registry, model_from_folder, resolve_model
    from .resources import inspect_resources

    warnings: list[str] = []
    manifest_path: Path | None = None
    declared: tuple[int | None, int | None] = (None, None)
    if studio.resource_path is not None:
        folder, source = studio.resource_path, "env_override"
    elif studio.manifest_path.is_file():
        manifest = read_manifest(studio.manifest_path)
        manifest_path = manifest.path
        entry = manifest.ratios.get(aspect_ratio)
        if entry is None:
            raise ModelError(f"aspect ratio {aspect_ratio!r} is not in the Studio manifest {manifest.path}; "
                             f"available: {', '.join(manifest.ratios)}",
                             hint="convert and install a bundle for it, or ask for one of those ratios")
        folder, source, declared = entry.resource_path, "manifest", (entry.width, entry.height)
    else:
        model = resolve_model(None, registry=Registry(settings.registry_path), default_model=settings.model,
                              default_resource_path=settings.resource_path)
        if model.format != "coreml" or model.path is None:
            raise ModelError(f"the default model {model.name!r} is a {model.format} model, not Core ML resources",
                             hint=f"write a Studio manifest at {studio.manifest_path} or set "
                                  "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH")
        folder, source = model.path, "default_model"
    info = inspect_resources(folder)
    if info.missing:
        raise ModelError(f"Core ML resources at {info.path} are missing {', '.join(info.missing)}",
                         hint=INSTALL_HINT)
    model = model_from_folder(folder)
    wanted = parse_ratio(aspect_ratio)
    if wanted is not None and abs((model.width / model.height) / wanted - 1) > RATIO_TOLERANCE:
        where = ("SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH" if source == "env_override"
                 else f"the Studio manifest {manifest_path}" if manifest_path else "the default model")
        raise ModelError(
            f"aspect ratio {aspect_ratio} cannot be made by {model.path} (from {where}): its native size is "
            f"{model.width}x{model.height} ({_ratio_label(model.width, model.height)})",
            hint="Core ML models have one fixed size: install a bundle converted for this ratio and map it in "
                 "the manifest, or unset SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH")
    if declared[0] and declared[1] and declared != (model.width, model.height):
        warnings.append(f"the manifest says {aspect_ratio} is {declared[0]}x{declared[1]}, but {model.path} "
                        f"makes {model.width}x{model.height}; used the model's size")
    return Resolved(model=model, source=source, manifest_path=manifest_path, warnings=warnings)


def _sample_binary(studio: StudioSettings, settings: Settings) -> Path:
    from .engines.sample import find_sample_binary

    configured = studio.sample_bin
    if configured is not None and not (configured.is_file() and os.access(configured, os.X_OK)):
        state = "is not an executable file" if configured.exists() else "does not exist"
        raise InstallError(f"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN points to {configured}, which {state}",
                           hint=f"{INSTALL_HINT}, or point the variable at StableDiffusionSample")
    try:
        return find_sample_binary(configured or settings.sample_bin, settings.bin_dir)
    except InstallError as exc:
        raise InstallError(exc.message, hint=f"{INSTALL_HINT}, or set SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN") from None


# --------------------------------------------------------------------------------------------------
# One generation


def answer(request: StudioRequest, studio: StudioSettings, settings: Settings, *,
           on_progress: ProgressCallback | None = None, cancel: CancelToken | None = None) -> dict[str, Any]:
    """Run one Studio request through the orchestrator and build the v1 response."""
    from . import orchestrator
    from .request import GenerationRequest
    from .seeds import studio_seed

    warnings = list(request.warnings)
    steps, guidance = QUALITY_PRESETS[request.quality]
    steps = studio.step_count if studio.step_count is not None else steps
    guidance = studio.guidance_scale if studio.guidance_scale is not None else guidance
    if steps == 1 and studio.scheduler == "pndm":
        # Apple's PNDM scheduler traps on a single step (Scheduler.swift force-unwraps a nil): use two.
        steps = 2
        warnings.append("1 step crashes the pndm scheduler; ran 2 steps (or set "
                        "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER=dpmpp)")
    strength = INFLUENCE_STRENGTH[request.reference_influence]
    seed = studio_seed(request.prompt, request.run_id)
    # The seed rule reads an empty run id as "local"; the run is recorded under that name too, so the
    # mock's per-image seeds (prompt::runId::index) stay reproducible.
    run_id = request.run_id or "local"
    if not re.fullmatch(r"[\x21-\x7e]{1,200}", run_id):
        run_id = None  # the orchestrator names the run; the seed above still follows the host's run id
    settings = settings.model_copy(update={"store": "local"})
    backend_metadata: dict[str, Any] = {}
    if studio.backend == "mock":
        mock_width, mock_height = mock_size(request.aspect_ratio)
        engine, model_name, model_id = "mock", "mock", MOCK_MODEL_ID
        has_encoder = True
        compute_units = studio.compute_units
    else:
        resolved = resolve_resources(request.aspect_ratio, studio, settings)
        warnings += resolved.warnings
        model = resolved.model
        binary = _sample_binary(studio, settings)
        settings = settings.model_copy(update={"sample_bin": binary})
        mock_width = mock_height = None
        engine, model_name = "sample", str(model.path)
        compute_units = studio.compute_units
        if model.attention == "original" and not studio.compute_units_set:
            # The Neural Engine runs original-attention bundles poorly or not at all; the default bows to
            # the bundle, an explicit SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS is obeyed (or refused).
            compute_units = "cpuAndGPU"
            warnings.append(f"{model.path.name} uses original attention: ran on cpuAndGPU instead of the "
                            "default cpuAndNeuralEngine")
        model_id = f"local/macos-coreml-{model.path.name}:{compute_units}"
        has_encoder = model.has_encoder
        backend_metadata.update(sampleBinary=str(binary), resourcePath=str(model.path),
                                resourcePathSource=resolved.source,
                                manifestPath=str(resolved.manifest_path) if resolved.manifest_path else None,
                                modelFamily=model.family, computeUnits=compute_units)
    reference = request.input_images[0] if request.input_images else None
    if reference is not None:
        if not has_encoder:
            raise ModelError(f"a reference image needs img2img, but {model_name} has no VAEEncoder.mlmodelc",
                             hint="install a bundle that includes the VAE encoder (e.g. sd21-palettized), "
                                  "or send the request without inputImages")
        if not reference.is_file():
            raise InvalidRequest("inputImages[0].stagedPath", str(reference), "an existing image file")
    # The orchestrator scales the reference to cover the model's size, centre-crops it into the run's
    # folder, and hands that copy to the engine.
    generation = GenerationRequest(
        prompt=request.prompt, count=request.count, steps=steps, guidance=guidance,
        scheduler=studio.scheduler, compute_units=compute_units, seed=seed, run_id=run_id,
        timeout_s=studio.timeout_ms / 1000, input_image=reference,
        strength=strength if reference is not None else None, safety=not studio.disable_safety,
        reduce_memory=studio.reduce_memory, model=model_name, engine=engine,
        width=mock_width, height=mock_height,
    )
    result = orchestrator.generate(generation, settings, on_progress=on_progress, cancel=cancel)
    warnings += [w for w in result.warnings if w not in warnings]
    images = _images(result, studio, warnings)
    if len(images) < request.count and not any("safety" in w for w in warnings):
        warnings.append(f"returned {len(images)} of the {request.count} images asked for")
    first = images[0]
    metadata = {
        "backend": studio.backend, "engine": result.engine, "seed": seed, "runId": request.run_id,
        "stepCount": steps, "guidanceScale": guidance, "scheduler": studio.scheduler,
        "width": first["width"], "height": first["height"],
        "requestedAspectRatio": request.aspect_ratio,
        "actualAspectRatio": _ratio_label(first["width"], first["height"]),
        "qualityPreset": request.quality, "referenceInfluence": request.reference_influence,
        "referenceStrength": strength if reference is not None else None,
        "usedReferenceImage": reference is not None,
        "safetyChecker": not studio.disable_safety, "reduceMemory": studio.reduce_memory,
        "imagesRequested": request.count, "imagesReturned": len(images),
        **backend_metadata, "timings": dict(result.timings),
    }
    return {"schema": RESPONSE_SCHEMA, "modelId": model_id, "images": images, "warnings": warnings,
            "metadata": metadata}


def _images(result: Any, studio: StudioSettings, warnings: list[str]) -> list[dict[str, Any]]:
    """Each image as the host wants it, its size read from the PNG itself."""
    import base64

    from PIL import Image, UnidentifiedImageError

    files = []
    for image in result.images:
        if not image.path:
            raise OutputError(f"image {image.index} was generated but is not on this machine (key {image.key})",
                              hint="the Studio provider publishes to the local store; check KITTY_COREML_HOME")
        path = Path(image.path)
        try:
            with Image.open(path) as opened:
                if opened.format != "PNG":
                    raise OutputError(f"image {path} is {opened.format}, not PNG")
                files.append((path, opened.size))
        except (UnidentifiedImageError, OSError) as exc:
            raise OutputError(f"image {path} cannot be read back ({exc})") from None
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
        _fail(exc.one_line())
    except KeyboardInterrupt:
        _fail("cancelled: interrupted")
    except Exception as exc:  # the last guard: no traceback reaches the host
        _fail(f"internal error: {type(exc).__name__}: {' '.join(str(exc).split())}")
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


def _fail(message: str) -> None:
    sys.stderr.write(f"[{PROG}] {' '.join(message.split())}\n")
    sys.stderr.flush()


def _run(args: list[str], env: Mapping[str, str] | None) -> dict[str, Any]:
    import signal

    from .engines.base import CancelToken
    from .errors import Cancelled
    from .settings import Settings, StudioSettings

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


if __name__ == "__main__":
    main()
