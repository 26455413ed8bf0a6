"""What is installed and how a request's model name becomes a ModelInfo: the registry (HOME/models.json,
filled by `kitty-coreml install` and `kitty-coreml models add`), KITTY's models.yaml (MODELS_YAML), KITTY's
usual names (sdxl_base, sdxl_refiner, sd15_base) for catalog models, and plain folders."""

from __future__ import annotations

import json
import os
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import ConfigError, InvalidRequest, ModelError
from ..resources import inspect_resources, looks_like_coreml
from .catalog import CATALOG, MOCK_MODEL, ModelInfo
from .checkpoint import CHECKPOINT_SUFFIXES, checkpoint_model
from .variants import Variant

__all__ = ["check_name", "Registry", "resolve_model", "model_from_folder", "read_models_yaml", "KITTY_NAMES", "known_names"]

KITTY_NAMES: dict[str, tuple[str, ...]] = {
    "sdxl_base": ("sdxl-base", "sdxl-mbp"),
    "sdxl_refiner": ("sdxl-base", "sdxl-mbp"),
    "sd15_base": ("sd15-palettized",),
}
"""KITTY's model names (its models.yaml.example) and the catalog models they stand for, first installed
wins. sdxl_refiner is an XL model: as a refiner, Apple's pipeline uses the bundle's UnetRefiner."""


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def check_name(name: str) -> str:
    """A name `models add` may register: letters, digits, `.`, `_`, `-`; not `mock` (the procedural model)."""
    if not _NAME.match(name) or name == "mock":
        raise InvalidRequest("NAME", name, "1..64 letters, digits, '.', '_' or '-', starting with a letter or "
                                           "digit, not 'mock'")
    return name


def model_from_folder(path: Path, name: str | None = None, family: str | None = None) -> ModelInfo:
    """A ModelInfo for a folder (Core ML resources, read with resources.py, or a diffusers pipeline) or a
    single model file for the sdcpp engine (.gguf, .safetensors, .ckpt; `family` is the registered one,
    for a file that cannot say)."""
    path = Path(path).expanduser().absolute()
    if path.is_file():
        if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
            raise ModelError(f"{path} is a file but not a model file: allowed are folders and "
                             f"{', '.join(CHECKPOINT_SUFFIXES)} files")
        return checkpoint_model(path, name or path.stem, family)
    if looks_like_coreml(path):
        info = inspect_resources(path)
        if info.width is None or info.height is None:
            raise ModelError(f"cannot read the native size of {path}: Unet metadata.json has no `sample` input",
                             hint="reinstall the model")
        return ModelInfo(name=name or path.name, format="coreml", path=path, family=info.family,
                         width=info.width, height=info.height, attention=info.attention,
                         has_encoder=info.has_encoder, has_safety=info.has_safety, has_refiner=info.has_refiner)
    if (path / "model_index.json").is_file():
        return _diffusers_model(path, name or path.name)
    if path.is_dir():
        raise ModelError(f"{path} is neither a Core ML resource folder (*.mlmodelc) nor a diffusers "
                         f"pipeline (model_index.json); single-file models are {', '.join(CHECKPOINT_SUFFIXES)} files")
    if path.suffix.lower() in CHECKPOINT_SUFFIXES:
        raise ModelError(f"model file {path} does not exist",
                         hint="check the path, or register the file with `kitty-coreml models add NAME FILE`")
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


