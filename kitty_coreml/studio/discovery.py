"""Where an existing install lives, so a Studio user who swaps the command in changes nothing else.

Looked at in this order, for the binary and for each aspect ratio's bundle:
1. the SYSTEMSCULPT_LOCAL_DIFFUSION_* variables (SAMPLE_BIN; RESOURCE_PATH for every ratio; MANIFEST_PATH,
   which must exist);
2. kitty-coreml's own install (KITTY_COREML_SAMPLE_BIN or HOME/bin; KITTY_COREML_RESOURCE_PATH or
   KITTY_COREML_MODEL, HOME/studio-manifest.json, then the registry's Core ML models of that ratio);
3. what the original installer left (CONTRACTS.md section 5): ~/gits/apps/ml-stable-diffusion's build,
   the 1:1 bundle under ~/.systemsculpt/local-image-models/, and the native-ratio bundles under its
   native-ratios/ folder, each read through its Unet metadata (it writes no manifest);
4. StableDiffusionSample, then stable-diffusion-sample, on PATH.

Every find says where it came from (`source`) and a display name without the home folder, which is
what the answer's metadata carries."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError, InstallError, KittyError, ModelError
from .contract import RATIO_SIZES, RATIO_TOLERANCE, parse_ratio, ratio_label

if TYPE_CHECKING:
    from ..models import ModelInfo
    from ..settings import Settings, StudioSettings

__all__ = ["ORIGINAL_BINARY", "ORIGINAL_MODELS", "ORIGINAL_SQUARE", "ORIGINAL_RATIOS", "PATH_NAMES",
           "FoundBinary", "FoundBundle", "find_binary", "find_bundle", "original_bundles", "report"]

ORIGINAL_BINARY = Path("gits/apps/ml-stable-diffusion/.build/release/StableDiffusionSample")
"""Where the original installer builds Apple's binary, under the user's home."""
ORIGINAL_MODELS = Path(".systemsculpt/local-image-models")
_SQUARE_STEM = "coreml-stable-diffusion-2-1-base-palettized_split_einsum_v2_compiled"
ORIGINAL_SQUARE = ORIGINAL_MODELS / _SQUARE_STEM / _SQUARE_STEM
"""The original installer's 1:1 bundle (the zip's top folder inside a folder of the same name)."""
ORIGINAL_RATIOS = ORIGINAL_MODELS / "native-ratios"
"""build-ratio-bundles.mjs writes native-ratios/<profile>/<WxH label>/Resources."""
PATH_NAMES = ("StableDiffusionSample", "stable-diffusion-sample")
SETUP_HINT = "run `kitty-coreml install`, or set SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"
BUNDLE_HINT = ("run `kitty-coreml install`, or set SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH to a manifest "
               "that maps it")


@dataclass(frozen=True)
class FoundBinary:
    path: Path
    source: str
    """SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN, kitty_coreml, systemsculpt_install or PATH."""


@dataclass(frozen=True)
class FoundBundle:
    path: Path
    source: str
    """env_override, manifest (SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH), kitty_manifest, kitty_model,
    kitty_registry or systemsculpt_install."""
    name: str
    """What to call it where a path must not go: a registry name, or the path below its source's root."""
    declared: tuple[int | None, int | None] = (None, None)
    """The size a manifest says it has (the model's own size wins)."""


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(studio: StudioSettings, settings: Settings) -> FoundBinary:
    configured = studio.sample_bin
    if configured is not None:
        if not _executable(configured):
            state = "is not an executable file" if configured.exists() else "does not exist"
            raise InstallError(f"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN points to {configured}, which {state}",
                               hint="point it at StableDiffusionSample, or unset it and run `kitty-coreml install`")
        return FoundBinary(configured, "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN")
    own = settings.sample_bin or settings.bin_dir / "StableDiffusionSample"
    if _executable(own):
        return FoundBinary(own.absolute(), "kitty_coreml")
    original = studio.user_home / ORIGINAL_BINARY
    if _executable(original):
        return FoundBinary(original, "systemsculpt_install")
    search = os.pathsep.join(str(p) for p in settings.search_path)
    for name in PATH_NAMES:
        found = shutil.which(name, path=search) if search else None
        if found:
            return FoundBinary(Path(found).absolute(), "PATH")
    raise InstallError("StableDiffusionSample not found (not in kitty-coreml's install, "
                       f"~/{ORIGINAL_BINARY}, or on PATH)", hint=SETUP_HINT)


def _fits(model: ModelInfo, aspect_ratio: str) -> bool:
    wanted = parse_ratio(aspect_ratio)
    return wanted is not None and abs((model.width / model.height) / wanted - 1) <= RATIO_TOLERANCE


