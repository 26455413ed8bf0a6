"""The checks behind `kitty-coreml doctor`: each says what it found and, when something is missing,
the command that fixes it. Nothing here changes anything."""

from __future__ import annotations

import importlib.util
import platform
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engines import coreml_unavailable_reason
from .errors import KittyError
from .models import Registry, model_from_folder
from .resources import inspect_resources
from .settings import Settings

if TYPE_CHECKING:
    from .engines.sdcpp_probe import SdcppBuild, SdcppDevice
    from .install.sdcpp import BuildChoice

__all__ = ["diagnose", "sdcpp_check", "SDCPP_FIX"]

SDCPP_FIX = ("pip install 'kitty-coreml[sdcpp]' (a CPU build), or kitty-coreml install --sdcpp "
             "(builds for CUDA, Metal or the CPU, whichever this machine has)")
_GPU_FIXES = {"CUDA": "check the NVIDIA driver with `nvidia-smi` and that CUDA_VISIBLE_DEVICES does not hide the GPU",
              "MTL": "Metal needs an Apple Silicon Mac; rebuild for the CPU elsewhere: kitty-coreml install --sdcpp",
              "Vulkan": "install the GPU's Vulkan driver (`vulkaninfo --summary` lists the devices it sees)"}


def _check(name: str, ok: bool, detail: str, fix: str | None = None) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, **({"fix": fix} if fix and not ok else {})}


def _warning(name: str, detail: str, warning: str, fix: str) -> dict[str, Any]:
    """Works, but not as well as it could here: ok, with what is wrong and the fix."""
    return {"name": name, "ok": True, "detail": detail, "warning": warning, "fix": fix}


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB"


def _device_text(device: SdcppDevice) -> str:
    memory = f"{_gib(device.free_bytes)} free of {_gib(device.total_bytes)}" if device.total_bytes else "memory unknown"
    return f"{device.name} ({device.description}, {device.kind}) {memory}"


def sdcpp_check(build: SdcppBuild | None, unavailable: str | None = None,
                planned: BuildChoice | None = None) -> dict[str, Any]:
    """The stable-diffusion.cpp check from a probe result: its version, backends and devices. A GPU build
    that sees no GPU works on the CPU, and so does a CPU build where `planned` (what the installer would
    build here) has a GPU backend: both are warnings with the fix."""
    from .engines.sdcpp_probe import backend_label

    name = "stable-diffusion.cpp"
    if build is None:
        return _check(name, False, unavailable or "stable-diffusion.cpp is not installed", SDCPP_FIX)
    library = f", sd.cpp {build.library_version}" if build.library_version != "unknown" else ""
    devices = "; ".join(_device_text(device) for device in build.devices) or "none"
    detail = (f"stable-diffusion-cpp-python {build.package_version}{library}; backends "
              f"{', '.join(backend_label(backend) for backend in build.backends)}; devices: {devices}")
    if build.gpu_backends and not build.gpu_devices:
        labels = [backend_label(backend) for backend in build.gpu_backends]
        return _warning(name, detail, f"built for {', '.join(labels)} but no {' or '.join(labels)} device is "
                        "usable: sd.cpp will run on the CPU", _GPU_FIXES.get(build.gpu_backends[0], SDCPP_FIX))
    if planned is not None and planned.backend not in build.backends:
        return _warning(name, detail, f"built without {planned.label}, which this machine has ({planned.reason}): "
                        "sd.cpp will run on the CPU", f"kitty-coreml install --sdcpp (rebuilds it for {planned.label})")
    return _check(name, True, detail)


