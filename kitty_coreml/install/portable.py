"""The portable engine: the [diffusers] extra in this Python, and the smoke model (a tiny random-weight
pipeline) so `kitty-coreml generate` works on any machine without downloading weights."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path
from typing import Any

from ..errors import InstallError
from ..models import Registry
from ..settings import Settings
from .modelstep import RECEIPT_NAME, file_listing, listing_problems, registry_problems
from .progress import Reporter
from .step import Step, read_json, run_program, write_json

__all__ = ["DiffusersExtraStep", "SmokeModelStep", "TORCH_PIN", "DIFFUSERS_MODULES"]

TORCH_PIN = "torch==2.13.0"
"""Installed first, so pip takes the CPU wheel (from the wheel cache or find-links) instead of the
multi-gigabyte CUDA build when it resolves the extra."""
DIFFUSERS_MODULES = ("torch", "diffusers", "transformers", "safetensors", "numpy")
_WEIGHTS = ("*.safetensors", "*.bin")


def _extra_requirements() -> list[str]:
    """The [diffusers] extra's requirements, read from the installed kitty-coreml's metadata."""
    try:
        requires = importlib.metadata.requires("kitty-coreml") or []
    except importlib.metadata.PackageNotFoundError:
        return [f"{name}" for name in DIFFUSERS_MODULES]
    out = []
    for requirement in requires:
        spec, _, marker = requirement.partition(";")
        if re.search(r"""extra\s*==\s*["']diffusers["']""", marker):
            out.append(spec.strip())
    return out


class DiffusersExtraStep(Step):
    name = "diffusers-extra"
    title = "install the [diffusers] extra (portable engine)"

    def problems(self) -> list[str]:
        missing = [m for m in DIFFUSERS_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            return [f"Python packages of the diffusers engine are missing in {sys.executable}: {', '.join(missing)}"]
        return []

    def _commands(self) -> list[list[str]]:
        pip = [sys.executable, "-m", "pip", "install"]
        commands = []
        if importlib.util.find_spec("torch") is None:
            commands.append([*pip, TORCH_PIN])
        commands.append([*pip, *_extra_requirements()])
        return commands

    def plan(self) -> dict[str, Any]:
        return {"python": sys.executable, "commands": self._commands()}

    def run(self, reporter: Reporter) -> str:
        for argv in self._commands():
            run_program(argv, label="pip install", reporter=reporter,
                        hint="check pip's index or find-links (pip config list), then run again")
        importlib.invalidate_caches()
        return "installed " + ", ".join(_extra_requirements())


def _component_problems(folder: Path) -> list[str]:
    """A diffusers pipeline folder: model_index.json and, per component, its config and weights."""
    index = read_json(folder / "model_index.json")
    if index is None:
        return [f"{folder / 'model_index.json'} is missing or unreadable"]
    out = []
    for component, value in index.items():
        if component.startswith("_") or not (isinstance(value, list) and value and value[0]):
            continue
        part = folder / component
        if not part.is_dir() or not any(part.iterdir()):
            out.append(f"{part} is missing or empty")
        elif component in ("unet", "vae", "text_encoder") and not any(
                any(part.glob(pattern)) for pattern in _WEIGHTS):
            out.append(f"{part} has no weights file")
    return out


class SmokeModelStep(Step):
    name = "model:smoke"
    title = "create the smoke model (tiny random weights, portable engine)"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.target = settings.models_dir / "smoke"

    def problems(self) -> list[str]:
        if not self.target.is_dir():
            return [f"the smoke model is not created ({self.target} does not exist)"]
        receipt = read_json(self.target / RECEIPT_NAME)
        if receipt is None:
            out = [f"{self.target} has no install receipt ({RECEIPT_NAME})"]
        else:
            out = listing_problems(self.target, receipt.get("files") or {})
        out += [p for p in _component_problems(self.target) if not any(p.split(" ")[0] in o for o in out)]
        return out or registry_problems(self.settings, "smoke", self.target)

    def plan(self) -> dict[str, Any]:
        return {"model": "smoke", "installs": str(self.target),
                "how": "kitty_coreml.install.smoke.create_smoke_model (random weights from a fixed seed, no download)"}

    def run(self, reporter: Reporter) -> str:
        from .smoke import create_smoke_model

        broken = self.target.is_dir() and (_component_problems(self.target) or self._listing_broken())
        reporter.line("creating the smoke model" + (" again (the old one is broken)" if broken else ""))
        model = create_smoke_model(self.settings, force=bool(broken))
        if model.path != self.target:
            raise InstallError(f"the smoke model was created at {model.path}, expected {self.target}")
        problems = _component_problems(self.target)
        if problems:
            raise InstallError(f"the smoke model is incomplete: {problems[0]}")
        write_json(self.target / RECEIPT_NAME, {"model": "smoke", "files": file_listing(self.target)})
        if registry_problems(self.settings, "smoke", self.target):
            Registry(self.settings.registry_path).register(model)
        return f"smoke model ready at {self.target} ({model.width}x{model.height}, diffusers)"

    def _listing_broken(self) -> bool:
        receipt = read_json(self.target / RECEIPT_NAME)
        return bool(receipt and listing_problems(self.target, receipt.get("files") or {}))
