"""The HTTP request body: KITTY's field names (prompt, width, height, steps, cfg, seed, model, refiner)
plus the rest of GenerationRequest's fields, mapped onto a GenerationRequest and validated by its rules."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from ..errors import InvalidRequest
from ..request import GenerationRequest

__all__ = ["GenerateBody", "request_from_body", "body_from_request", "BODY_FIELDS"]


class GenerateBody(BaseModel):
    """POST /api/images/generate. Only documents the body: values are checked by GenerationRequest, so
    a bad one is answered 422 with the same one-line message the CLI prints."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "example": {"prompt": "studio photo of a matte black water bottle", "steps": 20, "cfg": 7.5, "seed": 42}})

    prompt: str = Field(description="What to draw.")
    width: int | None = Field(None, description="The model's native width, or left out.")
    height: int | None = Field(None, description="The model's native height, or left out.")
    steps: int = Field(20, description="Diffusion steps, 1..150.")
    cfg: float | None = Field(None, description="Guidance scale, 0..30 (KITTY's name for guidance).")
    guidance: float | None = Field(None, description="Same as cfg.")
    seed: int | None = Field(None, description="0..4294967295; default: derived from the prompt and run id.")
    model: str | None = Field(None, description="Installed model name; default: the service's model.")
    refiner: bool | None = Field(None, description="KITTY's SDXL refiner switch: only false or null (no refiner stage).")
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
_SAME_NAME = ("prompt", "width", "height", "steps", "seed", "model", "negative_prompt", "count", "scheduler",
              "compute_units", "run_id", "timeout_s", "safety", "reduce_memory", "engine")


def request_from_body(body: Any) -> GenerationRequest:
    """A GenerationRequest from a JSON body; InvalidRequest naming the field otherwise. Null means
    "not given". Image-to-image is not offered over HTTP: its input is a path on the server."""
    if not isinstance(body, dict):
        raise InvalidRequest("body", type(body).__name__, "a JSON object like {\"prompt\": \"...\"}")
    for name, value in body.items():
        if name not in BODY_FIELDS:
            raise InvalidRequest(name, value, "one of " + ", ".join(BODY_FIELDS))
    given = {name: value for name, value in body.items() if value is not None}
    if "cfg" in given and "guidance" in given and given["cfg"] != given["guidance"]:
        raise InvalidRequest("cfg", given["cfg"], f"the same value as guidance ({given['guidance']!r}), or only one of them")
    if given.get("refiner") not in (None, False):
        raise InvalidRequest("refiner", given["refiner"], "false or null",
                             hint="kitty-coreml runs no refiner stage; leave it out")
    values = {name: given[name] for name in _SAME_NAME if name in given}
    if "cfg" in given or "guidance" in given:
        values["guidance"] = given.get("cfg", given.get("guidance"))
    if "prompt" not in values:
        raise InvalidRequest("prompt", body.get("prompt"), "non-empty text")
    return GenerationRequest(**values)


def body_from_request(request: GenerationRequest) -> dict[str, Any]:
    """The JSON body that asks a service for this request (KITTY's names; defaults left out)."""
    if request.input_image is not None:
        raise InvalidRequest("image", str(request.input_image), "no input image with --server",
                             hint="image-to-image runs only locally")
    values = request.to_dict()
    body: dict[str, Any] = {"prompt": values["prompt"], "steps": values["steps"], "cfg": values["guidance"]}
    for name in _SAME_NAME:
        if name not in body and values.get(name) is not None:
            body[name] = values[name]
    return body
