"""The HTTP request body, as KITTY's images-service accepts it: its field names (prompt, width, height,
steps, cfg, seed, model, refiner), numbers given as numeric strings (pydantic's lax rules, as KITTY's
model has), `seed` -1 or null for a fresh seed, the UI tool's `size` and `style`, and any other field
accepted and named in a warning. Our own fields (negative_prompt, count, scheduler, ...) ride beside
them. Values are then checked by GenerationRequest, so a bad one is a one-line 422 naming the field."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from ..errors import InvalidRequest
from ..request import GenerationRequest
from .body import SAME_NAME_FIELDS

__all__ = ["GenerateBody", "request_from_body", "BODY_FIELDS", "TOOL_SIZES"]

TOOL_SIZES = {"square": (1024, 1024), "portrait": (768, 1024), "landscape": (1024, 768)}
"""KITTY's create_image tool sends a size word; these are KITTY's UI sizes of each shape."""


class GenerateBody(BaseModel):
    """POST /api/images/generate. Documents the body; unknown fields are accepted with a warning."""

    model_config = ConfigDict(extra="allow", json_schema_extra={
        "example": {"prompt": "studio photo of a matte black water bottle", "width": 1024, "height": 1024,
                    "steps": 30, "cfg": 7.0, "model": "sdxl_base"}})

    prompt: str = Field(description="What to draw.")
    width: int | None = Field(None, description="64..2048, a multiple of 8; default the model's size. A size "
                                                "no variant of the model makes is fitted from the nearest aspect.")
    height: int | None = Field(None, description="Like width.")
    steps: int = Field(20, description="Diffusion steps, 1..150.")
    cfg: float | None = Field(None, description="Guidance scale, 0..30 (KITTY's name for guidance).")
    guidance: float | None = Field(None, description="Same as cfg.")
    seed: int | None = Field(None, description="0..4294967295; -1 or null: a fresh seed.")
    model: str | None = Field(None, description="A model name (registered, in MODELS_YAML, or KITTY's sdxl_base, "
                                                "sdxl_refiner, sd15_base); default: the service's model.")
    refiner: str | None = Field(None, description="KITTY's refiner model name: Core ML SDXL bundles with "
                                                  "UnetRefiner refine; other models run alone, with a warning.")
    size: str | None = Field(None, description="KITTY's tool: square (1024x1024), portrait (768x1024) or "
                                               "landscape (1024x768), when width and height are left out.")
    style: str | None = Field(None, description="KITTY's tool: accepted and ignored, with a warning.")
    negative_prompt: str = Field("", description="What to steer away from.")
    count: int = Field(1, description="Images to make, 1..8.")
    scheduler: str = Field("pndm", description="pndm or dpmpp.")
    compute_units: str | None = Field(None, description="all, cpuOnly, cpuAndGPU or cpuAndNeuralEngine.")
    run_id: str | None = Field(None, description="Run id; with the prompt it gives the seed.")
    timeout_s: float | None = Field(None, description="Seconds before the engine is killed.")
    safety: bool = Field(True, description="Run the model's safety checker, if it has one.")
    reduce_memory: bool = Field(False, description="Load models on demand to lower peak memory.")
    engine: str | None = Field(None, description="auto, sample, coreml-worker, diffusers or mock.")


BODY_FIELDS = tuple(GenerateBody.model_fields)
_INTEGERS = ("width", "height", "steps", "seed", "count")
_NUMBERS = ("cfg", "guidance", "timeout_s")
_INT, _FLOAT = TypeAdapter(int), TypeAdapter(float)


def _lax_number(name: str, value: Any) -> Any:
    """A numeric string as the number pydantic makes of it ("30" -> 30, "7.5" -> 7.5); other values as given."""
    if not isinstance(value, str):
        return value
    try:
        return (_INT if name in _INTEGERS else _FLOAT).validate_python(value)
    except ValidationError:
        return value  # GenerationRequest names the field and what is allowed


def request_from_body(body: Any) -> tuple[GenerationRequest, list[str]]:
    """(GenerationRequest, warnings) from a JSON body; InvalidRequest naming the field otherwise. Null
    means "not given". Image-to-image is not offered over HTTP: its input is a path on the server."""
    if not isinstance(body, dict):
        raise InvalidRequest("body", type(body).__name__, "a JSON object like {\"prompt\": \"...\"}")
    warnings = [f"field {name!r} ignored: not a field of this service (known: {', '.join(BODY_FIELDS)})"
                for name in body if name not in BODY_FIELDS]
    given = {name: _lax_number(name, value) for name, value in body.items()
             if name in BODY_FIELDS and value is not None}
    if given.get("seed") == -1:
        del given["seed"]
    if given.get("refiner") in (False, ""):
        del given["refiner"]
    if "cfg" in given and "guidance" in given and given["cfg"] != given["guidance"]:
        raise InvalidRequest("cfg", given["cfg"], f"the same value as guidance ({given['guidance']!r}), or only one of them")
    if "size" in given:
        size = given.pop("size")
        if not isinstance(size, str) or size not in TOOL_SIZES:
            raise InvalidRequest("size", size, " | ".join(TOOL_SIZES))
        if "width" in given or "height" in given:
            warnings.append(f"size {size!r} ignored: width and height were given")
        else:
            given["width"], given["height"] = TOOL_SIZES[size]
    if "style" in given:
        warnings.append(f"style {given.pop('style')!r} ignored: styles are not applied (write it into the prompt)")
    values = {name: given[name] for name in SAME_NAME_FIELDS if name in given}
    if "cfg" in given or "guidance" in given:
        values["guidance"] = given.get("cfg", given.get("guidance"))
    if "prompt" not in values:
        raise InvalidRequest("prompt", body.get("prompt"), "non-empty text")
    return GenerationRequest(**values), warnings
