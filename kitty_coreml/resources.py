"""What a Core ML resource folder is (CONTRACTS.md section 2): its family (SD, SDXL, SD3), its native
size and Unet batch read from the models' metadata.json, its attention type, its optional parts, and
exactly what is missing."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, replace
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


class _Listing:
    """A folder read in one listing instead of a stat per name asked about (the service resolves the model
    on every submit). A name answers as a stat of it would: a dangling link is absent, and a name listed
    in another case is asked of the file system (macOS's is usually case-insensitive)."""

    def __init__(self, path: Path):
        self.path = path
        self.folders: dict[str, bool] = {}
        with os.scandir(path) as entries:
            for entry in entries:
                if entry.is_dir() or entry.is_file():  # both follow links: a dangling one is neither
                    self.folders[entry.name] = entry.is_dir()
        self.folded = {name.lower() for name in self.folders}

    def signature(self) -> tuple:
        """What a reading of the folder depends on: its entries, and each model's metadata.json as stat
        sees it (taken before the files are read, so that a write during the reading shows next time)."""
        stamps = []
        for name, is_dir in sorted(self.folders.items()):
            if is_dir and name.endswith(".mlmodelc"):
                try:
                    found = os.stat(os.path.join(self.path, name, "metadata.json"))
                    stamps.append((name, found.st_mtime_ns, found.st_size, found.st_ino))
                except OSError:
                    stamps.append((name, None))
        return tuple(sorted(self.folders.items())), tuple(stamps)

    def _listed(self, name: str) -> bool | None:
        """Whether the name is a folder, or None when it does not exist."""
        if name in self.folders:
            return self.folders[name]
        if name.lower() in self.folded and (self.path / name).exists():
            return (self.path / name).is_dir()
        return None

    def __contains__(self, name: str) -> bool:
        return self._listed(name) is not None

    def is_dir(self, name: str) -> bool:
        return bool(self._listed(name))


def _unet_dirs(path: Path, present: _Listing, stem: str) -> tuple[list[str], list[Path]]:
    """(missing names, folders present) for a Unet that may come whole or in two chunks; chunks win."""
    chunks = [f"{stem}Chunk1.mlmodelc", f"{stem}Chunk2.mlmodelc"]
    if all(present.is_dir(chunk) for chunk in chunks):
        return [], [path / chunk for chunk in chunks]
    if present.is_dir(f"{stem}.mlmodelc"):
        return [], [path / f"{stem}.mlmodelc"]
    return [f"{stem}.mlmodelc (or {stem}Chunk1.mlmodelc + {stem}Chunk2.mlmodelc)"], []


_READINGS: dict[Path, tuple[tuple, ResourceInfo]] = {}
"""The last reading of each folder and its signature: a model is resolved several times per request (by the
service on every submit, by the Studio provider per image), and reread only when its signature changes."""


def inspect_resources(path: Path) -> ResourceInfo:
    """Read a resource folder. Raises ModelError only when the folder itself does not exist;
    anything missing inside it is listed in `missing`."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ModelError(f"resource folder {path} does not exist",
                         hint="install a model with `kitty-coreml install --model NAME` or fix the path")
    present = _Listing(path)
    signature = present.signature()
    known = _READINGS.get(path.absolute())
    if known is None or known[0] != signature:
        known = _READINGS[path.absolute()] = signature, _read(path, present)
    return replace(known[1], missing=list(known[1].missing))


def _read(path: Path, present: _Listing) -> ResourceInfo:
    missing: list[str] = []
    meta = None
    if "MultiModalDiffusionTransformer.mlmodelc" in present:
        family = "sd3"
        required = ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "VAEDecoder.mlmodelc"]
        denoiser = [path / "MultiModalDiffusionTransformer.mlmodelc"]
    else:
        unet_missing, denoiser = _unet_dirs(path, present, "Unet")
        missing += unet_missing
        meta = _metadata(denoiser[0]) if denoiser else None
        is_xl = "TextEncoder2.mlmodelc" in present or {"time_ids", "text_embeds"} <= _input_names(meta)
        family = "sdxl" if is_xl else "sd"
        required = ["TextEncoder2.mlmodelc" if is_xl else "TextEncoder.mlmodelc", "VAEDecoder.mlmodelc"]
    required += ["vocab.json", "merges.txt"]
    missing += [name for name in required if name not in present]
    if family == "sd3" and "TextEncoderT5.mlmodelc" in present:
        missing += [n for n in ("tokenizer_config.json", "tokenizer.json") if n not in present]

    width = height = unet_batch = None
    attention = None
    if denoiser:
        if family == "sd3":
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
        has_encoder="VAEEncoder.mlmodelc" in present and family != "sd3",
        has_safety="SafetyChecker.mlmodelc" in present,
        has_refiner="UnetRefiner.mlmodelc" in present or "UnetRefinerChunk1.mlmodelc" in present,
        missing=missing,
        unet_batch=unet_batch,
    )
