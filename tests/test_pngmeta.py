import io
import json

from PIL import Image

from kitty_coreml.pngmeta import (_chunks, a1111_parameters, add_text_chunks, read_metadata, read_text_chunks,
                                  seed_record)


def _png(size=(16, 8)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (10, 20, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a1111_format_and_quoting():
    text = a1111_parameters(prompt="a cube", negative_prompt="blurry", steps=20, scheduler="dpmpp", guidance=7.5,
                            seed=123, width=512, height=768, model="sd21, palettized",
                            extra={"Note": "two\nlines", "Run id": "run:1"})
    assert text.splitlines() == [
        "a cube",
        "Negative prompt: blurry",
        'Steps: 20, Sampler: DPM++ 2M, CFG scale: 7.5, Seed: 123, Size: 512x768, Model: "sd21, palettized", '
        'Note: "two\\nlines", Run id: "run:1"',
    ]


def test_a1111_always_has_a_negative_line_plms_and_full_precision_cfg():
    text = a1111_parameters(prompt="a cube", negative_prompt="", steps=5, scheduler="pndm", guidance=7.123456789,
                            seed=1, width=8, height=8, model="m")
    assert text.splitlines()[1] == "Negative prompt: "
    assert "Sampler: PLMS, CFG scale: 7.123456789," in text


def test_seed_record_says_how_each_image_is_reproduced():
    shared = [a1111_parameters(prompt="p", negative_prompt="", steps=5, scheduler="pndm", guidance=7, seed=42,
                               width=8, height=8, model="m", engine="sample", index=i, count=2) for i in (0, 1)]
    assert all("Seed: 42," in text for text in shared)
    assert "Batch size: 2, Batch pos: 0, Seed generator:" in shared[0] and "Batch pos: 1," in shared[1]
    assert seed_record(engine="coreml-worker", seed=42, index=1, count=2) == {
        "seed": 42, "requestSeed": 42, "index": 1, "count": 2, "generator": "shared",
        "reproduce": "the same request: seed 42, count 2, image 1"}
    per_image = a1111_parameters(prompt="p", negative_prompt="", steps=5, scheduler="pndm", guidance=7, seed=42,
                                 width=8, height=8, model="m", engine="diffusers", index=1, count=2)
    assert "Seed: 43," in per_image and "Batch" not in per_image
    assert seed_record(engine="diffusers", seed=42, index=1, count=2)["reproduce"] == "one image with seed 43"


def test_only_ascii_goes_in_text_chunks():
    png = add_text_chunks(_png(), {"parameters": "plain", "other": "café crème"})
    kinds = {}
    for _, kind, data, _ in _chunks(png):
        if kind in (b"tEXt", b"iTXt"):
            kinds[data.split(b"\0", 1)[0].decode()] = kind
    assert kinds == {"parameters": b"tEXt", "other": b"iTXt"}
    assert read_text_chunks(png)["other"] == "café crème"


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
