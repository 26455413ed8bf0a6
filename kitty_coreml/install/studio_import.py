"""The bundles the original Studio installer left (~/.systemsculpt/local-image-models, found by
studio/discovery.py) registered as kitty-coreml models and mapped in the Studio manifest, in place of
downloading the same 1.14 GB again: its 1:1 bundle is Apple's sd21-palettized archive, its native-ratio
bundles become sd21-palettized-<W>x<H>. Nothing is copied or moved; the folders stay where they are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..models import Registry, model_from_folder
from ..resources import inspect_resources
from ..settings import Settings
from .modelstep import manifest_problems, map_in_manifest, registry_problems
from .progress import Reporter
from .step import Step

__all__ = ["StudioImportStep", "importable"]

SQUARE_NAME = "sd21-palettized"


def importable(user_home: Path) -> dict[str, Path]:
    """model name -> complete bundle folder, for each bundle of the original installer."""
    from ..studio.discovery import original_bundles

    out = {}
    for label, (folder, _) in original_bundles(user_home).items():
        if inspect_resources(folder).missing:
            continue
        out[SQUARE_NAME if label == "1:1" else f"{SQUARE_NAME}-{label.replace(':', 'x')}"] = folder
    return out


class StudioImportStep(Step):
    name = "studio-import"
    title = "import the original Studio installer's models"

    def __init__(self, settings: Settings, manifest_path: Path, bundles: dict[str, Path]):
        self.settings = settings
        self.manifest_path = manifest_path
        self.bundles = bundles

    def problems(self) -> list[str]:
        out = []
        for name, folder in self.bundles.items():
            out += registry_problems(self.settings, name, folder) + manifest_problems(self.manifest_path, folder)
        return out

    def plan(self) -> dict[str, Any]:
        return {"imports": {name: str(folder) for name, folder in self.bundles.items()}, "downloads": []}

    def run(self, reporter: Reporter) -> str:
        registry = Registry(self.settings.registry_path)
        for name, folder in self.bundles.items():
            if registry_problems(self.settings, name, folder):
                registry.register(model_from_folder(folder, name), make_default=name == SQUARE_NAME)
                reporter.line(f"registered {name} at {folder}")
            map_in_manifest(self.manifest_path, folder)
        return f"imported {', '.join(self.bundles)} from the original Studio installer (nothing downloaded)"
