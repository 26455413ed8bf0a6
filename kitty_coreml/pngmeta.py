"""Generation parameters into and out of PNG text chunks (CONTRACTS.md section 7).

Chunks are spliced into the PNG byte stream after IHDR, so the image is never re-encoded: an
AUTOMATIC1111-style `parameters` chunk that Civitai and A1111 read, and `kitty_coreml` with the
whole record as JSON. Text that is not ASCII goes into an iTXt (UTF-8) chunk."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

__all__ = ["a1111_parameters", "seed_record", "add_text_chunks", "read_text_chunks", "read_metadata",
           "decode_png_size", "SAMPLER_NAMES", "METADATA_KEY", "SHARED_GENERATOR_ENGINES"]

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
METADATA_KEY = "kitty_coreml"
SAMPLER_NAMES = {"pndm": "PLMS", "dpmpp": "DPM++ 2M"}
"""A1111's own names (it swaps an unknown name for its default): Apple's pndm runs PLMS steps only."""
SHARED_GENERATOR_ENGINES = ("sample", "coreml-worker")
"""Engines built on Apple's pipeline: all images of a request come from one generator seeded once."""


def seed_record(*, engine: str, seed: int, index: int, count: int) -> dict[str, Any]:
    """What reproduces image `index` of a request of `count` images: with Apple's engines only the same
    request (one generator draws image 0, then 1, ...: image i is not seed + i); with diffusers and
    stable-diffusion.cpp a request of one image with seed + index; the mock engine seeds each image from prompt, run id, index."""
    if engine in SHARED_GENERATOR_ENGINES:
        generator, reproduce = "shared", f"the same request: seed {seed}, count {count}, image {index}"
        image_seed = seed
    elif engine in ("diffusers", "sdcpp"):
        generator, reproduce = "per-image", f"one image with seed {(seed + index) % 2**32}"
        image_seed = (seed + index) % 2**32
    else:
        generator, reproduce = "per-image", f"the same prompt and run id, image {index}"
        image_seed = seed
    return {"seed": image_seed, "requestSeed": seed, "index": index, "count": count,
            "generator": generator, "reproduce": reproduce}


def _a1111_value(value: Any) -> str:
    # A1111 quotes (as JSON) exactly the values holding a comma, a colon or a newline.
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if any(c in text for c in ",:\n") else text


def a1111_parameters(*, prompt: str, negative_prompt: str, steps: int, scheduler: str, guidance: float,
                     seed: int, width: int, height: int, model: str, engine: str = "", index: int = 0,
                     count: int = 1, extra: dict[str, Any] | None = None) -> str:
    """A1111's infotext. The `Negative prompt:` line is always written (ComfyUI imports nothing
    without it); CFG keeps full precision; `Seed` is what reproduces this very image (seed_record), and
    a shared-generator batch says so with A1111's `Batch size` / `Batch pos`."""
    record = seed_record(engine=engine, seed=seed, index=index, count=count)
    fields: dict[str, Any] = {
        "Steps": steps,
        "Sampler": SAMPLER_NAMES.get(scheduler, scheduler),
        "CFG scale": repr(float(guidance)),
        "Seed": record["seed"],
        "Size": f"{width}x{height}",
        "Model": model,
    }
    if record["generator"] == "shared" and count > 1:
        fields.update({"Batch size": count, "Batch pos": index,
                       "Seed generator": "one for the whole batch (Apple's engine)"})
    fields.update(extra or {})
    return "\n".join([prompt, f"Negative prompt: {negative_prompt}",
                      ", ".join(f"{key}: {_a1111_value(value)}" for key, value in fields.items())])


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _text_chunk(keyword: str, text: str) -> bytes:
    key = keyword.encode("latin-1")
    if text.isascii():
        return _chunk(b"tEXt", key + b"\0" + text.encode("ascii"))
    # Readers decode tEXt as UTF-8 (ComfyUI) or Latin-1 (the PNG spec): only ASCII reads the same in
    # both. iTXt: keyword, NUL, compression flag 0, method 0, empty language tag and translated keyword.
    return _chunk(b"iTXt", key + b"\0\0\0\0\0" + text.encode("utf-8"))


