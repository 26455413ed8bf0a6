"""Apple's converter in a virtualenv of its own: python_coreml_stable_diffusion installed from the
pinned ml-stable-diffusion clone (`pip install -r requirements.txt && pip install -e .`, as Apple's
README says). Its pins (diffusers 0.30.2, transformers 4.44.2, numpy < 1.24) conflict with ours, so it
never shares our venv. The step is resumable (pip skips what is installed) and verified by a receipt
written last, naming the commit it was installed from."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ..errors import InstallError
from ..install.progress import Reporter
from ..install.step import Step, capture, read_json, run_program, write_json
from ..install.toolchain import clone_dir
from ..settings import Settings

__all__ = ["ConverterVenvStep", "venv_dir", "venv_python", "write_receipt", "TORCH2COREML_MODULE"]

TORCH2COREML_MODULE = "python_coreml_stable_diffusion.torch2coreml"
_RECEIPT = "kitty-converter.json"
_HINT = "install Python 3.11 (Apple's converter pins need it) or set KITTY_COREML_CONVERTER_PYTHON"


def venv_dir(settings: Settings) -> Path:
    return settings.converter_venv or settings.home / "converter-venv"


def venv_python(settings: Settings) -> Path:
    return venv_dir(settings) / "bin" / "python"


def write_receipt(venv: Path, commit: str) -> None:
    """What makes a venv count as installed: written only after every install command succeeded."""
    write_json(venv / _RECEIPT, {"ml_sd_commit": commit, "module": TORCH2COREML_MODULE})


class ConverterVenvStep(Step):
    name = "converter-venv"
    title = "Apple's converter (torch2coreml) in its own venv"

    def __init__(self, settings: Settings):
        self.settings = settings
        self.venv = venv_dir(settings)
        self.clone = clone_dir(settings)

    def problems(self) -> list[str]:
        python = venv_python(self.settings)
        if not python.exists():
            return [f"the converter venv is not at {self.venv}"]
        receipt = read_json(self.venv / _RECEIPT)
        if receipt is None:
            return [f"the converter venv at {self.venv} was not finished (no receipt)"]
        if receipt.get("ml_sd_commit") != self.settings.ml_sd_commit:
            return [f"the converter venv holds ml-stable-diffusion {str(receipt.get('ml_sd_commit'))[:12]}, "
                    f"not the pinned {self.settings.ml_sd_commit[:12]}"]
        status, _ = capture([str(python), "-c", f"import importlib.util, sys; "
                                                f"sys.exit(importlib.util.find_spec({TORCH2COREML_MODULE!r}) is None)"])
        if status != 0:
            return [f"{TORCH2COREML_MODULE} cannot be found by {python}"]
        return []

    def plan(self) -> dict[str, Any]:
        pip = str(self.venv / "bin" / "pip")
        return {"venv": str(self.venv), "clone": str(self.clone), "commands": [
            [self.settings.converter_python, "-m", "venv", str(self.venv)],
            [pip, "install", "-r", str(self.clone / "requirements.txt")],
            [pip, "install", "-e", str(self.clone)]]}

    def run(self, reporter: Reporter) -> str:
        if not (self.clone / "requirements.txt").is_file():
            raise InstallError(f"ml-stable-diffusion is not cloned at {self.clone}",
                               hint="run `kitty-coreml install` first (it clones the pinned commit)")
        if shutil.which(self.settings.converter_python) is None and not Path(self.settings.converter_python).is_file():
            raise InstallError(f"{self.settings.converter_python} was not found", hint=_HINT)
        # A venv holds absolute paths: it is built in place; the receipt written last marks it finished.
        (self.venv / _RECEIPT).unlink(missing_ok=True)
        for argv in self.plan()["commands"]:
            run_program(argv, label="converter venv", reporter=reporter, hint=_HINT)
        write_receipt(self.venv, self.settings.ml_sd_commit)
        return f"installed {TORCH2COREML_MODULE} at {self.settings.ml_sd_commit[:12]} into {self.venv}"
