"""stable-diffusion.cpp (the stable-diffusion-cpp-python package) built from source into this Python,
for the backend this machine can use: CUDA where nvcc and an NVIDIA GPU are both present, Metal on an
Apple Silicon Mac, else the CPU. A user's own CMAKE_ARGS wins. PyPI has only source archives, so every
install compiles ggml with CMake: minutes, shown line by line with the time elapsed.

Done means: the package imports in a fresh interpreter and its ggml backends include the planned one
(a CPU build where CUDA was planned is not done, and is rebuilt)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic import write_bytes
from ..engines.sdcpp_probe import DISTRIBUTION, SdcppBuild, SdcppDevice, backend_label
from ..errors import InstallError
from ..settings import Settings
from .host import detect_host
from .progress import Reporter
from .step import Step, run_program

__all__ = ["SdcppStep", "MachineFacts", "BuildChoice", "read_machine", "choose_build", "requirement",
           "probe_fresh", "REQUIREMENT"]

REQUIREMENT = "stable-diffusion-cpp-python>=0.4.7,<0.5"
"""The [sdcpp] extra's requirement, used when the installed kitty-coreml's metadata does not have it."""

# ggml's backend registry names (ggml_backend_reg_name) for each sd.cpp CMake switch; Metal registers as MTL.
_SWITCHES = {"SD_CUDA": "CUDA", "SD_METAL": "MTL", "SD_VULKAN": "Vulkan", "SD_HIPBLAS": "ROCm", "SD_SYCL": "SYCL",
             "SD_MUSA": "MUSA", "SD_OPENCL": "OpenCL"}
_CMAKE_DEFINE = re.compile(r"-D\s*(SD_[A-Z_]+)(?::[A-Za-z]+)?=(\S+)")
_PROBE = ("import json\n"
          "from kitty_coreml.engines.sdcpp_probe import probe, unavailable_reason\n"
          "reason = unavailable_reason()\n"
          "print(json.dumps({'error': reason} if reason else probe().to_dict()))\n")


@dataclass(frozen=True)
class MachineFacts:
    """What decides the build: the interpreter's platform, the CUDA compiler, the NVIDIA GPUs, CMAKE_ARGS."""

    system: str
    machine: str
    """The interpreter's architecture: under Rosetta an arm64 Mac runs an x86_64 Python."""
    rosetta: bool
    nvcc: str | None
    nvcc_on_path: bool
    """False when nvcc was found through CUDA_HOME or CUDA_PATH, where CMake would not look."""
    nvcc_release: str | None
    """`nvcc --version`'s "release 13.0"; None when nvcc is absent or does not run."""
    gpus: tuple[str, ...]
    """The lines `nvidia-smi -L` lists, one per GPU."""
    gpu_problem: str | None
    """Why no GPU was listed, when nvidia-smi is there but lists none (its own words)."""
    cmake_args: str | None
    """The user's CMAKE_ARGS, when set."""


@dataclass(frozen=True)
class BuildChoice:
    backend: str
    """The ggml backend the build must have: CPU, CUDA, MTL, Vulkan, ..."""
    cmake_args: str
    """CMAKE_ARGS for pip; empty for the CPU build."""
    reason: str
    from_user: bool

    @property
    def label(self) -> str:
        return backend_label(self.backend)


def _which(program: str, env: Mapping[str, str]) -> str | None:
    return shutil.which(program, path=env.get("PATH", ""))


