"""Test doubles of outside programs that cannot run here, and the files they read."""

import sys
from pathlib import Path

from .resources import make_resources

FAKE_SAMPLE_SCRIPT = Path(__file__).resolve().with_name("stable_diffusion_sample.py")
FAKE_WORKER_SCRIPT = Path(__file__).resolve().with_name("coreml_worker.py")

__all__ = ["FAKE_SAMPLE_SCRIPT", "FAKE_WORKER_SCRIPT", "make_resources", "write_fake_binary", "write_fake_worker"]


def _runner(dest: Path, script: Path) -> Path:
    """An executable at dest that runs script. The shebang names this interpreter directly: going
    through /usr/bin/env and a pyenv shim costs more than the fake's whole run."""
    dest.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
    dest.chmod(0o755)
    return dest


def write_fake_binary(dest_dir: Path) -> Path:
    """Write an executable `StableDiffusionSample` into dest_dir that runs the fake, and return it."""
    return _runner(Path(dest_dir) / "StableDiffusionSample", FAKE_SAMPLE_SCRIPT)


def write_fake_worker(dest_dir: Path) -> Path:
    """Write an executable `kitty-coreml-worker` into dest_dir that runs the fake Swift worker."""
    return _runner(Path(dest_dir) / "kitty-coreml-worker", FAKE_WORKER_SCRIPT)
