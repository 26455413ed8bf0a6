"""`kitty-coreml install --ratios`: Studio's four non-square ratios for an installed model, converted
from the model's original weights the way the original provider's build-ratio-bundles.mjs did
(Apple's torch2coreml, ORIGINAL attention, palettized, bundled for the Swift CLI), then the Studio
manifest mapping every ratio to its bundle."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..convert import ConvertOptions, Variant, convert
from ..convert.register import converted_sizes, variant_problems
from ..errors import InstallError
from ..models import Registry
from ..settings import Settings
from ..studio import RATIO_SIZES, RatioEntry, read_manifest, write_manifest
from .progress import Reporter
from .step import Step

__all__ = ["RATIO_SOURCES", "ratio_options", "build_ratios", "write_studio_manifest", "ConvertedVariantsStep",
           "converted_variants_steps"]

RATIO_SOURCES: dict[str, tuple[str, int | None]] = {
    "sd21-palettized": ("stabilityai/stable-diffusion-2-1-base", 6),
    "sd15-palettized": ("stable-diffusion-v1-5/stable-diffusion-v1-5", 6),
}
"""Installed catalog model -> (the weights Apple converted it from, its palettization bits)."""


def ratio_options(model: str, settings: Settings) -> ConvertOptions:
    if model not in RATIO_SOURCES:
        raise InstallError(f"--ratios: cannot build ratio bundles for {model!r}; allowed: {', '.join(RATIO_SOURCES)} "
                           "(or convert any model yourself: `kitty-coreml convert SOURCE --size WxH`)")
    source, nbits = RATIO_SOURCES[model]
    sizes = [f"{w}x{h}" for label, (w, h) in RATIO_SIZES.items() if w != h]
    return ConvertOptions.build(source, sizes, name=f"{model}-ratios", attention="original",
                                quantize_nbits=nbits, timeout_s=settings.convert_timeout_s)


def write_studio_manifest(manifest_path: Path, square: Path, variants: list[Variant], source: str) -> None:
    """THE place the Studio manifest gets its ratios: 1:1 is the installed model, each other ratio the
    converted variant of its size (with the keys the original builder wrote). Other ratios already in
    the manifest are kept."""
    by_size = {(v.width, v.height): v for v in variants}
    ratios: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    if manifest_path.is_file():
        current = read_manifest(manifest_path)
        ratios.update(current.ratios)
        extra = current.extra
    ratios["1:1"] = square
    for label, size in RATIO_SIZES.items():
        variant = by_size.get(size)
        if variant is not None:
            ratios[label] = RatioEntry(variant.path, variant.width, variant.height, {
                "latentWidth": variant.width // 8, "latentHeight": variant.height // 8,
                "attentionImplementation": "ORIGINAL" if variant.attention == "original" else "SPLIT_EINSUM_V2",
                "source": source})
    write_manifest(manifest_path, ratios, extra=extra)


def build_ratios(settings: Settings, manifest_path: Path, reporter: Reporter, model: str | None = None) -> dict[str, Any]:
    registry = Registry(settings.registry_path)
    name = model or registry.default_name()
    if name is None or registry.get(name) is None:
        raise InstallError(f"--ratios: model {name or '(none)'} is not installed",
                           hint="run `kitty-coreml install` first")
    square = registry.get(name)
    assert square is not None and square.path is not None
    options = ratio_options(name, settings)
    report = convert(options, settings, reporter)
    if report.needs_mac is None:
        write_studio_manifest(manifest_path, square.path,
                              [Variant(v["width"], v["height"], Path(v["path"]), v["attention"]) for v in report.variants],
                              options.source.value)
    out = report.to_dict()
    out["manifest"] = str(manifest_path) if report.needs_mac is None else None
    return out


class ConvertedVariantsStep(Step):
    """`install --verify` checks every converted size variant; a broken one cannot be repaired without
    converting again, so running this step says how."""

    name = "converted-variants"
    title = "converted size variants"

    def __init__(self, settings: Settings):
        self.settings = settings

    def converted(self) -> list[str]:
        return sorted(converted_sizes(self.settings.registry_path))

    def problems(self) -> list[str]:
        return variant_problems(self.settings.registry_path)

    def plan(self) -> dict[str, Any]:
        return {"models": self.converted(), "commands": []}

    def run(self, reporter: Reporter) -> str:
        problems = self.problems()
        raise InstallError(f"a converted variant is broken: {problems[0]}",
                           hint="convert it again: `kitty-coreml convert SOURCE --size WxH --name NAME` "
                                "(finished sub-models are reused)")


def converted_variants_steps(settings: Settings) -> list[Step]:
    """The step that checks converted variants, where any are registered (none: no step at all)."""
    step = ConvertedVariantsStep(settings)
    return [step] if step.converted() else []
