"""Size variants: one model converted at several latent sizes (Core ML has no size flag: each size is
its own bundle, CONTRACTS.md section 2).

The API other modules use (engineer "convert" registers converted bundles with it):
- a model has `variants`, each a Variant {width, height, path, attention};
- `Registry.add_variant(name, folder)` reads a bundle's size and attention and records it under the model;
- `pick(model, width, height)` returns the variant of exactly that size, else the one of the nearest
  aspect ratio (ties: the nearest area). The model's own folder counts as a variant of its native size.
- `apply(model, variant)` is the model as it runs at that variant (its path, size and attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .catalog import ModelInfo

__all__ = ["Variant", "pick", "apply", "own_variant"]


@dataclass(frozen=True)
class Variant:
    width: int
    height: int
    path: Path
    attention: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"width": self.width, "height": self.height, "path": str(self.path), "attention": self.attention}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Variant:
        return cls(int(data["width"]), int(data["height"]), Path(data["path"]), data.get("attention"))


def own_variant(model: ModelInfo) -> Variant:
    return Variant(model.width, model.height, model.path, model.attention)


def pick(model: ModelInfo, width: int, height: int) -> Variant:
    """The variant that makes width x height, else the nearest in aspect ratio, then in area."""
    candidates = [own_variant(model), *model.variants]
    for variant in candidates:
        if (variant.width, variant.height) == (width, height):
            return variant
    wanted = math.log(width / height)
    return min(candidates, key=lambda v: (round(abs(math.log(v.width / v.height) - wanted), 6),
                                          abs(v.width * v.height - width * height)))


def apply(model: ModelInfo, variant: Variant) -> ModelInfo:
    if variant == own_variant(model):
        return model
    return replace(model, path=variant.path, width=variant.width, height=variant.height,
                   attention=variant.attention)
