"""Test doubles of outside programs that cannot run here, and the files they read."""

import sys
from pathlib import Path

from .resources import make_resources

FAKE_SAMPLE_SCRIPT = Path(__file__).resolve().with_name("stable_diffusion_sample.py")

__all__ = ["FAKE_SAMPLE_SCRIPT", "make_resources", "write_fake_binary"]


def write_fake_binary(dest_dir: Path) -> Path:
    """Write an executable `StableDiffusionSample` into dest_dir that runs the fake, and return it.

    The shebang names this interpreter directly: going through /usr/bin/env and a pyenv shim
    costs more than the fake's whole run.
    """
    binary = Path(dest_dir) / "StableDiffusionSample"
    binary.write_text(
        f"#!{sys.executable}\n"
        "import runpy\n"
        f"runpy.run_path({str(FAKE_SAMPLE_SCRIPT)!r}, run_name='__main__')\n"
    )
    binary.chmod(0o755)
    return binary
