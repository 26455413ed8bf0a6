"""What a model is (ModelInfo) and the catalog of what can be installed (Apple's pinned archives)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .variants import Variant

__all__ = ["ModelInfo", "CatalogEntry", "CATALOG", "MOCK_MODEL"]


@dataclass(frozen=True)
class ModelInfo:
    name: str
    format: str
    """coreml (a compiled resource folder), diffusers (a diffusers pipeline folder), checkpoint (one
    .gguf/.safetensors/.ckpt file, for the sdcpp engine) or procedural."""
    path: Path | None
    family: str = "sd"
    width: int = 512
    height: int = 512
    attention: str | None = None
    has_encoder: bool = False
    has_safety: bool = False
    has_refiner: bool = False
    """Core ML XL resources with UnetRefiner: Apple's pipeline runs the refiner for the last steps."""
    variants: tuple[Variant, ...] = ()
    """Other sizes of the same model (variants.py); empty when it has only its own size."""

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path) if self.path else None
        out["variants"] = [variant.to_dict() for variant in self.variants]
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
# Sources: the revisions and hashes of sd21/sd15 were found pinned in public projects that download these
# archives; the sdxl revisions come from a public project's links to the repositories' trees, unconfirmed
# against the hub (install/catalog.py says "unverified pin"; install records the commit and hash it got).
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
                     "2027f2c8d5ced83ce5726ff66e00da53a9ef163d", 7_040_000_000, None, "sdxl", 1024, 1024, "original",
                     "Stable Diffusion XL base, float16, GPU (macOS 14+)"),
        CatalogEntry("sdxl-mbp", "apple/coreml-stable-diffusion-mixed-bit-palettization",
                     "coreml-stable-diffusion-mixed-bit-palettization_original_compiled.zip",
                     "959bf38cbad66f1105a84190cd12434ba815e724", 6_711_666_087,
                     "a00f335d990588c97c347d97f7e92080f8cb23342c454f4a4d853a59bea1e2b5",
                     "sdxl", 1024, 1024, "original",
                     "Stable Diffusion XL base, 4.5-bit mixed palettization, GPU (macOS 14+)"),
    )
}
