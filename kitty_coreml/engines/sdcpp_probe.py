"""What the installed stable-diffusion.cpp build can do: its version, the ggml backends compiled in
(CPU, CUDA, Metal, Vulkan) and the devices they see, with free and total memory.

The Python package binds sd.cpp's own API only; ggml's device list is read here through ctypes from
the same shared library (ggml is linked into it). Importing the package loads the library, which
takes a few tens of milliseconds and prints nothing.
"""

from __future__ import annotations

import ctypes
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SdcppBuild", "SdcppDevice", "probe", "unavailable_reason", "backend_label", "DISTRIBUTION",
           "GPU_BACKENDS"]

DISTRIBUTION = "stable-diffusion-cpp-python"
GPU_BACKENDS = ("CUDA", "MTL", "Metal", "Vulkan", "ROCm", "MUSA", "SYCL")
"""ggml's backend registry names; Metal registers as MTL (ggml-metal.cpp's GGML_METAL_NAME)."""
_DEVICE_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}
_LABELS = {"MTL": "Metal"}


def backend_label(name: str) -> str:
    """A ggml backend's registry name in the words of sd.cpp's docs (MTL is Metal)."""
    return _LABELS.get(name, name)


@dataclass(frozen=True)
class SdcppDevice:
    name: str
    description: str
    kind: str
    """cpu, gpu (dedicated memory), igpu (host memory) or accel (BLAS, AMX: beside the CPU)."""
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class SdcppBuild:
    package_version: str
    library_version: str
    """sd.cpp's own version string; "unknown" when the package was built from a source archive."""
    backends: list[str]
    devices: list[SdcppDevice] = field(default_factory=list)

    @property
    def gpu_backends(self) -> list[str]:
        return [name for name in self.backends if name in GPU_BACKENDS]

    @property
    def gpu_devices(self) -> list[SdcppDevice]:
        return [device for device in self.devices if device.kind in ("gpu", "igpu")]

    @property
    def device(self) -> str:
        """Where sd.cpp computes by default, in the protocol's words: the first GPU, else the CPU."""
        backend = self.gpu_backends[0] if self.gpu_devices and self.gpu_backends else "CPU"
        return {"CUDA": "cuda", "MTL": "mps", "Metal": "mps", "Vulkan": "vulkan", "ROCm": "rocm", "MUSA": "musa", "SYCL": "sycl"}.get(backend, "cpu")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "device": self.device}


def unavailable_reason() -> str | None:
    """None when stable_diffusion_cpp imports; else why not, in words a user can act on."""
    try:
        import stable_diffusion_cpp  # noqa: F401
    except ImportError as exc:
        return f"stable-diffusion.cpp is not installed ({exc})"
    except (OSError, FileNotFoundError) as exc:  # the package is there but its shared library is not
        return f"stable-diffusion.cpp is installed but its library does not load: {exc}"
    return None


def _library() -> ctypes.CDLL:
    from stable_diffusion_cpp import stable_diffusion_cpp as bindings

    lib = bindings._lib
    lib.ggml_backend_reg_count.restype = ctypes.c_size_t
    lib.ggml_backend_reg_get.restype = ctypes.c_void_p
    lib.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    lib.ggml_backend_reg_name.restype = ctypes.c_char_p
    lib.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for name in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, name).restype = ctypes.c_char_p
        getattr(lib, name).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.restype = None
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    return lib


def _text(value: bytes | None) -> str:
    return (value or b"").decode("utf-8", "replace").strip()


def probe() -> SdcppBuild:
    """The installed build. Raises ImportError/OSError when there is none (see unavailable_reason)."""
    from importlib.metadata import version

    import stable_diffusion_cpp

    lib = _library()
    backends = [_text(lib.ggml_backend_reg_name(lib.ggml_backend_reg_get(i))) for i in range(lib.ggml_backend_reg_count())]
    devices = []
    for index in range(lib.ggml_backend_dev_count()):
        handle = lib.ggml_backend_dev_get(index)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(handle, ctypes.byref(free), ctypes.byref(total))
        devices.append(SdcppDevice(name=_text(lib.ggml_backend_dev_name(handle)),
                                   description=_text(lib.ggml_backend_dev_description(handle)),
                                   kind=_DEVICE_KINDS.get(lib.ggml_backend_dev_type(handle), "other"),
                                   free_bytes=int(free.value), total_bytes=int(total.value)))
    return SdcppBuild(package_version=version(DISTRIBUTION),
                      library_version=_text(stable_diffusion_cpp.sd_version()) or "unknown",
                      backends=backends, devices=devices)
