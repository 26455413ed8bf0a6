"""Registering converted bundles as size variants of one model: the ONE place convert talks to the
registry, through the models package's variant API (`Registry.register`, `Registry.add_variant`,
`models.variants`). The first bundle of a model not yet registered becomes the model itself (its native
size); every other size is added as a variant of it."""

from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from ..models import Registry, Variant, model_from_folder
from ..models.variants import own_variant
from ..resources import inspect_resources

__all__ = ["Variant", "register_variants", "pick_variant", "variants_of", "variant_problems", "converted_sizes",
           "VARIANT_RECEIPT"]

VARIANT_RECEIPT = "kitty-variant.json"
"""Written into every bundle convert installs: what it was made from."""


def variants_of(registry_path: Path, name: str) -> list[Variant]:
    """Every size of model `name` (its own folder first), or [] when it is not registered."""
    model = Registry(registry_path).get(name)
    return [] if model is None else [own_variant(model), *model.variants]


def register_variants(registry_path: Path, name: str, added: list[Variant]) -> list[Variant]:
    """Register checked bundles as sizes of model `name`; one of a size already there is replaced.
    This records, it does not check: each folder must have passed convert's check."""
    registry = Registry(registry_path)
    current = registry.get(name)
    for variant in added:
        if current is None:
            registry.register(model_from_folder(variant.path, name))
            current = registry.get(name)
        elif variant.path != current.path:
            registry.add_variant(name, variant.path)
    return variants_of(registry_path, name)


def pick_variant(registry_path: Path, name: str, width: int, height: int) -> Variant | None:
    """The size of `name` converted for exactly width x height (KITTY's width/height, a Studio ratio's
    size), or None: the orchestrator's own pick falls back to the nearest aspect, this does not."""
    return next((v for v in variants_of(registry_path, name) if (v.width, v.height) == (width, height)), None)


def converted_sizes(registry_path: Path) -> dict[str, list[Variant]]:
    """Models convert made (a bundle holds its VARIANT_RECEIPT) or that have variants, with every size as
    the registry records it, read without opening the folders (a broken one must still be listed)."""
    out = {}
    for name, entry in Registry(registry_path).read()["models"].items():
        sizes = [Variant(int(entry["width"]), int(entry["height"]), Path(entry["path"])),
                 *(Variant.from_dict(item) for item in entry.get("variants", ()))]
        if entry.get("variants") or any((v.path / VARIANT_RECEIPT).is_file() for v in sizes):
            out[name] = sizes
    return out


def variant_problems(registry_path: Path) -> list[str]:
    """What is wrong with any converted size: a missing or incomplete folder, or one whose Unet no longer
    has the size (or attention) it was registered with."""
    problems = []
    for name, sizes in converted_sizes(registry_path).items():
        for variant in sizes:
            where = f"{name} {variant.width}x{variant.height} ({variant.path})"
            try:
                info = inspect_resources(variant.path)
            except ModelError:
                problems.append(f"{where} does not exist")
                continue
            if info.missing:
                problems.append(f"{where} lacks {', '.join(info.missing)}")
            elif (info.width, info.height) != (variant.width, variant.height) or \
                    variant.attention not in (None, info.attention):
                problems.append(f"{where} is {info.width}x{info.height} {info.attention}, not what was registered")
    return problems
