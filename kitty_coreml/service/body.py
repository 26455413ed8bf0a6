"""The body that asks an images service for a request, in KITTY's field names: what `generate --server`
and the warm path send, and what service/schema.py reads back. Standard library only: the callers that
send it start once per image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import InvalidRequest

if TYPE_CHECKING:
    from ..request import GenerationRequest

__all__ = ["SAME_NAME_FIELDS", "body_from_request"]

SAME_NAME_FIELDS = ("prompt", "width", "height", "steps", "seed", "model", "refiner", "negative_prompt", "count",
                    "scheduler", "compute_units", "run_id", "timeout_s", "safety", "reduce_memory", "engine")
"""Request fields the body carries under their own names (guidance travels as KITTY's `cfg`)."""


def body_from_request(request: GenerationRequest) -> dict[str, Any]:
    """The JSON body that asks a service for this request (KITTY's names; defaults left out)."""
    if request.input_image is not None:
        raise InvalidRequest("image", str(request.input_image), "no input image with --server",
                             hint="image-to-image runs only locally")
    values = request.to_dict()
    body: dict[str, Any] = {"prompt": values["prompt"], "steps": values["steps"], "cfg": values["guidance"]}
    for name in SAME_NAME_FIELDS:
        if name not in body and values.get(name) is not None:
            body[name] = values[name]
    return body
