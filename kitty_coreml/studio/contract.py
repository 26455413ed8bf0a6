"""The Studio host's request and response (CONTRACTS.md section 5): the v1 request file parsed and
checked, its quality and reference-influence presets, the host's aspect ratios. Light imports only."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequest
from ..seeds import js_trim

__all__ = [
    "PROG", "REQUEST_SCHEMA", "RESPONSE_SCHEMA", "MOCK_MODEL_ID", "ORIGINAL_MODEL_ID", "USAGE",
    "QUALITY_PRESETS", "INFLUENCE_STRENGTH", "RATIO_SIZES", "RATIO_TOLERANCE", "MAX_ERROR_CHARS",
    "StudioRequest", "parse_request", "load_request", "normalize_quality", "normalize_influence",
    "parse_ratio", "ratio_label", "mock_size",
]

PROG = "systemsculpt-local-imagegen"
REQUEST_SCHEMA = "studio.local-image-generation.request.v1"
RESPONSE_SCHEMA = "studio.local-image-generation.response.v1"
MOCK_MODEL_ID = "local/macos-procedural-v1"
ORIGINAL_MODEL_ID = "local/macos-coreml-stable-diffusion-2-1-base-palettized"
"""The original provider's modelId (before `:<computeUnits>`) for the SD 2.1 base palettized bundles it
installed; the host's live tests check this prefix."""
USAGE = f"Usage: {PROG} --request <request-json-path>"
MAX_ERROR_CHARS = 420
"""The host shows the first 420 characters of stderr: every failure line fits in them."""

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


def _preset(raw: Any, aliases: Mapping[str, str], allowed: Any, field_name: str) -> tuple[str, str | None]:
    """(value, warning): one of `allowed` by name or the host's alias; empty -> balanced; unknown ->
    balanced, said, naming the field."""
    if raw is None or str(raw).strip() == "":
        return "balanced", None
    name = _compact(raw)
    name = aliases.get(name, name)
    if name in allowed:
        return name, None
    return "balanced", (f"{field_name} {str(raw)!r} is unknown (allowed: {', '.join(allowed)}); "
                        "used balanced")


def normalize_quality(raw: Any) -> tuple[str, str | None]:
    """fast/balanced/high with the host's aliases; unknown -> balanced, said."""
    return _preset(raw, _QUALITY_ALIASES, QUALITY_PRESETS, "quality")


def normalize_influence(raw: Any) -> tuple[str, str | None]:
    """subtle/balanced/strong with the host's aliases; unknown -> balanced, said."""
    return _preset(raw, _INFLUENCE_ALIASES, INFLUENCE_STRENGTH, "referenceInfluence")


def _text_field(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidRequest(name, value, "a string")
    if "\x00" in value:
        raise InvalidRequest(name, value, "text without NUL characters")
    return js_trim(value)


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
    from ..request import MAX_PROMPT_CHARS

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
        warnings.append(f"used only the first reference image ({images[0].name}); ignored: "
                        + ", ".join(p.name for p in images[1:]))
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


def ratio_label(width: int, height: int) -> str:
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


