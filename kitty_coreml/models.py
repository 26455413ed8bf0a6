"""The model catalog (what can be installed) and the registry (what is installed, in
HOME/models.json), and how a request's model name or folder becomes a ModelInfo."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .atomic import write_json
from .errors import ConfigError, ModelError
from .resources import inspect_resources, looks_like_coreml

__all__ = ["ModelInfo", "CatalogEntry", "CATALOG", "Registry", "resolve_model", "model_from_folder",
           "MOCK_MODEL"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    format: str
    """coreml (a compiled resource folder), diffusers (a diffusers pipeline folder) or procedural."""
    path: Path | None
    family: str = "sd"
    width: int = 512
    height: int = 512
    attention: str | None = None
    has_encoder: bool = False
    has_safety: bool = False

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        return out


MOCK_MODEL = ModelInfo(name="mock", format="procedural", path=None, has_encoder=True)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    repo: str
    filename: str
    revision: str
    size_bytes: int
    sha256: str | None
    family: str
    width: int
    height: int
    attention: str
    description: str


# Pinned archives of Apple's converted models. The sha256 pins the content; `kitty-coreml install` also
# checks it against the hub's LFS hash and refuses a download that differs. size_bytes is exact where the
# sha256 is known from a full download, otherwise rounded (the hub's size must lie within 1% of it).
# Sources: the revisions and hashes of sd21/sd15/sdxl-mbp were found pinned in public projects that
# download these archives; sdxl-base has no published pin yet (revision "main", no sha256): the installer
# then records the commit and hash the hub reports.
CATALOG: dict[str, CatalogEntry] = {
    entry.name: entry
    for entry in (
        CatalogEntry("sd21-palettized", "apple/coreml-stable-diffusion-2-1-base-palettized",
                     "coreml-stable-diffusion-2-1-base-palettized_split_einsum_v2_compiled.zip",
                     "bf4734c9f67dc7b7f9ced335d1cee9a860bf3a85", 1_140_000_000,
                     "90c532943d460c559a8d84b7a0f05a4d265fee78ca355fdd5aa734fd43e08972",
                     "sd", 512, 512, "split_einsum",
                     "Stable Diffusion 2.1 base, 6-bit palettized, Neural Engine (default)"),
        CatalogEntry("sd15-palettized", "apple/coreml-stable-diffusion-v1-5-palettized",
                     "coreml-stable-diffusion-v1-5-palettized_split_einsum_v2_compiled.zip",
                     "04a6a0bdd66fb8da470c14e56d762343ef579d88", 1_565_721_769,
                     "49a6ac1f62e12a2b3e426730d686fa466e30cba11c03b85305775714fb9814ec",
                     "sd", 512, 512, "split_einsum",
                     "Stable Diffusion 1.5, 6-bit palettized, Neural Engine, with safety checker"),
        CatalogEntry("sdxl-base", "apple/coreml-stable-diffusion-xl-base",
                     "coreml-stable-diffusion-xl-base_original_compiled.zip",
                     "main", 7_040_000_000, None, "sdxl", 1024, 1024, "original",
                     "Stable Diffusion XL base, float16, GPU (macOS 14+)"),
        CatalogEntry("sdxl-mbp", "apple/coreml-stable-diffusion-mixed-bit-palettization",
                     "coreml-stable-diffusion-mixed-bit-palettization_original_compiled.zip",
                     "main", 6_711_666_087,
                     "a00f335d990588c97c347d97f7e92080f8cb23342c454f4a4d853a59bea1e2b5",
                     "sdxl", 1024, 1024, "original",
                     "Stable Diffusion XL base, 4.5-bit mixed palettization, GPU (macOS 14+)"),
    )
}


def model_from_folder(path: Path, name: str | None = None) -> ModelInfo:
    """A ModelInfo for a folder: Core ML resources (read with resources.py) or a diffusers pipeline."""
    path = Path(path).expanduser().absolute()
    if looks_like_coreml(path):
        info = inspect_resources(path)
        if info.width is None or info.height is None:
            raise ModelError(f"cannot read the native size of {path}: Unet metadata.json has no `sample` input",
                             hint="reinstall the model")
        return ModelInfo(name=name or path.name, format="coreml", path=path, family=info.family,
                         width=info.width, height=info.height, attention=info.attention,
                         has_encoder=info.has_encoder, has_safety=info.has_safety)
    if (path / "model_index.json").is_file():
        return _diffusers_model(path, name or path.name)
    if path.is_dir():
        raise ModelError(f"{path} is neither a Core ML resource folder (*.mlmodelc) nor a diffusers "
                         "pipeline (model_index.json)")
    raise ModelError(f"model folder {path} does not exist",
                     hint="install a model with `kitty-coreml install --model NAME`")


def _diffusers_model(path: Path, name: str) -> ModelInfo:
    size = 512
    try:
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        size = int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    family = "sdxl" if (path / "text_encoder_2").is_dir() else "sd"
    return ModelInfo(name=name, format="diffusers", path=path, family=family, width=size, height=size,
                     has_encoder=(path / "vae").is_dir())


class Registry:
    """HOME/models.json: {"default": name | null, "models": {name: {"path", "format", ...}}}."""

    def __init__(self, path: Path):
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {"default": None, "models": {}}
        except ValueError as exc:
            raise ConfigError(f"model registry {self.path} is not valid JSON ({exc})",
                              hint="fix or delete it, then run `kitty-coreml install`") from None
        if not isinstance(data, dict):
            raise ConfigError(f"model registry {self.path}: got a JSON {type(data).__name__}; allowed: an object "
                              '{"default": name, "models": {name: {"path": folder, ...}}}',
                              hint="fix or delete it, then run `kitty-coreml install`")
        data.setdefault("default", None)
        data.setdefault("models", {})
        models = data["models"]
        for name, entry in (models.items() if isinstance(models, dict) else [(None, models)]):
            path = entry.get("path") if isinstance(entry, dict) else None
            if not isinstance(path, str) or not path.strip():
                where = "`models`" if name is None else f"model {name!r}"
                raise ConfigError(f"model registry {self.path}: {where} needs a folder in \"path\"; allowed: "
                                  '"models": {name: {"path": folder, ...}}',
                                  hint="fix or delete it, then run `kitty-coreml install`")
        if data["default"] is not None and not isinstance(data["default"], str):
            raise ConfigError(f"model registry {self.path}: `default` got {data['default']!r}; allowed: a model name",
                              hint="fix or delete it, then run `kitty-coreml install`")
        return data

    def names(self) -> list[str]:
        return sorted(self.read()["models"])

    def get(self, name: str) -> ModelInfo | None:
        entry = self.read()["models"].get(name)
        if entry is None:
            return None
        return model_from_folder(Path(entry["path"]), name)

    def register(self, model: ModelInfo, *, make_default: bool = False) -> None:
        data = self.read()
        data["models"][model.name] = {"path": str(model.path), "format": model.format,
                                      "family": model.family, "width": model.width, "height": model.height}
        if make_default or not data["default"]:
            data["default"] = model.name
        write_json(self.path, data)

    def unregister(self, name: str) -> None:
        data = self.read()
        data["models"].pop(name, None)
        if data["default"] == name:
            data["default"] = next(iter(sorted(data["models"])), None)
        write_json(self.path, data)

    def default_name(self) -> str | None:
        data = self.read()
        if data["default"] in data["models"]:
            return data["default"]
        return next(iter(sorted(data["models"])), None)


def resolve_model(name_or_path: str | None, *, registry: Registry, default_model: str | None,
                  default_resource_path: Path | None) -> ModelInfo:
    """The model a request runs on: the name or folder it gives; else KITTY_COREML_MODEL; else
    KITTY_COREML_RESOURCE_PATH; else the registry's default."""
    if name_or_path == "mock":
        return MOCK_MODEL
    wanted = name_or_path or default_model
    if wanted:
        found = registry.get(wanted)
        if found is not None:
            return found
        if os.sep in wanted or wanted.startswith((".", "~")) or Path(wanted).expanduser().is_dir():
            return model_from_folder(Path(wanted))
        installed = registry.names()
        if wanted in CATALOG:
            raise ModelError(f"model {wanted!r} is not installed",
                             hint=f"run `kitty-coreml install --model {wanted}`")
        raise ModelError(
            f"unknown model {wanted!r}; installed: {', '.join(installed) or 'none'}; "
            f"available to install: {', '.join(CATALOG)}",
            hint="see `kitty-coreml models list`",
        )
    if default_resource_path is not None:
        return model_from_folder(default_resource_path, "default")
    default = registry.default_name()
    if default is not None:
        found = registry.get(default)
        if found is not None:
            return found
    raise ModelError("no model is installed",
                     hint="run `kitty-coreml install` (or `kitty-coreml models smoke` for a tiny test model), "
                          "or set KITTY_COREML_RESOURCE_PATH to a Core ML resource folder")
