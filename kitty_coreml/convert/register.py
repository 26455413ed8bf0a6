"""Registering converted bundles as size variants of one model: the ONE place that knows how the
registry stores variants, written against today's models.py Registry (HOME/models.json).

Today's registry resolves a model name to one folder. A converted model is stored as a normal entry
(its first variant's folder, so every existing reader keeps working) plus a `variants` list, each
{width, height, path, attention}: the shape the models/ package with size variants uses. When that
package lands, `register_variants` and `pick_variant` become calls into it and nothing else changes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_json
from ..errors import ModelError
from ..models import Registry, model_from_folder
from ..resources import inspect_resources

__all__ = ["Variant", "register_variants", "pick_variant", "variants_of", "variant_problems"]


@dataclass(frozen=True)
class Variant:
    width: int
    height: int
    path: Path
    attention: str | None

    def to_dict(self) -> dict:
        return {"width": self.width, "height": self.height, "path": str(self.path), "attention": self.attention}


def variants_of(registry_path: Path, name: str) -> list[Variant]:
    entry = Registry(registry_path).read()["models"].get(name) or {}
    return [Variant(int(v["width"]), int(v["height"]), Path(v["path"]), v.get("attention"))
            for v in entry.get("variants") or [] if isinstance(v, dict)]


def register_variants(registry_path: Path, name: str, added: list[Variant]) -> list[Variant]:
    """Add (or replace, by size) variants of model `name`; returns all its variants. A model registered
    before without variants keeps its folder as its first variant. Each variant's folder must be a
    checked bundle: this records, it does not check."""
    registry = Registry(registry_path)
    current = registry.read()["models"].get(name) or {}
    by_size: dict[tuple[int, int], Variant] = {}
    if current.get("path") and not current.get("variants") and Path(current["path"]).is_dir():
        model = model_from_folder(Path(current["path"]), name)
        by_size[(model.width, model.height)] = Variant(model.width, model.height, Path(current["path"]), model.attention)
    by_size.update({(v.width, v.height): v for v in variants_of(registry_path, name)})
    by_size.update({(v.width, v.height): v for v in added})
    variants = sorted(by_size.values(), key=lambda v: (v.width, v.height))
    primary = Path(current["path"]) if current.get("path") else added[0].path
    if primary not in {v.path for v in variants}:
        primary = added[0].path
    registry.register(model_from_folder(primary, name))
    data = registry.read()
    data["models"][name]["variants"] = [v.to_dict() for v in variants]
    write_json(registry_path, data)
    return variants


def pick_variant(registry_path: Path, name: str, width: int, height: int) -> Variant | None:
    """The variant of `name` converted for exactly width x height (KITTY's width/height, or a Studio
    ratio's size), or None: Core ML models have one fixed size each."""
    return next((v for v in variants_of(registry_path, name) if (v.width, v.height) == (width, height)), None)


def variant_problems(registry_path: Path) -> list[str]:
    """What is wrong with any registered size variant: a missing or incomplete folder, or one whose
    Unet no longer has the size or attention it was registered with."""
    problems = []
    for name in Registry(registry_path).names():
        for variant in variants_of(registry_path, name):
            where = f"{name} {variant.width}x{variant.height} ({variant.path})"
            try:
                info = inspect_resources(variant.path)
            except ModelError:
                problems.append(f"{where} does not exist")
                continue
            if info.missing:
                problems.append(f"{where} lacks {', '.join(info.missing)}")
            elif (info.width, info.height) != (variant.width, variant.height) or info.attention != variant.attention:
                problems.append(f"{where} is {info.width}x{info.height} {info.attention}, not what was registered")
    return problems