def read_models_yaml(path: Path) -> dict[str, Path]:
    """KITTY's models.yaml: {name: folder}; relative folders are read from the file's folder."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"MODELS_YAML: {path} does not exist",
                          hint="point MODELS_YAML at KITTY's models.yaml, or unset it") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"MODELS_YAML: cannot read {path}: {str(exc).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ConfigError(f"MODELS_YAML: {path} is not a map of model name -> folder "
                          "(e.g. `sdxl_base: /Users/Shared/Coding/models/sd_xl_base`)")
    return {name: (path.parent / Path(folder).expanduser()).absolute() for name, folder in data.items()}


class Registry:
    """HOME/models.json: {"default": name | null, "models": {name: {"path", "format", ..., "variants"}}}."""

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
        model = model_from_folder(Path(entry["path"]), name, entry.get("family"))
        variants = tuple(Variant.from_dict(item) for item in entry.get("variants", ()))
        return replace(model, variants=variants) if variants else model

    def register(self, model: ModelInfo, *, make_default: bool = False) -> None:
        """Record a model under its name; the variants it had stay unless the folder changed."""
        data = self.read()
        previous = data["models"].get(model.name) or {}
        entry = {"path": str(model.path), "format": model.format, "family": model.family,
                 "width": model.width, "height": model.height}
        if previous.get("path") == entry["path"] and previous.get("variants"):
            entry["variants"] = previous["variants"]
        data["models"][model.name] = entry
        if make_default or not data["default"]:
            data["default"] = model.name
        write_json(self.path, data)

    def add_variant(self, name: str, folder: Path) -> Variant:
        """Record a Core ML bundle converted at another size as a variant of model `name`; one of the same
        size is replaced. ModelError when the model is not registered or the bundle is of another family."""
        data = self.read()
        entry = data["models"].get(name)
        if entry is None:
            raise ModelError(f"no model {name!r} is registered; registered: {', '.join(sorted(data['models'])) or 'none'}",
                             hint=f"register it first: `kitty-coreml models add {name} FOLDER`")
        bundle = model_from_folder(folder)
        if bundle.format != entry.get("format") or bundle.family != entry.get("family"):
            raise ModelError(f"{bundle.path} is a {bundle.family} {bundle.format} model; {name!r} is "
                             f"{entry.get('family')} {entry.get('format')}")
        variant = Variant(bundle.width, bundle.height, bundle.path, bundle.attention)
        kept = [item for item in entry.get("variants", ())
                if (item["width"], item["height"]) != (variant.width, variant.height)]
        entry["variants"] = [*kept, variant.to_dict()]
        write_json(self.path, data)
        return variant

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


def known_names(registry: Registry, models_yaml: Path | None) -> list[str]:
    """Every name a request may give here: registered, in MODELS_YAML, and KITTY's names that resolve."""
    registered = registry.names()
    names = set(registered) | set(read_models_yaml(models_yaml) if models_yaml else ())
    names |= {alias for alias, targets in KITTY_NAMES.items() if any(t in registered for t in targets)}
    return sorted(names)


def resolve_model(name_or_path: str | None, *, registry: Registry, default_model: str | None,
                  default_resource_path: Path | None, models_yaml: Path | None = None) -> ModelInfo:
    """The model a request runs on: the name or folder it gives (registry, then MODELS_YAML, then KITTY's
    usual names, then a folder); else KITTY_COREML_MODEL; else KITTY_COREML_RESOURCE_PATH; else the
    registry's default."""
    if name_or_path == "mock":
        return MOCK_MODEL
    wanted = name_or_path or default_model
    if wanted:
        found = registry.get(wanted)
        if found is not None:
            return found
        mapped = read_models_yaml(models_yaml) if models_yaml else {}
        if wanted in mapped:
            if not mapped[wanted].exists():
                raise ModelError(f"model {wanted!r}: MODELS_YAML {models_yaml} maps it to {mapped[wanted]}, "
                                 "which does not exist", hint="fix the folder in models.yaml")
            return model_from_folder(mapped[wanted], wanted)
        for target in KITTY_NAMES.get(wanted, ()):
            found = registry.get(target)
            if found is not None:
                return found
        if os.sep in wanted or wanted.startswith((".", "~")) or Path(wanted).expanduser().exists():
            return model_from_folder(Path(wanted))
        names = ", ".join(known_names(registry, models_yaml)) or "none"
        if wanted in KITTY_NAMES:
            targets = KITTY_NAMES[wanted]
            raise ModelError(f"model {wanted!r} (KITTY's name for {' or '.join(targets)}) is not installed; "
                             f"models here: {names}",
                             hint=f"run `kitty-coreml install --model {targets[0]}`, or map the name to a "
                                  f"folder: `kitty-coreml models add {wanted} FOLDER`")
        if wanted in CATALOG:
            raise ModelError(f"model {wanted!r} is not installed; models here: {names}",
                             hint=f"run `kitty-coreml install --model {wanted}`")
        raise ModelError(f"unknown model {wanted!r}; models here: {names}; available to install: {', '.join(CATALOG)}",
                         hint=f"install one with `kitty-coreml install --model NAME`, or register a folder: "
                              f"`kitty-coreml models add {wanted} FOLDER`")
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
