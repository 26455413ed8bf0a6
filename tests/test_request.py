"""GenerationRequest refuses every bad value with the field, the value and what is allowed."""

import math

import pytest

from kitty_coreml.errors import InvalidRequest
from kitty_coreml.request import GenerationRequest


@pytest.mark.parametrize(
    ("fields", "field", "allowed"),
    [
        ({"prompt": "   "}, "prompt", "non-empty"),
        ({"prompt": "a\x00b"}, "prompt", "NUL"),
        ({"prompt": "x" * 7901}, "prompt", "7900"),
        ({"negative_prompt": "n" * 8000}, "negative_prompt", "7900"),
        ({"count": 0}, "count", "1..8"),
        ({"count": 9}, "count", "1..8"),
        ({"count": True}, "count", "1..8"),
        ({"steps": 0}, "steps", "1..150"),
        ({"steps": 151}, "steps", "1..150"),
        ({"guidance": -0.1}, "guidance", "0"),
        ({"guidance": 30.5}, "guidance", "30"),
        ({"guidance": math.nan}, "guidance", "number"),
        ({"guidance": math.inf}, "guidance", "number"),
        ({"scheduler": "euler"}, "scheduler", "pndm | dpmpp"),
        ({"compute_units": "gpu"}, "compute_units", "cpuAndGPU"),
        ({"seed": -1}, "seed", "0..4294967295"),
        ({"seed": 2**32}, "seed", "0..4294967295"),
        ({"run_id": "has space"}, "run_id", "printable"),
        ({"timeout_s": 0}, "timeout_s", "> 0"),
        ({"timeout_s": -5}, "timeout_s", "> 0"),
        ({"strength": 0.5}, "strength", "input image"),
        ({"safety": "yes"}, "safety", "true or false"),
        ({"reduce_memory": 1}, "reduce_memory", "true or false"),
        ({"input_image": "/no/such/image.png"}, "input_image", "existing image file"),
    ],
)
def test_bad_values_name_field_value_and_allowed(fields, field, allowed):
    values = {"prompt": "a red cube", **fields}
    with pytest.raises(InvalidRequest) as caught:
        GenerationRequest(**values)
    error = caught.value
    assert error.field == field
    assert allowed in error.message
    assert error.message.startswith(f"{field}: got ")
    assert "\n" not in error.one_line()


def test_strength_out_of_range_with_image(tmp_path):
    from PIL import Image

    image = tmp_path / "in.png"
    Image.new("RGB", (8, 8)).save(image)
    with pytest.raises(InvalidRequest, match=r"strength: got 1.5; allowed: a number >= 0 and <= 1"):
        GenerationRequest(prompt="x", input_image=image, strength=1.5)
    assert GenerationRequest(prompt="x", input_image=image, strength=1.0).strength == 1.0


def test_undecodable_image_refused(tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(InvalidRequest, match="input_image: .*Pillow can decode"):
        GenerationRequest(prompt="x", input_image=broken)


def test_values_are_normalised():
    request = GenerationRequest(prompt="  a red cube \n", negative_prompt=" blurry ", run_id=" run_1 ", guidance=7)
    assert (request.prompt, request.negative_prompt, request.run_id) == ("a red cube", "blurry", "run_1")
    assert isinstance(request.guidance, float)


def test_from_dict_refuses_unknown_fields_and_round_trips():
    request = GenerationRequest(prompt="cube", count=2, seed=5)
    assert GenerationRequest.from_dict(request.to_dict()) == request
    with pytest.raises(InvalidRequest, match="bogus"):
        GenerationRequest.from_dict({"prompt": "x", "bogus": 1})
