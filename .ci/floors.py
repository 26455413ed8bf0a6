"""Print a pip constraints file that pins every dependency of pyproject.toml (extras included) to its
declared floor: `name>=X` becomes `name==X`. .ci/run installs the package under it into a second venv and
runs tests/floors there, so a floor that stops working fails CI instead of a user's install."""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# torch's floor is the CPU wheel this machine carries: PyPI's Linux wheels of older releases are
# multi-GB CUDA builds, so no older torch can be tested here, and an untested floor would be a guess.
HELD = {"torch": "2.13.0"}


def floors(pyproject: Path) -> list[str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        requirements.extend(extra)
    pins: dict[str, str] = {}
    for requirement in requirements:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.\[\]-]+?)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)\s*(,.*)?", requirement)
        if match is None:
            sys.exit(f"floors: {requirement!r} has no `>=` floor; declare one")
        name = match.group(1).lower()
        pins[name] = HELD.get(name, match.group(3))
    return [f"{name}=={version}" for name, version in sorted(pins.items())]


if __name__ == "__main__":
    print("\n".join(floors(Path(__file__).resolve().parents[1] / "pyproject.toml")))
