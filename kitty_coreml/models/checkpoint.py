"""Single-file models (.gguf, .safetensors, .ckpt), which the sdcpp engine loads: their family, read
from the tensor names in the file's header without loading any weights.

safetensors starts with an 8-byte length and a JSON header naming every tensor; GGUF (v2, v3) lists
its tensor names after its key-value metadata. A .ckpt is a pickle, which is never unpickled here: its
family is the registered one (`sd` unless `models add --family` says otherwise).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO

from ..errors import ModelError
from .catalog import ModelInfo

__all__ = ["CHECKPOINT_SUFFIXES", "checkpoint_model", "tensor_names", "family_of"]

CHECKPOINT_SUFFIXES = (".gguf", ".safetensors", ".ckpt")
NATIVE_SIZE = {"sd": 512, "sdxl": 1024, "sd3": 1024}
_MAX_HEADER = 256 << 20
_SDXL_MARKERS = ("conditioner.embedders.1", "cond_stage_model.1.", "te2.", "text_encoder_2.")
_SD3_MARKERS = ("joint_blocks.",)
# GGUF metadata value types -> struct format of a fixed-size value (8 = string, 9 = array)
_GGUF_FIXED = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _read(handle: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize(fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ValueError("the file ends inside its header")
    return struct.unpack(fmt, data)


def _gguf_string(handle: BinaryIO) -> str:
    (length,) = _read(handle, "<Q")
    if length > _MAX_HEADER:
        raise ValueError(f"a header string of {length} bytes")
    return handle.read(length).decode("utf-8", "replace")


def _skip_gguf_value(handle: BinaryIO, kind: int) -> None:
    if kind == 8:
        _gguf_string(handle)
    elif kind == 9:
        item_kind, count = _read(handle, "<IQ")
        for _ in range(count):
            _skip_gguf_value(handle, item_kind)
    elif kind in _GGUF_FIXED:
        _read(handle, "<" + _GGUF_FIXED[kind])
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def tensor_names(path: Path) -> list[str]:
    """The tensor names a .safetensors or .gguf file declares; [] for a .ckpt. Raises ModelError for a
    file that is not what its name says."""
    suffix = path.suffix.lower()
    try:
        with open(path, "rb") as handle:
            if suffix == ".safetensors":
                (length,) = _read(handle, "<Q")
                if not 2 <= length <= _MAX_HEADER:
                    raise ValueError(f"a header of {length} bytes")
                header = json.loads(handle.read(length))
                if not isinstance(header, dict):
                    raise ValueError("the header is not a JSON object")
                return [name for name in header if name != "__metadata__"]
            if suffix == ".gguf":
                magic = handle.read(4)
                if magic != b"GGUF":
                    raise ValueError(f"it starts with {magic!r}, not GGUF")
                version, tensors, entries = _read(handle, "<IQQ")
                if version < 2:
                    raise ValueError(f"GGUF version {version} (2 or later is read)")
                for _ in range(entries):
                    _gguf_string(handle)
                    (kind,) = _read(handle, "<I")
                    _skip_gguf_value(handle, kind)
                names = []
                for _ in range(tensors):
                    names.append(_gguf_string(handle))
                    (dims,) = _read(handle, "<I")
                    _read(handle, f"<{dims}QIQ")
                return names
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:
        raise ModelError(f"{path} is not a readable {suffix} model file: {exc}") from None
    return []


def family_of(names: list[str]) -> str | None:
    """sd, sdxl or sd3 from tensor names (the markers stable-diffusion.cpp itself looks for); None when
    the names say nothing."""
    if any(marker in name for name in names for marker in _SD3_MARKERS):
        return "sd3"
    if any(marker in name for name in names for marker in _SDXL_MARKERS):
        return "sdxl"
    if any("diffusion_model." in name or name.startswith("unet.") for name in names):
        return "sd"
    return None


def checkpoint_model(path: Path, name: str, family: str | None = None) -> ModelInfo:
    """A ModelInfo for a single model file; `family` (a registered one) wins when the file cannot say."""
    names = tensor_names(path)
    found = family_of(names)
    if names and found is None:
        raise ModelError(f"{path} holds no Stable Diffusion UNet or DiT tensors that stable-diffusion.cpp "
                         f"recognises ({len(names)} tensors, e.g. {names[0]!r})")
    chosen = found or family or "sd"
    size = NATIVE_SIZE[chosen]
    return ModelInfo(name=name, format="checkpoint", path=path, family=chosen, width=size, height=size,
                     has_encoder=True)
