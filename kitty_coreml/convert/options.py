"""What a conversion was asked for, validated before anything runs: the source (a hub id, a diffusers
folder or a single checkpoint file), the sizes, the attention, palettization, chunking, refiner and
VAE encoder, and the model's name."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidRequest

__all__ = ["Size", "Source", "ConvertOptions", "parse_size", "parse_source", "default_attention",
           "ATTENTIONS", "COMPUTE_UNITS", "QUANTIZE_NBITS", "SIZE_STEP", "SIZE_RANGE"]

ATTENTIONS = {"original": "ORIGINAL", "split-einsum": "SPLIT_EINSUM_V2"}
"""Our flag -> torch2coreml's --attention-implementation."""
RESOURCE_ATTENTION = {"original": "original", "split-einsum": "split_einsum"}
"""Our flag -> what resources.py reads back from a compiled Unet."""
COMPUTE_UNITS = ("all", "cpuAndNeuralEngine", "cpuAndGPU", "cpuOnly")
QUANTIZE_NBITS = (6, 8)
SIZE_STEP = 64
"""The Unet halves the latent three times (image / 8 / 8): a size must divide by 64."""
SIZE_RANGE = (256, 2048)
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_SIZE = re.compile(r"^(\d+)[xX](\d+)$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Size:
    width: int
    height: int

    @property
    def label(self) -> str:
        return f"{self.width}x{self.height}"

    @property
    def latent_w(self) -> int:
        return self.width // 8

    @property
    def latent_h(self) -> int:
        return self.height // 8


def parse_size(text: str) -> Size:
    allowed = f"WxH, each a multiple of {SIZE_STEP} from {SIZE_RANGE[0]} to {SIZE_RANGE[1]} (e.g. 1024x576)"
    match = _SIZE.match(text.strip())
    if not match:
        raise InvalidRequest("--size", text, allowed)
    width, height = int(match.group(1)), int(match.group(2))
    for value in (width, height):
        if value % SIZE_STEP or not SIZE_RANGE[0] <= value <= SIZE_RANGE[1]:
            raise InvalidRequest("--size", text, allowed)
    return Size(width, height)


@dataclass(frozen=True)
class Source:
    kind: str
    """hub (a Hugging Face id), folder (a diffusers pipeline) or single_file (.safetensors/.ckpt)."""
    value: str
    """The hub id, or the absolute path."""
    xl: bool

    @property
    def default_name(self) -> str:
        stem = Path(self.value).stem if self.kind == "single_file" else self.value.rstrip("/").split("/")[-1]
        cleaned = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
        return cleaned[:64] or "converted"


def _pipeline_class(folder: Path) -> str | None:
    try:
        return str(json.loads((folder / "model_index.json").read_text(encoding="utf-8")).get("_class_name"))
    except (OSError, ValueError, AttributeError):
        return None


def _checkpoint_is_xl(path: Path) -> bool:
    """An SDXL checkpoint has a second text encoder (`conditioner.embedders.1.*`); a .safetensors file
    says so in its JSON header. A .ckpt is a pickle, not read here: SDXL ones need --xl."""
    if path.suffix.lower() != ".safetensors":
        return False
    try:
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(min(length, 100_000_000)))
    except (OSError, ValueError):
        return False
    return isinstance(header, dict) and any(key.startswith("conditioner.embedders.1.") for key in header)


