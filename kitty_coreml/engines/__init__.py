"""Engines behind one small protocol (base.py): sample (Apple's binary, one process per request),
coreml-worker (swift_bridge, warm), diffusers (portable torch worker, warm), sdcpp (stable-diffusion.cpp
worker for single model files, warm) and mock (procedural)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..errors import ConfigError, InstallError, PlatformUnsupported
from .base import CancelToken, Engine, EngineImage, EngineJob, EngineOutput, ProgressEvent

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = ["create_engine", "coreml_unavailable_reason", "Engine", "EngineJob", "EngineOutput",
           "EngineImage", "ProgressEvent", "CancelToken"]


def coreml_unavailable_reason() -> str | None:
    """None on macOS 13.1+ on Apple Silicon; otherwise why Core ML cannot run here, in words."""
    import platform

    if sys.platform != "darwin":
        return (f"Core ML runs only on macOS 13.1+ on Apple Silicon; this machine is "
                f"{platform.system()} {platform.machine()}")
    if platform.machine() != "arm64":
        return f"Core ML Stable Diffusion needs Apple Silicon; this Mac is {platform.machine()}"
    release = tuple(int(p) for p in (platform.mac_ver()[0] or "0").split(".")[:2] if p.isdigit())
    if release < (13, 1):
        return f"Core ML Stable Diffusion needs macOS 13.1 or later; this Mac runs {platform.mac_ver()[0]}"
    return None


def create_engine(name: str, settings: Settings) -> Engine:
    if name == "sample":
        from .sample import SampleEngine, find_sample_binary

        return SampleEngine(find_sample_binary(settings.sample_bin, settings.bin_dir))
    if name == "mock":
        from .mock import MockEngine

        return MockEngine()
    if name == "diffusers":
        from .worker import WorkerEngine

        return WorkerEngine([sys.executable, "-m", "kitty_coreml.engines.diffusers_worker"],
                            name="diffusers", idle_unload_s=settings.idle_unload_s)
    if name == "sdcpp":
        from .sdcpp_probe import unavailable_reason
        from .worker import WorkerEngine

        reason = unavailable_reason()
        if reason:
            raise InstallError(f"the sdcpp engine cannot run: {reason}",
                               hint="run `kitty-coreml install --sdcpp` (it builds stable-diffusion.cpp for this "
                                    "machine's GPU) or `pip install 'kitty-coreml[sdcpp]'`")
        return WorkerEngine([sys.executable, "-m", "kitty_coreml.engines.sdcpp_worker"], name="sdcpp",
                            idle_unload_s=settings.idle_unload_s, load_options={"weight_type": settings.sdcpp_weights})
    if name == "coreml-worker":
        from .worker import WorkerEngine

        binary = settings.worker_bin or settings.bin_dir / "kitty-coreml-worker"
        if settings.worker_bin is None:
            reason = coreml_unavailable_reason()
            if reason:
                raise PlatformUnsupported(f"the coreml-worker engine cannot run here: {reason}",
                                          hint="use --engine diffusers with a diffusers model")
        if not binary.is_file():
            raise InstallError(f"the Core ML worker {binary} is not built",
                               hint="run `kitty-coreml install` (it builds swift_bridge) or set KITTY_COREML_WORKER_BIN")
        return WorkerEngine([str(binary)], name="coreml-worker", idle_unload_s=settings.idle_unload_s)
    raise ConfigError(f"engine: got {name!r}; allowed: sample, coreml-worker, diffusers, sdcpp, mock, auto")