def _chunks(png: bytes):
    if not png.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        yield pos, kind, png[pos + 8:pos + 8 + length], pos + 12 + length
        pos += 12 + length


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # PNG colour type -> samples per pixel


def decode_png_size(png: bytes) -> tuple[int, int]:
    """(width, height) of a PNG after checking that it decodes: every chunk's CRC, the whole zlib
    stream of its image data, and one valid filter byte per scanline. Stdlib only, so checking an
    engine's output costs no Pillow import on the CLI's fast path. Raises ValueError otherwise."""
    header = None
    data = []
    for _, kind, body, end in _chunks(png):
        if end > len(png):
            raise ValueError(f"truncated {kind.decode('latin-1', 'replace')} chunk")
        if zlib.crc32(kind + body) & 0xFFFFFFFF != struct.unpack(">I", png[end - 4:end])[0]:
            raise ValueError(f"bad CRC in a {kind.decode('latin-1', 'replace')} chunk")
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            data.append(body)
        elif kind == b"IEND":
            break
    else:
        raise ValueError("no IEND chunk")
    if header is None or not data:
        raise ValueError("no IHDR or no image data")
    width, height, depth, colour, _, _, interlace = header
    if colour not in _CHANNELS or interlace not in (0, 1):
        raise ValueError(f"unsupported colour type {colour} or interlace {interlace}")
    try:
        raw = zlib.decompress(b"".join(data))
    except zlib.error as exc:
        raise ValueError(f"image data does not inflate: {exc}") from None
    if interlace == 0:
        stride = (width * _CHANNELS[colour] * depth + 7) // 8 + 1
        if len(raw) != stride * height:
            raise ValueError(f"image data is {len(raw)} bytes; {width}x{height} needs {stride * height}")
        if any(raw[row * stride] > 4 for row in range(height)):
            raise ValueError("invalid scanline filter")
    return width, height


def add_text_chunks(png: bytes, texts: dict[str, str]) -> bytes:
    """Insert text chunks right after IHDR; existing chunks with the same keywords are replaced."""
    kept = []
    insert_at = None
    for start, kind, data, end in _chunks(png):
        if kind in (b"tEXt", b"iTXt", b"zTXt") and data.split(b"\0", 1)[0].decode("latin-1") in texts:
            continue
        kept.append(png[start:end])
        if kind == b"IHDR":
            insert_at = len(kept)
    if insert_at is None:
        raise ValueError("PNG has no IHDR chunk")
    kept[insert_at:insert_at] = [_text_chunk(key, value) for key, value in texts.items()]
    return PNG_SIGNATURE + b"".join(kept)


def read_text_chunks(png: bytes) -> dict[str, str]:
    texts: dict[str, str] = {}
    for _, kind, data, _ in _chunks(png):
        if kind == b"tEXt":
            key, _, value = data.partition(b"\0")
            texts[key.decode("latin-1")] = value.decode("latin-1")
        elif kind == b"zTXt":
            key, _, rest = data.partition(b"\0")
            texts[key.decode("latin-1")] = zlib.decompress(rest[1:]).decode("latin-1")
        elif kind == b"iTXt":
            key, _, rest = data.partition(b"\0")
            compressed, rest = rest[0], rest[2:]
            _language, _, rest = rest.partition(b"\0")
            _translated, _, value = rest.partition(b"\0")
            texts[key.decode("latin-1")] = (zlib.decompress(value) if compressed else value).decode("utf-8")
        elif kind == b"IEND":
            break
    return texts


def read_metadata(png: bytes) -> dict[str, Any] | None:
    """The kitty_coreml JSON record of a PNG we wrote, or None."""
    raw = read_text_chunks(png).get(METADATA_KEY)
    return json.loads(raw) if raw else None
