"""What a Core ML resource folder is (CONTRACTS.md section 2): its family (SD, SDXL, SD3), its native
size and Unet batch read from the models' metadata.json, its attention type, its optional parts, and
exactly what is missing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ModelError

__all__ = ["ResourceInfo", "inspect_resources", "looks_like_coreml"]

_SHAPE = re.compile(r"-?\d+")


@dataclass(frozen=True)
class ResourceInfo:
    path: Path
    family: str
    """sd, sdxl or sd3."""
    width: int | None
    height: int | None
    attention: str | None
    """split_einsum (Neural Engine) or original (GPU); None when the Unet cannot be read."""
    has_encoder: bool
    """img2img possible: a VAEEncoder, in a family whose pipeline can start from an image (SD3's cannot:
    Apple's DiscreteFlowScheduler leaves the alphasCumProd that img2img's addNoise reads empty)."""
    has_safety: bool
    has_refiner: bool = False
    missing: list[str] = field(default_factory=list)
    unet_batch: int | None = None
    """The batch of the Unet's `sample` input: 2 for the usual conversion, which Apple's SD pipeline
    cannot feed below guidance 1 (it then sends one latent). None for SD3 or an unreadable Unet."""

    @property
    def complete(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict:
        return {
            "path": str(self.path), "family": self.family, "width": self.width, "height": self.height,
            "attention": self.attention, "hasEncoder": self.has_encoder, "hasSafetyChecker": self.has_safety,
            "hasRefiner": self.has_refiner, "unetBatch": self.unet_batch, "missing": list(self.missing),
        }


def looks_like_coreml(path: Path) -> bool:
    return path.is_dir() and any(path.glob("*.mlmodelc"))


def _metadata(model_dir: Path) -> dict | None:
    try:
        data = json.loads((model_dir / "metadata.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(data, list) and data and isinstance(data[0], dict):
        return data[0]
    return data if isinstance(data, dict) else None


def _input_shape(meta: dict | None, name: str) -> list[int] | None:
    for item in (meta or {}).get("inputSchema") or []:
        if isinstance(item, dict) and item.get("name") == name:
            numbers = [int(n) for n in _SHAPE.findall(str(item.get("shape", "")))]
            return numbers or None
    return None


def _input_names(meta: dict | None) -> set[str]:
    return {str(i.get("name")) for i in (meta or {}).get("inputSchema") or [] if isinstance(i, dict)}


def _has(path: Path, name: str) -> bool:
    return (path / name).exists()


def _unet_dirs(path: Path, stem: str) -> tuple[list[str], list[Path]]:
    """(missing names, folders present) for a Unet that may come whole or in two chunks; chunks win."""
    chunks = [path / f"{stem}Chunk1.mlmodelc", path / f"{stem}Chunk2.mlmodelc"]
    if all(c.is_dir() for c in chunks):
        return [], chunks
    if (path / f"{stem}.mlmodelc").is_dir():
        return [], [path / f"{stem}.mlmodelc"]
    return [f"{stem}.mlmodelc (or {stem}Chunk1.mlmodelc + {stem}Chunk2.mlmodelc)"], []


def inspect_resources(path: Path) -> ResourceInfo:
    """Read a resource folder. Raises ModelError only when the folder itself does not exist;
    anything missing inside it is listed in `missing`."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"resource folder {path} does not exist",
                         hint="install a model with `kitty-coreml install --model NAME` or fix the path")
    missing: list[str] = []
    if _has(path, "MultiModalDiffusionTransformer.mlmodelc"):
        family = "sd3"
        required = ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "VAEDecoder.mlmodelc"]
        denoiser = [path / "MultiModalDiffusionTransformer.mlmodelc"]
    else:
        unet_missing, denoiser = _unet_dirs(path, "Unet")
        missing += unet_missing
        unet_inputs = _input_names(_metadata(denoiser[0])) if denoiser else set()
        is_xl = _has(path, "TextEncoder2.mlmodelc") or {"time_ids", "text_embeds"} <= unet_inputs
        family = "sdxl" if is_xl else "sd"
        required = ["TextEncoder2.mlmodelc" if is_xl else "TextEncoder.mlmodelc", "VAEDecoder.mlmodelc"]
    required += ["vocab.json", "merges.txt"]
    missing += [name for name in required if not _has(path, name)]
    if family == "sd3" and _has(path, "TextEncoderT5.mlmodelc"):
        missing += [n for n in ("tokenizer_config.json", "tokenizer.json") if not _has(path, n)]

    width = height = unet_batch = None
    attention = None
    if denoiser:
        meta = _metadata(denoiser[0])
        shape = _input_shape(meta, "sample") or _input_shape(meta, "latent_image_embeddings")
        if shape and len(shape) == 4:
            height, width = shape[2] * 8, shape[3] * 8
            unet_batch = shape[0] if family != "sd3" else None
        histogram = (meta or {}).get("mlProgramOperationTypeHistogram") or {}
        if meta is not None:
            attention = "split_einsum" if "Ios16.einsum" in histogram else "original"
        elif not _has(denoiser[0], "metadata.json"):
            missing.append(f"{denoiser[0].name}/metadata.json")
    if width is None:
        shape = _input_shape(_metadata(path / "VAEDecoder.mlmodelc"), "z")
        if shape and len(shape) == 4:
            height, width = shape[2] * 8, shape[3] * 8
    return ResourceInfo(
        path=path.absolute(),
        family=family,
        width=width,
        height=height,
        attention=attention,
        has_encoder=_has(path, "VAEEncoder.mlmodelc") and family != "sd3",
        has_safety=_has(path, "SafetyChecker.mlmodelc"),
        has_refiner=_has(path, "UnetRefiner.mlmodelc") or _has(path, "UnetRefinerChunk1.mlmodelc"),
        missing=missing,
        unet_batch=unet_batch,
    )
