import io
import json

from PIL import Image

from kitty_coreml.pngmeta import a1111_parameters, add_text_chunks, read_metadata, read_text_chunks


def _png(size=(16, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a1111_format_and_quoting():
    text = a1111_parameters(prompt="a cube", negative_prompt="blurry", steps=20, scheduler="dpmpp", guidance=7.5,
                            seed=123, width=512, height=768, model="sd21, palettized")
    assert text.splitlines() == [
        "a cube",
        "Negative prompt: blurry",
        'Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 123, Size: 512x768, Model: "sd21, palettized"',
    ]


def test_chunks_round_trip_and_pillow_reads_them():
    record = {"prompt": "café ☕", "seed": 1}
    png = add_text_chunks(_png(), {"parameters": "a cube\nSteps: 1", "kitty_coreml": json.dumps(record)})
    assert read_text_chunks(png)["parameters"] == "a cube\nSteps: 1"
    assert read_metadata(png) == record
    with Image.open(io.BytesIO(png)) as image:
        image.load()
        assert image.size == (16, 8)
        assert image.text["parameters"] == "a cube\nSteps: 1"
        assert json.loads(image.text["kitty_coreml"]) == record


def test_replacing_keeps_one_chunk():
    png = add_text_chunks(add_text_chunks(_png(), {"parameters": "one"}), {"parameters": "two"})
    assert read_text_chunks(png) == {"parameters": "two"}


def test_decode_png_size_checks_the_whole_image():
    import pytest

    from kitty_coreml.pngmeta import decode_png_size

    for mode, size in (("RGB", (16, 8)), ("RGBA", (3, 5)), ("L", (7, 2)), ("P", (9, 9))):
        buffer = io.BytesIO()
        Image.new(mode, size).save(buffer, format="PNG")
        assert decode_png_size(buffer.getvalue()) == size
    good = _png((64, 64))
    idat = good.index(b"IDAT")
    corrupted = good[:idat + 10] + bytes([good[idat + 10] ^ 0xFF]) + good[idat + 11:]
    for broken, reason in ((good[:len(good) // 2], "truncated|IEND"), (corrupted, "CRC"), (b"GIF89a", "not a PNG")):
        with pytest.raises(ValueError, match=reason):
            decode_png_size(broken)
