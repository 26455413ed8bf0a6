"""A converter venv for the torch2coreml double, laid out like the one ConverterVenvStep makes (bin/python,
pyvenv.cfg, site-packages, the receipt), and a bin folder holding the `xcrun` double."""

import os
import sys
import sysconfig
from pathlib import Path

from kitty_coreml.convert.venv import write_receipt

PACKAGE_DIR = Path(__file__).resolve().with_name("torch2coreml_pkg")
XCRUN_SCRIPT = Path(__file__).resolve().with_name("torch2coreml_xcrun.py")


def make_converter_venv(path: Path, commit: str) -> Path:
    """A venv whose python finds the double first and this test venv's packages (torch) after it."""
    base = Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))
    (path / "bin").mkdir(parents=True)
    (path / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {sys.version.split()[0]}\n")
    (path / "bin" / "python").symlink_to(base)
    site = path / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    site.mkdir(parents=True)
    (site / "kitty_torch2coreml_double.pth").write_text(f"{PACKAGE_DIR}\n{sysconfig.get_paths()['purelib']}\n")
    write_receipt(path, commit)
    return path


def make_xcrun_bin(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "xcrun").symlink_to(XCRUN_SCRIPT)
    return folder