def parse_source(text: str, *, xl: bool | None) -> Source:
    """SOURCE as typed. A path that exists is a folder or a checkpoint; otherwise it must look like a hub
    id. SDXL comes from --xl, else a folder's model_index.json, a .safetensors header, or `xl` in a hub id."""
    allowed = ("a Hugging Face id (org/name), a diffusers folder (with model_index.json), or a single "
               f"{' or '.join(SINGLE_FILE_SUFFIXES)} checkpoint")
    raw = text.strip()
    path = Path(raw).expanduser()
    if path.is_dir():
        cls = _pipeline_class(path)
        if cls is None:
            raise InvalidRequest("SOURCE", text, allowed, hint=f"{path} has no readable model_index.json")
        if not any((path / "unet").glob("*.fp16.safetensors")):
            # torch2coreml loads `variant="fp16", use_safetensors=True` and fails on anything else
            raise InvalidRequest("SOURCE", text, "a diffusers folder with fp16 safetensors weights "
                                                 "(unet/diffusion_pytorch_model.fp16.safetensors), as Apple's "
                                                 "converter loads them",
                                 hint="save it with save_pretrained(..., variant='fp16'), or pass its hub id or "
                                      "single checkpoint file instead")
        return Source("folder", str(path.absolute()), xl if xl is not None else "XL" in cls)
    if path.is_file():
        if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
            raise InvalidRequest("SOURCE", text, allowed)
        return Source("single_file", str(path.absolute()), _checkpoint_is_xl(path) if xl is None else xl)
    if _HUB_ID.match(raw) and ".." not in raw:
        return Source("hub", raw, xl if xl is not None else "xl" in raw.lower())
    raise InvalidRequest("SOURCE", text, allowed, hint="no such file or folder, and not a hub id")


def default_attention(compute_units: str) -> str:
    """Split-einsum runs best on the Neural Engine, original attention on the GPU (Apple's README)."""
    return "original" if compute_units in ("cpuAndGPU", "cpuOnly") else "split-einsum"


@dataclass(frozen=True)
class ConvertOptions:
    source: Source
    sizes: tuple[Size, ...]
    name: str
    attention: str
    """original or split-einsum."""
    quantize_nbits: int | None = None
    chunk_unet: bool = False
    refiner: str | None = None
    vae_encoder: bool = False
    timeout_s: float = 14400.0

    @classmethod
    def build(cls, source: str, sizes: list[str], *, name: str | None = None, attention: str | None = None,
              compute_units: str = "cpuAndNeuralEngine", quantize_nbits: int | None = None,
              chunk_unet: bool = False, refiner: str | None = None, vae_encoder: bool = False,
              xl: bool | None = None, timeout_s: float = 14400.0) -> ConvertOptions:
        """Validate everything a user typed; each bad value names its flag."""
        if compute_units not in COMPUTE_UNITS:
            raise InvalidRequest("--compute-units", compute_units, ", ".join(COMPUTE_UNITS))
        if attention is not None and attention not in ATTENTIONS:
            raise InvalidRequest("--attention", attention, ", ".join(ATTENTIONS))
        if quantize_nbits is not None and quantize_nbits not in QUANTIZE_NBITS:
            raise InvalidRequest("--quantize-nbits", quantize_nbits, " or ".join(map(str, QUANTIZE_NBITS)))
        if not sizes:
            raise InvalidRequest("--size", "(none)", "at least one WxH, e.g. --size 1024x576")
        parsed = tuple(dict.fromkeys(parse_size(s) for s in sizes))
        parsed_source = parse_source(source, xl=xl)
        if refiner is not None:
            if not parsed_source.xl:
                raise InvalidRequest("--refiner", refiner, "only with an SDXL model (pass --xl if SOURCE is one)")
            refiner_source = parse_source(refiner, xl=True)
            if refiner_source.kind == "single_file":
                raise InvalidRequest("--refiner", refiner, "a hub id or a diffusers folder")
            refiner = refiner_source.value
        chosen_name = (name or parsed_source.default_name).strip()
        if not _NAME.match(chosen_name):
            raise InvalidRequest("--name", chosen_name, "1-64 characters: a-z, 0-9, '.', '_', '-', "
                                                        "starting with a letter or digit")
        if timeout_s <= 0:
            raise InvalidRequest("--timeout", timeout_s, "a number of seconds above 0")
        return cls(source=parsed_source, sizes=parsed, name=chosen_name,
                   attention=attention or default_attention(compute_units), quantize_nbits=quantize_nbits,
                   chunk_unet=chunk_unet, refiner=refiner, vae_encoder=vae_encoder, timeout_s=timeout_s)