def _run_quick(argv: list[str], env: Mapping[str, str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=dict(env),
                              timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, (done.stdout + done.stderr).strip()


def read_machine(env: Mapping[str, str] | None = None) -> MachineFacts:
    """Look: nvcc on PATH (else $CUDA_HOME/bin, $CUDA_PATH/bin), `nvidia-smi -L`, the platform, CMAKE_ARGS."""
    env = os.environ if env is None else env
    suffix = ".exe" if platform.system() == "Windows" else ""
    nvcc = _which("nvcc", env)
    on_path = nvcc is not None
    for variable in ("CUDA_HOME", "CUDA_PATH"):
        candidate = Path(env[variable]) / "bin" / f"nvcc{suffix}" if env.get(variable) else None
        if nvcc is None and candidate is not None and os.access(candidate, os.X_OK):
            nvcc = str(candidate)
    release = None
    if nvcc:
        status, text = _run_quick([nvcc, "--version"], env)
        found = re.search(r"release (\d+(?:\.\d+)*)", text) if status == 0 else None
        release = found.group(1) if found else None
    gpus: tuple[str, ...] = ()
    gpu_problem = None
    smi = _which("nvidia-smi", env)
    if smi:
        status, text = _run_quick([smi, "-L"], env)
        gpus = tuple(line.strip() for line in text.splitlines() if line.startswith("GPU ")) if status == 0 else ()
        if not gpus:
            gpu_problem = (text.splitlines() or [f"exit status {status}"])[0]
    host = detect_host()
    machine = platform.machine()
    return MachineFacts(system=host.system, machine=machine, rosetta=host.machine != machine,
                        nvcc=nvcc, nvcc_on_path=on_path, nvcc_release=release, gpus=gpus, gpu_problem=gpu_problem,
                        cmake_args=env.get("CMAKE_ARGS", "").strip() or None)


def _user_backend(cmake_args: str) -> str:
    on = [_SWITCHES[name] for name, value in _CMAKE_DEFINE.findall(cmake_args)
          if name in _SWITCHES and value.upper() in ("ON", "1", "TRUE", "YES")]
    return on[0] if on else "CPU"


def choose_build(facts: MachineFacts) -> BuildChoice:
    """The build for this machine, with the reason in words."""
    if facts.cmake_args:
        backend = _user_backend(facts.cmake_args)
        return BuildChoice(backend, facts.cmake_args, f"CMAKE_ARGS={facts.cmake_args} set in your environment",
                           from_user=True)
    if facts.system == "Darwin" and facts.machine == "arm64":
        return BuildChoice("MTL", "-DSD_METAL=ON", "an Apple Silicon Mac", from_user=False)
    if facts.system == "Darwin" and facts.rosetta:
        return BuildChoice("CPU", "", "this Python runs under Rosetta (x86_64): an arm64 Python builds for Metal",
                           from_user=False)
    gpu = f"{len(facts.gpus)} NVIDIA GPU(s) ({facts.gpus[0]})" if facts.gpus else None
    nvcc = None
    if facts.nvcc and facts.nvcc_release:
        nvcc = f"nvcc {facts.nvcc_release} at {facts.nvcc}"
    if nvcc and gpu:
        args = "-DSD_CUDA=ON"
        if not facts.nvcc_on_path:
            args += f" -DCMAKE_CUDA_COMPILER={facts.nvcc}"
        return BuildChoice("CUDA", args, f"{nvcc} and {gpu}", from_user=False)
    if gpu:
        why = (f"{gpu} but nvcc at {facts.nvcc} does not run" if facts.nvcc else
               f"{gpu} but no nvcc: install the CUDA toolkit for a CUDA build")
    elif nvcc:
        smi = f"nvidia-smi: {facts.gpu_problem}" if facts.gpu_problem else "no nvidia-smi"
        why = f"{nvcc} but no NVIDIA GPU ({smi})"
    else:
        why = "no CUDA toolkit (nvcc) and no NVIDIA GPU found"
    return BuildChoice("CPU", "", why, from_user=False)


def requirement() -> str:
    """The [sdcpp] extra's requirement, read from the installed kitty-coreml's metadata."""
    try:
        requires = importlib.metadata.requires("kitty-coreml") or []
    except importlib.metadata.PackageNotFoundError:
        requires = []
    for line in requires:
        spec, _, marker = line.partition(";")
        if re.search(r"""extra\s*==\s*["']sdcpp["']""", marker):
            return spec.strip()
    return REQUIREMENT


def probe_fresh(env: Mapping[str, str] | None = None) -> tuple[SdcppBuild | None, str | None]:
    """(build, None) or (None, why not), probed in a new interpreter: after pip replaces the library, this
    process may still hold the old one."""
    status, text = _run_quick([sys.executable, "-c", _PROBE], os.environ if env is None else env)
    last = text.splitlines()[-1] if text else ""
    try:
        data = json.loads(last) if status == 0 else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return None, f"probing stable-diffusion.cpp in a fresh Python exited with {status}: {last or 'no output'}"
    if data.get("error"):
        return None, str(data["error"])
    devices = [SdcppDevice(**device) for device in data["devices"]]
    return SdcppBuild(package_version=data["package_version"], library_version=data["library_version"],
                      backends=list(data["backends"]), devices=devices), None


def _elapsed(seconds: float) -> str:
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes}m{rest:02d}s"


_NINJA_COUNTER = re.compile(r"^\[(\d+)/(\d+)\] ")


class _BuildOutput(Reporter):
    """pip's output shown as it comes, each line with the time since the build started, and kept whole
    so a failure can quote the lines that say what went wrong."""

    def __init__(self, inner: Reporter):
        super().__init__(inner.mode, inner.stream)
        self.started = time.monotonic()
        self.lines: list[str] = []

    def elapsed(self) -> str:
        return _elapsed(time.monotonic() - self.started)

    def output(self, label: str, text: str, tail: deque[str]) -> None:
        self.lines.append(text)
        super().output(f"{label} {self.elapsed()}", text, tail)
        counter = _NINJA_COUNTER.match(text)
        if self.mode == "ndjson" and counter:
            self.event({"event": "progress", "task": "build stable-diffusion.cpp", "done": int(counter[1]),
                        "total": int(counter[2]), "unit": "build steps",
                        "elapsed_s": round(time.monotonic() - self.started)})


# pip's own framing around a failed build: it says that the build failed, never why.
_PIP_FRAMING = re.compile(r"^(error: [a-z-]+$|note: |hint: |[×│╰]|ERROR: Failed|ERROR: Could not build|"
                          r"Failed to build|exit code:|full command:|cwd:|.*: finished with status ')")
_TROUBLE = re.compile(r"error|not found|could not find|could be found|no such file|cannot find", re.IGNORECASE)


def _why_failed(lines: list[str]) -> str:
    """The first lines that name a problem (CMake's, the compiler's), else pip's last lines. CMake puts
    the reason on the line after `CMake Error at …:`."""
    picked: list[str] = []
    for index, line in enumerate(lines):
        if len(picked) == 3:
            break
        if _PIP_FRAMING.match(line) or not _TROUBLE.search(line):
            continue
        if line.startswith("CMake Error") and index + 1 < len(lines):
            line = f"{line} {lines[index + 1]}"
        if not any(line in earlier for earlier in picked):
            picked.append(line)
    return " | ".join(picked or lines[-3:]) or "no output"


class SdcppStep(Step):
    name = "sdcpp"

    def __init__(self, settings: Settings, env: Mapping[str, str] | None = None, spec: str | None = None):
        self.settings = settings
        self.env = dict(os.environ if env is None else env)
        self.spec = spec or requirement()
        self.choice = choose_build(read_machine(self.env))
        self.title = f"build stable-diffusion.cpp for {self.choice.label}"

    @property
    def log_path(self) -> Path:
        return self.settings.home / "logs" / "sdcpp-build.log"

    def _assess(self) -> tuple[list[str], bool]:
        """(what is wrong, whether an installed package must be replaced rather than upgraded: one that
        does not load, or is built without the planned backend)."""
        build, why_not = probe_fresh(self.env)
        if build is None:
            return [f"{why_not} (in {sys.executable})"], _distribution_version() is not None
        if not _satisfies(self.spec, build.package_version):
            return [f"{DISTRIBUTION} {build.package_version} is installed; kitty-coreml needs {self.spec}"], False
        if self.choice.backend not in build.backends:
            built = ", ".join(backend_label(name) for name in build.backends)
            return [f"the installed stable-diffusion.cpp {build.package_version} is built for {built}, "
                    f"not {self.choice.label} ({self.choice.reason})"], True
        return [], False

    def problems(self) -> list[str]:
        return self._assess()[0]

    def _command(self, replace: bool) -> list[str]:
        argv = [sys.executable, "-m", "pip", "install", "--verbose"]  # --verbose: CMake's lines as progress
        if replace:
            # The package is there (so is its one dependency, pillow, which kitty-coreml needs too): rebuild
            # it alone, and not from pip's wheel cache, which would hand back the same wrong build.
            argv += ["--force-reinstall", "--no-deps", "--no-cache-dir"]
        elif self.choice.cmake_args:
            # pip caches a built wheel by the source archive alone, not by CMAKE_ARGS: a cached CPU wheel
            # would be taken for this build.
            argv.append("--no-cache-dir")
        return [*argv, self.spec]

    def _pip_env(self) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k != "CMAKE_ARGS"}
        if self.choice.cmake_args:
            env["CMAKE_ARGS"] = self.choice.cmake_args
        return env

    def plan(self) -> dict[str, Any]:
        choice = self.choice
        return {"python": sys.executable, "requirement": self.spec, "backend": choice.label,
                "cmake_args": choice.cmake_args, "cmake_args_from": "user" if choice.from_user else "machine",
                "reason": choice.reason, "env": {"CMAKE_ARGS": choice.cmake_args} if choice.cmake_args else {},
                "commands": [self._command(replace=self._assess()[1])]}

    def run(self, reporter: Reporter) -> str:
        argv = self._command(replace=self._assess()[1])
        chosen = "your CMAKE_ARGS win" if self.choice.from_user else "chosen for this machine"
        reporter.line(f"  building {self.spec} for {self.choice.label} with "
                      f"CMAKE_ARGS={self.choice.cmake_args or '(none)'} ({chosen}: {self.choice.reason}); "
                      "compiling takes minutes")
        output = _BuildOutput(reporter)
        try:
            run_program(argv, label="pip install", reporter=output, env=self._pip_env())
        except InstallError as exc:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            write_bytes(self.log_path, ("\n".join(output.lines) + "\n").encode("utf-8"))
            raise InstallError(f"building {self.spec} for {self.choice.label} failed after {output.elapsed()}: "
                               f"{_why_failed(output.lines)} (pip's whole output: {self.log_path})",
                               hint=self._what_to_install()) from exc
        build, why_not = probe_fresh(self.env)
        if build is None:
            raise InstallError(f"pip installed {self.spec} but it does not load: {why_not}",
                               hint=self._what_to_install())
        if self.choice.backend not in build.backends:
            raise InstallError(f"pip built {self.spec} without {self.choice.label} (its backends: "
                               f"{', '.join(build.backends)}): CMake did not enable it", hint=self._what_to_install())
        devices = ", ".join(f"{device.name} ({device.description})" for device in build.devices)
        return (f"{DISTRIBUTION} {build.package_version} built for {self.choice.label} in {output.elapsed()}; "
                f"devices: {devices or 'none'}")

    def _what_to_install(self) -> str:
        needs = ["a C++ compiler (g++ or clang++; on a Mac `xcode-select --install`)",
                 "cmake 3.21+ (pip fetches it when it can reach PyPI)"]
        needs += {"CUDA": ["the CUDA toolkit (nvcc) matching the NVIDIA driver"],
                  "Vulkan": ["the Vulkan SDK (glslc)"], "ROCm": ["ROCm's HIP SDK"]}.get(self.choice.backend, [])
        return f"install {', '.join(needs)}, then run `kitty-coreml install --sdcpp` again"


def _satisfies(spec: str, version: str) -> bool:
    """Whether `version` meets a requirement such as the extra's; a path or URL (a local checkout) is
    taken as meant for whatever is installed."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        wanted = Requirement(spec)
    except InvalidRequirement:
        return True
    if wanted.url or wanted.name.replace("_", "-").lower() != DISTRIBUTION:
        return True
    return wanted.specifier.contains(version, prereleases=True)


def _distribution_version() -> str | None:
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
