"""What this machine can run. Core ML needs macOS 13.1+ on Apple Silicon; SDXL needs macOS 14
(below it Apple's binary silently ignores --xl)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

from ..settings import Settings

__all__ = ["Host", "detect_host", "coreml_reason", "sdxl_reason"]

COREML_MIN_MACOS = (13, 1)
SDXL_MIN_MACOS = (14, 0)


@dataclass(frozen=True)
class Host:
    system: str
    """Darwin, Linux, ..."""
    machine: str
    """arm64, x86_64, ..."""
    macos: tuple[int, ...] | None
    """The macOS version, None elsewhere."""

    def describe(self) -> str:
        if self.macos is not None:
            return f"macOS {'.'.join(map(str, self.macos))} on {self.machine}"
        return f"{self.system} {self.machine}"

    def to_dict(self) -> dict:
        return {"system": self.system, "machine": self.machine,
                "macos": ".".join(map(str, self.macos)) if self.macos else None}


def _version(text: str) -> tuple[int, ...] | None:
    parts = []
    for piece in text.split("."):
        if not piece.isdigit():
            break
        parts.append(int(piece))
    return tuple(parts) or None


def detect_host() -> Host:
    system = platform.system()
    machine = platform.machine()
    macos = _version(platform.mac_ver()[0]) if system == "Darwin" else None
    if system == "Darwin" and machine == "x86_64" and _translated():
        machine = "arm64"  # a Python running under Rosetta on Apple Silicon
    return Host(system=system, machine=machine, macos=macos)


def _translated() -> bool:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        value = ctypes.c_int(0)
        size = ctypes.c_size_t(ctypes.sizeof(value))
        if libc.sysctlbyname(b"sysctl.proc_translated", ctypes.byref(value), ctypes.byref(size), None, 0) != 0:
            return False
        return value.value == 1
    except (OSError, AttributeError):
        return False


def coreml_reason(settings: Settings, host: Host) -> str | None:
    """Why the Core ML steps do not apply here, or None when they do."""
    if settings.install_coreml == "yes":
        return None
    if settings.install_coreml == "no":
        return "KITTY_COREML_INSTALL_COREML=no"
    if host.system != "Darwin" or host.machine != "arm64":
        return (f"Core ML needs macOS 13.1+ on Apple Silicon; this is {host.describe()} "
                "(the portable diffusers engine is set up instead)")
    if host.macos is None or host.macos < COREML_MIN_MACOS:
        return f"Core ML needs macOS 13.1+; this is {host.describe()}"
    return None


def sdxl_reason(settings: Settings, host: Host) -> str | None:
    """Why SDXL models cannot run here although Core ML can, or None."""
    if settings.install_coreml == "yes" or host.macos is None:
        return None
    if host.macos < SDXL_MIN_MACOS:
        return f"SDXL needs macOS 14+; this is {host.describe()}"
    return None