def _sdcpp() -> tuple[dict[str, Any], dict[str, Any]]:
    """The check and the report's "sdcpp" entry for the build installed in this Python."""
    from .engines.sdcpp_probe import probe, unavailable_reason
    from .install.sdcpp import choose_build, read_machine

    reason = unavailable_reason()
    build = None
    if reason is None:
        try:
            build = probe()
        except (OSError, AttributeError) as exc:  # a library without ggml's device functions
            reason = f"stable-diffusion.cpp loads but its ggml devices cannot be read: {exc}"
    planned = choose_build(read_machine())
    entry = {"available": build is not None, "reason": reason, "build": build.to_dict() if build else None,
             "installer_would_build": planned.label}
    return sdcpp_check(build, reason, planned), entry


def _swift_check() -> dict[str, Any]:
    """Building the engines needs Xcode 15+ (Swift 5.9+): ml-stable-diffusion's issue #199."""
    from .install.step import capture
    from .install.toolchain import swift_too_old

    status, version = capture(["swift", "--version"])
    fix = "install Xcode 15 or later (or `xcode-select --install`), then `kitty-coreml install`"
    if status != 0:
        return _check("swift", False, "swift does not run (Xcode 15+ is needed to build the engines)", fix)
    too_old = swift_too_old(version)
    return _check("swift", too_old is None, too_old or version.splitlines()[0], fix)


def _models(settings: Settings) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    checks, usable = [], []
    entries: list[tuple[str, Path]] = []
    try:
        registry = Registry(settings.registry_path).read()
        entries += [(name, Path(entry["path"])) for name, entry in sorted(registry["models"].items())]
    except KittyError as exc:
        checks.append(_check("model registry", False, exc.one_line(), "run `kitty-coreml install`"))
    if settings.resource_path is not None:
        entries.append(("KITTY_COREML_RESOURCE_PATH", settings.resource_path))
    for name, path in entries:
        try:
            model = model_from_folder(path, name)
            missing = inspect_resources(path).missing if model.format == "coreml" else []
        except KittyError as exc:
            checks.append(_check(f"model {name}", False, exc.one_line(), f"kitty-coreml install --model {name}"))
            continue
        if missing:
            checks.append(_check(f"model {name}", False, f"{path} is missing {', '.join(missing)}",
                                 f"kitty-coreml install --model {name}"))
            continue
        checks.append(_check(f"model {name}", True, f"{model.format} {model.family} {model.width}x{model.height}"
                             f"{' ' + model.attention if model.attention else ''} at {path}"))
        usable.append(model.to_dict())
    if not entries:
        checks.append(_check("models", False, "no model installed",
                             "kitty-coreml install (a Mac), or kitty-coreml models smoke (a tiny test model)"))
    return checks, usable


_SOURCES = {"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN",
            "env_override": "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH",
            "manifest": "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH", "kitty_coreml": "kitty-coreml's install",
            "kitty_manifest": "kitty-coreml's Studio manifest", "kitty_model": "kitty-coreml's default model",
            "kitty_registry": "kitty-coreml's models", "systemsculpt_install": "the original installer",
            "PATH": "PATH"}


def _studio(settings: Settings, coreml_wanted: bool) -> dict[str, Any]:
    """What the Studio provider would use, found in studio/discovery.py's order, as checks."""
    from .settings import StudioSettings
    from .studio.discovery import report

    try:
        found = report(StudioSettings.from_env(), settings)
    except KittyError as exc:
        return {"error": exc.one_line(),
                "checks": [_check("studio settings", False, exc.one_line(), "fix the SYSTEMSCULPT_* variable")]}
    checks = []
    items = [("studio StableDiffusionSample", found["sampleBinary"])]
    items += [(f"studio {label}", entry) for label, entry in found["ratios"].items()]
    for name, entry in items:
        if entry["path"]:
            checks.append(_check(name, True, f"{entry['path']} ({_SOURCES.get(entry['source'], entry['source'])})"))
        else:
            checks.append(_check(name, not coreml_wanted, entry["error"],
                                 "kitty-coreml install, or set the SYSTEMSCULPT_LOCAL_DIFFUSION_* variable it names"))
    return {**found, "checks": checks}


