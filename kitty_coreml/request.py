"""GenerationRequest and GenerationResult. A request is validated when it is made: every failure names
the field, the value given and what is allowed, before any engine starts."""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from .errors import InvalidRequest

__all__ = [
    "GenerationRequest",
    "GenerationResult",
    "ImageResult",
    "SCHEDULERS",
    "COMPUTE_UNITS",
    "MAX_PROMPT_CHARS",
    "MAX_COUNT",
    "MAX_STEPS",
]

SCHEDULERS = ("pndm", "dpmpp")
COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")
MAX_PROMPT_CHARS = 7900
MAX_COUNT = 8
MAX_STEPS = 150
MAX_GUIDANCE = 30.0
MAX_SEED = 2**32 - 1
MIN_SIZE, MAX_SIZE = 64, 2048
"""Image sizes a request may ask for (multiples of 8): made by the model's variant of that size, or
fitted from the nearest-aspect one."""
_RUN_ID = re.compile(r"^[\x21-\x7e]{1,200}$")


def _integer(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidRequest(name, value, f"an integer {lo}..{hi}")
    if not lo <= value <= hi:
        raise InvalidRequest(name, value, f"an integer {lo}..{hi}")
    return value


def _real(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    allowed = f"a number {'>' if lo_open else '>='} {lo:g}" + ("" if hi == math.inf else f" and <= {hi:g}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRequest(name, value, allowed)
    value = float(value)
    if not math.isfinite(value) or value < lo or value > hi or (lo_open and value == lo):
        raise InvalidRequest(name, value, allowed)
    return value


def _text(name: str, value: Any, *, required: bool) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(name, value, "a string")
    value = value.strip()
    if required and not value:
        raise InvalidRequest(name, value, "non-empty text")
    if "\x00" in value:
        raise InvalidRequest(name, value, "text without NUL characters")
    if len(value) > MAX_PROMPT_CHARS:
        raise InvalidRequest(name, f"{len(value)} characters", f"at most {MAX_PROMPT_CHARS} characters")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise InvalidRequest(name, value, "true or false")
    return value


@dataclass(frozen=True)
class GenerationRequest:
    """One generation. Optional fields left as None are resolved by the orchestrator (seed from the run
    id, compute units from the model's attention, timeout from settings, model from the registry)."""

    prompt: str
    negative_prompt: str = ""
    count: int = 1
    steps: int = 20
    guidance: float = 7.5
    scheduler: str = "pndm"
    compute_units: str | None = None
    seed: int | None = None
    run_id: str | None = None
    timeout_s: float | None = None
    input_image: Path | None = None
    strength: float | None = None
    safety: bool = True
    reduce_memory: bool = False
    model: str | None = None
    engine: str | None = None
    width: int | None = None
    height: int | None = None
    refiner: str | None = None
    """KITTY's refiner model name: Apple's XL pipeline refines with the bundle's UnetRefiner; without one
    the base model runs alone, with a warning."""

    def __post_init__(self) -> None:
        set_ = object.__setattr__  # frozen: normalised values are written once, here
        set_(self, "prompt", _text("prompt", self.prompt, required=True))
        set_(self, "negative_prompt", _text("negative_prompt", self.negative_prompt, required=False))
        set_(self, "count", _integer("count", self.count, 1, MAX_COUNT))
        set_(self, "steps", _integer("steps", self.steps, 1, MAX_STEPS))
        set_(self, "guidance", _real("guidance", self.guidance, 0.0, MAX_GUIDANCE))
        if self.scheduler not in SCHEDULERS:
            raise InvalidRequest("scheduler", self.scheduler, " | ".join(SCHEDULERS))
        if self.compute_units is not None and self.compute_units not in COMPUTE_UNITS:
            raise InvalidRequest("compute_units", self.compute_units, " | ".join(COMPUTE_UNITS))
        if self.seed is not None:
            set_(self, "seed", _integer("seed", self.seed, 0, MAX_SEED))
        if self.run_id is not None:
            if not isinstance(self.run_id, str) or not _RUN_ID.match(self.run_id.strip()):
                raise InvalidRequest("run_id", self.run_id, "1..200 printable ASCII characters without spaces")
            set_(self, "run_id", self.run_id.strip())
        if self.timeout_s is not None:
            set_(self, "timeout_s", _real("timeout_s", self.timeout_s, 0.0, math.inf, lo_open=True))
        if self.strength is not None:
            set_(self, "strength", _real("strength", self.strength, 0.0, 1.0))
            if self.input_image is None:
                raise InvalidRequest("strength", self.strength, "only together with an input image")
        if self.input_image is not None:
            set_(self, "input_image", _check_image(self.input_image))
        set_(self, "safety", _flag("safety", self.safety))
        set_(self, "reduce_memory", _flag("reduce_memory", self.reduce_memory))
        for name in ("width", "height"):
            value = getattr(self, name)
            if value is not None:
                value = _integer(name, value, MIN_SIZE, MAX_SIZE)
                if value % 8:
                    raise InvalidRequest(name, value, f"a multiple of 8 in {MIN_SIZE}..{MAX_SIZE}")
                set_(self, name, value)
        for name in ("model", "engine", "refiner"):
            value = getattr(self, name)
            if value is not None:
                if not isinstance(value, str) or not value.strip() or "\x00" in value:
                    raise InvalidRequest(name, value, "a non-empty name")
                set_(self, name, value.strip())

    @property
    def effective_strength(self) -> float:
        return 0.5 if self.strength is None else self.strength

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["input_image"] = str(self.input_image) if self.input_image else None
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationRequest:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise InvalidRequest(unknown[0], data[unknown[0]], "one of " + ", ".join(sorted(known)))
        values = dict(data)
        if values.get("input_image"):
            values["input_image"] = Path(values["input_image"])
        if "prompt" not in values:
            raise InvalidRequest("prompt", None, "non-empty text")
        return cls(**values)


def _check_image(value: Any) -> Path:
    path = Path(value).expanduser()
    if not path.is_file():
        raise InvalidRequest("input_image", str(value), "an existing image file")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise InvalidRequest("input_image", str(value), f"an image Pillow can decode ({exc})") from None
    return path.absolute()


@dataclass
class ImageResult:
    index: int
    key: str
    storage_uri: str
    width: int
    height: int
    path: str | None = None
    """The PNG on this machine: in the local store, or in the outbox when publishing failed."""
    published: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "key": self.key, "storageUri": self.storage_uri, "path": self.path,
                "width": self.width, "height": self.height, "published": self.published}


@dataclass
class GenerationResult:
    seed: int
    run_id: str
    model: str
    engine: str
    images: list[ImageResult]
    warnings: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    request: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "runId": self.run_id,
            "model": self.model,
            "engine": self.engine,
            "images": [image.to_dict() for image in self.images],
            "warnings": list(self.warnings),
            "timings": dict(self.timings),
            "request": dict(self.request),
        }
