"""`kitty-coreml version`: what this installation is made of, for bug reports. Versions are read from
the installed packages' metadata (importlib.metadata), so nothing heavy (torch) is imported."""

from __future__ import annotations

import platform
from typing import Any

import typer

from .app import app

# The packages whose versions explain a behaviour; a missing one (an extra not installed) is None.
PACKAGES = ("typer", "pydantic", "torch", "diffusers", "transformers", "huggingface-hub", "fastapi", "rq",
            "stable-diffusion-cpp-python")


def installed_version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, Any]:
    from .. import __version__
    from ..settings import ML_SD_COMMIT

    return {
        "kitty-coreml": installed_version("kitty-coreml") or __version__,
        "python": platform.python_version(),
        "packages": {name: installed_version(name) for name in PACKAGES},
        "ml-stable-diffusion": ML_SD_COMMIT,
        "platform": {"system": platform.system(), "release": platform.release(), "machine": platform.machine(),
                     "macos": platform.mac_ver()[0] or None},
    }


@app.command("version")
def version(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Print the versions of everything involved.

    kitty-coreml, Python, its libraries, the pinned ml-stable-diffusion commit and the platform.
    """
    from .common import print_json

    report = versions()
    if as_json:
        print_json(report)
        return
    typer.echo(f"kitty-coreml {report['kitty-coreml']}")
    typer.echo(f"python {report['python']}")
    for name, found in report["packages"].items():
        typer.echo(f"{name} {found or 'not installed'}")
    typer.echo(f"ml-stable-diffusion {report['ml-stable-diffusion']} (pinned)")
    where = report["platform"]
    typer.echo(f"platform {where['system']} {where['release']} {where['machine']}"
               + (f" (macOS {where['macos']})" if where["macos"] else ""))