def original_bundles(home: Path) -> dict[str, tuple[Path, str]]:
    """The original installer's bundles by aspect ratio: label -> (folder, name below its models root).
    Ratio bundles are sized by their Unet, not by their folder names; unreadable ones are skipped."""
    from ..models import model_from_folder
    from ..resources import looks_like_coreml

    root = home / ORIGINAL_MODELS
    found: dict[str, tuple[Path, str]] = {}
    candidates = [home / ORIGINAL_SQUARE]
    ratios = home / ORIGINAL_RATIOS
    if ratios.is_dir():
        candidates += sorted(p for p in ratios.glob("*/*/Resources") if p.is_dir())
        candidates += sorted(p for p in ratios.glob("*/*") if p.is_dir() and looks_like_coreml(p))
    for folder in candidates:
        if not looks_like_coreml(folder):
            continue
        try:
            model = model_from_folder(folder)
        except KittyError:
            continue
        label = ratio_label(model.width, model.height)
        if label in RATIO_SIZES and label not in found:
            found[label] = (folder, str(folder.relative_to(root)))
    return found


def _own_manifest(aspect_ratio: str, studio: StudioSettings, settings: Settings) -> FoundBundle | None:
    from .manifest import read_manifest

    path = studio.manifest_path
    if not path.is_file():
        return None
    entry = read_manifest(path, studio.user_home).ratios.get(aspect_ratio)
    if entry is None:
        return None
    return FoundBundle(entry.resource_path, "kitty_manifest", entry.resource_path.name, (entry.width, entry.height))


def _own_models(aspect_ratio: str, settings: Settings) -> FoundBundle | None:
    """KITTY_COREML_RESOURCE_PATH or KITTY_COREML_MODEL when it makes the ratio; else the registry's Core
    ML models of that ratio, its default first."""
    from ..models import Registry, model_from_folder, resolve_model

    registry = Registry(settings.registry_path)
    if settings.resource_path is not None or settings.model:
        model = resolve_model(None, registry=registry, default_model=settings.model,
                              default_resource_path=settings.resource_path)
        if model.format == "coreml" and model.path is not None and _fits(model, aspect_ratio):
            return FoundBundle(model.path, "kitty_model", model.name)
    data = registry.read()
    names = sorted(data["models"], key=lambda name: name != data["default"])
    for name in names:
        entry = data["models"][name]
        if entry.get("format") != "coreml":
            continue
        width, height = entry.get("width") or 0, entry.get("height") or 0
        wanted = parse_ratio(aspect_ratio)
        if not (width and height and wanted) or abs((width / height) / wanted - 1) > RATIO_TOLERANCE:
            continue
        try:
            model = model_from_folder(Path(entry["path"]), name)
        except KittyError:
            continue
        return FoundBundle(model.path, "kitty_registry", name)
    return None


def find_bundle(aspect_ratio: str, studio: StudioSettings, settings: Settings) -> FoundBundle:
    """The resource folder for a ratio, by the order in this module's docstring."""
    from .manifest import read_manifest

    if studio.resource_path is not None:
        return FoundBundle(studio.resource_path, "env_override", studio.resource_path.name)
    if studio.manifest_path_set:
        manifest = read_manifest(studio.manifest_path, studio.user_home)
        entry = manifest.ratios.get(aspect_ratio)
        if entry is None:
            raise ModelError(f"aspect ratio {aspect_ratio!r} is not in the Studio manifest {manifest.path.name} "
                             f"(SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH); available: {', '.join(manifest.ratios)}",
                             hint="add a bundle for it to that manifest, or ask for one of those ratios")
        return FoundBundle(entry.resource_path, "manifest", entry.resource_path.name, (entry.width, entry.height))
    found = _own_manifest(aspect_ratio, studio, settings) or _own_models(aspect_ratio, settings)
    if found is not None:
        return found
    original = original_bundles(studio.user_home).get(aspect_ratio)
    if original is not None:
        return FoundBundle(original[0], "systemsculpt_install", original[1])
    raise ModelError(f"no Core ML bundle for aspect ratio {aspect_ratio} (looked at kitty-coreml's models and "
                     f"~/{ORIGINAL_MODELS})", hint=BUNDLE_HINT)


def report(studio: StudioSettings, settings: Settings) -> dict[str, Any]:
    """What discovery finds, for `kitty-coreml doctor`: the binary and each ratio's bundle, with sources."""
    out: dict[str, Any] = {"order": ["SYSTEMSCULPT_* variables", "kitty-coreml's install",
                                     "the original installer's layout", "PATH"]}
    try:
        binary = find_binary(studio, settings)
        out["sampleBinary"] = {"path": str(binary.path), "source": binary.source}
    except KittyError as exc:
        out["sampleBinary"] = {"path": None, "error": exc.one_line()}
    ratios: dict[str, Any] = {}
    for label in RATIO_SIZES:
        try:
            bundle = find_bundle(label, studio, settings)
            ratios[label] = {"path": str(bundle.path), "source": bundle.source, "name": bundle.name}
        except (ModelError, ConfigError) as exc:
            ratios[label] = {"path": None, "error": exc.one_line()}
    out["ratios"] = ratios
    return out
