"""Studio manifests (schema studio.local-diffusion.model-manifest.v1): aspect ratio -> resource folder.
The original provider's own manifest sits in the host's repository (scripts/local-diffusion/); its
installer writes none. kitty-coreml writes one at HOME/studio-manifest.json; a user may point
SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH at either."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["MANIFEST_SCHEMA", "RatioEntry", "Manifest", "read_manifest", "write_manifest", "manifest_entry",
           "expand_home"]

MANIFEST_SCHEMA = "studio.local-diffusion.model-manifest.v1"
MANIFEST_HINT = "run `kitty-coreml install` (it writes HOME/studio-manifest.json) or unset SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH"
# The manifest: aspect ratio -> resource folder


@dataclass(frozen=True)
class RatioEntry:
    resource_path: Path
    width: int | None = None
    height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Other keys of the entry (latentWidth, attentionImplementation, ...), kept when rewritten."""


@dataclass(frozen=True)
class Manifest:
    path: Path
    ratios: dict[str, RatioEntry]
    extra: dict[str, Any] = field(default_factory=dict)


def expand_home(raw: str, base: Path, home: Path | None = None) -> Path:
    """`${HOME}` and `~` expanded (to `home` when given), relative paths taken from `base`."""
    home = home or Path.home()
    text = raw.replace("${HOME}", str(home))
    path = home / text[2:] if text == "~" or text.startswith("~/") else Path(text)
    return path if path.is_absolute() else (base / path).absolute()


def read_manifest(path: Path, home: Path | None = None) -> Manifest:
    """Read a Studio manifest. Relative resource paths are relative to the manifest's folder."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Studio manifest {path} does not exist", hint=MANIFEST_HINT) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"Studio manifest {path} is not readable JSON ({exc})",
                          hint=f"fix it, or {MANIFEST_HINT}") from None
    if not isinstance(data, dict) or data.get("schema") != MANIFEST_SCHEMA:
        shown = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise ConfigError(f"Studio manifest {path}: schema is {shown!r}; expected {MANIFEST_SCHEMA!r}")
    ratios_raw = data.get("ratios")
    if not isinstance(ratios_raw, dict) or not ratios_raw:
        raise ConfigError(f"Studio manifest {path}: `ratios` must be a non-empty object of ratio -> entry")
    ratios = {}
    for label, entry in ratios_raw.items():
        resource = entry.get("resourcePath") if isinstance(entry, dict) else None
        if not isinstance(resource, str) or not resource.strip():
            raise ConfigError(f"Studio manifest {path}: ratio {label!r} has no resourcePath")
        sizes = [entry.get(k) for k in ("width", "height")]
        width, height = (int(s) if isinstance(s, int) and not isinstance(s, bool)
                         or isinstance(s, float) and math.isfinite(s) else None for s in sizes)
        extra = {k: v for k, v in entry.items() if k not in ("resourcePath", "width", "height")}
        ratios[label] = RatioEntry(expand_home(resource.strip(), path.parent.absolute(), home), width, height, extra)
    return Manifest(path=path, ratios=ratios, extra={k: v for k, v in data.items() if k not in ("schema", "ratios")})


def manifest_entry(resource_path: Path) -> RatioEntry:
    """An entry for a resource folder, its size read from the model (what installers should write)."""
    from ..models import model_from_folder

    model = model_from_folder(Path(resource_path))
    return RatioEntry(Path(resource_path).absolute(), model.width, model.height,
                      {"latentWidth": model.width // 8, "latentHeight": model.height // 8})


def write_manifest(path: Path, ratios: Mapping[str, RatioEntry | Path | str], *,
                   extra: Mapping[str, Any] | None = None) -> Manifest:
    """Write a manifest atomically (temporary name, then rename). A bare path is read with
    manifest_entry; its width and height come from the model."""
    from ..atomic import write_json

    entries = {label: value if isinstance(value, RatioEntry) else manifest_entry(Path(value))
               for label, value in ratios.items()}
    if not entries:
        raise ConfigError("a Studio manifest needs at least one ratio")
    data: dict[str, Any] = dict(extra or {})
    data["schema"] = MANIFEST_SCHEMA
    data["ratios"] = {}
    for label, entry in entries.items():
        item = dict(entry.extra)
        item["resourcePath"] = str(entry.resource_path)
        if entry.width is not None and entry.height is not None:
            item["width"], item["height"] = entry.width, entry.height
        data["ratios"][label] = item
    write_json(Path(path), data)
    return read_manifest(Path(path))