def _portable_fix(usable: list[dict[str, Any]]) -> str:
    """Where Core ML cannot run: generate with an installed diffusers model, or make the smoke model first."""
    installed = next((model["name"] for model in usable if model["format"] == "diffusers"), None)
    if installed:
        return f"generate here with the portable engine: kitty-coreml generate \"...\" --engine diffusers --model {installed}"
    return ("generate here with the portable engine: kitty-coreml models smoke; "
            "kitty-coreml generate \"...\" --engine diffusers --model smoke")


def diagnose(settings: Settings) -> dict[str, Any]:
    from .engines.sample import find_sample_binary
    from .storage.outbox import pending

    checks = [_check("python", sys.version_info >= (3, 11), f"{platform.python_version()} at {sys.executable}",
                     "install Python 3.11 or later")]
    reason = coreml_unavailable_reason()
    model_checks, usable = _models(settings)
    checks.append(_check("core ml", reason is None, reason or f"macOS {platform.mac_ver()[0]} on arm64",
                         _portable_fix(usable)))
    coreml_wanted = reason is None or settings.sample_bin is not None
    if reason is None:
        checks.append(_swift_check())
    try:
        binary = find_sample_binary(settings.sample_bin, settings.bin_dir)
        checks.append(_check("StableDiffusionSample", True, str(binary)))
    except KittyError as exc:
        binary = None
        checks.append(_check("StableDiffusionSample", not coreml_wanted,
                             exc.message if coreml_wanted else "not applicable: Core ML cannot run here",
                             "kitty-coreml install"))
    worker = settings.worker_bin or settings.bin_dir / "kitty-coreml-worker"
    built = worker.is_file()
    checks.append(_check("Core ML worker", built or not coreml_wanted,
                         str(worker) if built else (f"{worker} not built" if coreml_wanted
                                                    else "not applicable: Core ML cannot run here"),
                         "kitty-coreml install (builds swift_bridge on a Mac)"))
    diffusers = all(importlib.util.find_spec(name) for name in ("torch", "diffusers", "transformers"))
    checks.append(_check("diffusers engine", diffusers,
                         "torch, diffusers and transformers importable" if diffusers else "the [diffusers] extra is not installed",
                         "pip install 'kitty-coreml[diffusers]' (install torch first)"))
    sdcpp_entry, sdcpp = _sdcpp()
    checks.append(sdcpp_entry)
    checks += model_checks
    if settings.store == "s3":
        configured = bool(settings.s3_access_key and settings.s3_secret_key)
        checks.append(_check("store", configured, f"s3://{settings.s3_bucket}/{settings.prefix} at "
                             f"{settings.s3_endpoint_url or 'AWS'}", "set S3_ACCESS_KEY and S3_SECRET_KEY"))
    else:
        checks.append(_check("store", True, f"local folder {settings.images_root / settings.prefix}"))
    waiting = len(pending(settings.outbox_dir))
    checks.append(_check("outbox", waiting == 0, f"{waiting} image(s) waiting to be published",
                         "kitty-coreml publish --pending"))
    studio = _studio(settings, coreml_wanted)
    checks += studio.pop("checks")
    ready = []
    for model in usable:
        if model["format"] == "coreml" and binary is not None and (reason is None or settings.sample_bin):
            ready.append(f"sample engine with model {model['name']}")
        if model["format"] == "diffusers" and diffusers:
            ready.append(f"diffusers engine with model {model['name']}")
        if model["format"] == "checkpoint" and sdcpp["available"]:
            ready.append(f"sdcpp engine with model {model['name']}")
    return {
        "platform": {"system": platform.system(), "machine": platform.machine(), "python": platform.python_version()},
        "coreml": {"available": reason is None, "reason": reason},
        "sdcpp": sdcpp,
        "home": str(settings.home),
        "checks": checks,
        "models": usable,
        "ready": ready,
        "studio": studio,
        "ok": all(check["ok"] for check in checks),
    }
