"""A converter venv holding the torch2coreml double, the `xcrun` double on PATH, the project's tiny
smoke pipeline as a diffusers folder with fp16 weights (what Apple's converter loads), and a runner for
the real `kitty-coreml` console script."""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kitty_coreml.settings import ML_SD_COMMIT
from tests.conftest import KITTY, Run, clean_env
from tests.fakes.torch2coreml_env import make_converter_venv, make_xcrun_bin


@pytest.fixture(scope="session")
def smoke_folder(tmp_path_factory) -> Path:
    """The smoke pipeline saved as Apple's converter loads one: `variant="fp16"` safetensors."""
    from kitty_coreml.install.smoke import build_smoke_pipeline

    root = tmp_path_factory.mktemp("smoke")
    pipeline = build_smoke_pipeline(root / "tokenizer-source")
    pipeline.save_pretrained(root / "sd-tiny", variant="fp16", safe_serialization=True)
    return root / "sd-tiny"


@dataclass
class Converter:
    root: Path
    home: Path
    env: dict[str, str]
    log: Path
    extra: dict[str, str] = field(default_factory=dict)

    def run(self, *args: str, extra_env: dict[str, str] | None = None, timeout: float = 300) -> Run:
        proc = subprocess.run([KITTY, "convert", *args], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(extra_env or {})}, stdin=subprocess.DEVNULL, cwd=self.root)
        return Run(proc.returncode, proc.stdout, proc.stderr)

    def popen(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen([KITTY, "convert", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, env={**self.env, **(extra_env or {})}, stdin=subprocess.DEVNULL,
                                cwd=self.root)

    def calls(self) -> list[list[str]]:
        """The argv of every torch2coreml run, in order."""
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def sizes(self, name: str) -> list[dict]:
        """Every size of a registered model: its own folder, then its variants."""
        entry = self.registry()["models"][name]
        return [{k: entry[k] for k in ("width", "height", "path")}, *entry.get("variants", [])]

    def registry(self) -> dict:
        path = self.home / "models.json"
        return json.loads(path.read_text()) if path.exists() else {"models": {}}


def _converter(tmp_path: Path, *, mac: bool) -> Converter:
    home = tmp_path / "home"
    home.mkdir()
    venv = make_converter_venv(tmp_path / "converter-venv", ML_SD_COMMIT)
    log = tmp_path / "torch2coreml-calls.jsonl"
    env = clean_env(KITTY_COREML_HOME=str(home), KITTY_COREML_CONVERTER_VENV=str(venv),
                    KITTY_COREML_PROGRESS="plain", FAKE_TORCH2COREML_LOG=str(log))
    # Off a Mac there is no xcrun; on "a Mac" the double is first on PATH. Drop any real one either way.
    path = [p for p in env["PATH"].split(os.pathsep) if p and not (Path(p) / "xcrun").exists()]
    if mac:
        path.insert(0, str(make_xcrun_bin(tmp_path / "xcode-bin")))
    env["PATH"] = os.pathsep.join(path)
    return Converter(tmp_path, home, env, log)


@pytest.fixture
def converter(tmp_path: Path) -> Converter:
    """Conversion where `xcrun coremlcompiler` exists (as on a Mac with Xcode): the double."""
    return _converter(tmp_path, mac=True)


@pytest.fixture
def converter_off_mac(tmp_path: Path) -> Converter:
    return _converter(tmp_path, mac=False)
