"""`kitty-coreml install --sdcpp`: the CMAKE_ARGS chosen from the machine, the plan, "already done" on
this machine's real CPU build, and a failed build's message.

nvcc and nvidia-smi cannot run here (no NVIDIA GPU, and the real nvcc must not decide these tests), so
the tests write stand-ins that print what the real programs print (CUDA 13.0's `nvcc --version`,
`nvidia-smi -L` with a GPU, without a driver, and without a device) and put them first on PATH. pip and
the package build are real: a failing build is a local project whose in-tree build backend fails the
way CMake does, so nothing is fetched from an index."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from kitty_coreml.errors import InstallError
from kitty_coreml.install.progress import Reporter
from kitty_coreml.install.sdcpp import (
    BuildChoice, MachineFacts, SdcppStep, choose_build, probe_fresh, read_machine, requirement,
)
from kitty_coreml.settings import Settings
from tests.conftest import clean_env

CLI = Path(sys.executable).with_name("kitty-coreml")

NVCC_VERSION = """nvcc: NVIDIA (R) Cuda compiler driver
Copyright (c) 2005-2025 NVIDIA Corporation
Built on Wed_Aug_20_01:58:59_PM_PDT_2025
Cuda compilation tools, release 13.0, V13.0.88
Build cuda_13.0.r13.0/compiler.36424714_0"""
H200 = "GPU 0: NVIDIA H200 (UUID: GPU-4b7f5c1e-2d3a-4f6b-9c8d-0e1f2a3b4c5d)"
NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. Make sure that the "
             "latest NVIDIA driver is installed and running.")


def _program(folder: Path, name: str, text: str, status: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport sys\nprint({text!r})\nsys.exit({status})\n")
    path.chmod(0o755)
    return path


def fake_nvcc(folder: Path, *, runs: bool = True) -> Path:
    return _program(folder, "nvcc", NVCC_VERSION if runs else "nvcc: error while loading shared libraries",
                    0 if runs else 127)


def fake_nvidia_smi(folder: Path, state: str) -> Path:
    """state: gpu (one H200 listed), no-driver (exit 9), no-device (exit 6)."""
    text, status = {"gpu": (H200, 0), "no-driver": (NO_DRIVER, 9), "no-device": ("No devices were found", 6)}[state]
    return _program(folder, "nvidia-smi", text, status)


def _env(folder: Path, **extra: str) -> dict[str, str]:
    """Only the stand-ins' folder on PATH: the real nvcc of this machine stays out of the decision."""
    return {"PATH": str(folder), **extra}


def test_cuda_when_nvcc_and_a_gpu_are_both_there(tmp_path):
    nvcc = fake_nvcc(tmp_path / "bin")
    fake_nvidia_smi(tmp_path / "bin", "gpu")
    facts = read_machine(_env(tmp_path / "bin"))
    assert (facts.nvcc, facts.nvcc_on_path, facts.nvcc_release, facts.gpus) == (str(nvcc), True, "13.0", (H200,))
    choice = choose_build(facts)
    assert (choice.backend, choice.cmake_args, choice.from_user) == ("CUDA", "-DSD_CUDA=ON", False)
    assert choice.reason == f"nvcc 13.0 at {nvcc} and 1 NVIDIA GPU(s) ({H200})"


def test_nvcc_found_through_cuda_home_is_named_to_cmake(tmp_path):
    nvcc = fake_nvcc(tmp_path / "cuda" / "bin")
    fake_nvidia_smi(tmp_path / "bin", "gpu")
    choice = choose_build(read_machine(_env(tmp_path / "bin", CUDA_HOME=str(tmp_path / "cuda"))))
    assert choice.backend == "CUDA"
    assert choice.cmake_args == f"-DSD_CUDA=ON -DCMAKE_CUDA_COMPILER={nvcc}"


@pytest.mark.parametrize(("nvcc", "smi", "reason"), [
    ("runs", None, "but no NVIDIA GPU (no nvidia-smi)"),
    ("runs", "no-driver", f"but no NVIDIA GPU (nvidia-smi: {NO_DRIVER})"),
    ("runs", "no-device", "but no NVIDIA GPU (nvidia-smi: No devices were found)"),
    (None, "gpu", "but no nvcc: install the CUDA toolkit for a CUDA build"),
    ("broken", "gpu", "does not run"),
    (None, None, "no CUDA toolkit (nvcc) and no NVIDIA GPU found"),
])
def test_the_cpu_build_otherwise_says_what_was_missing(tmp_path, nvcc, smi, reason):
    folder = tmp_path / "bin"
    folder.mkdir()
    if nvcc:
        fake_nvcc(folder, runs=nvcc == "runs")
    if smi:
        fake_nvidia_smi(folder, smi)
    choice = choose_build(read_machine(_env(folder)))
    assert (choice.backend, choice.cmake_args) == ("CPU", "")
    assert reason in choice.reason


@pytest.mark.parametrize(("cmake_args", "backend"), [("-DSD_VULKAN=ON", "Vulkan"), ("-DSD_CUDA:BOOL=on", "CUDA"),
                                                     ("-DGGML_NATIVE=OFF", "CPU"), ("-DSD_CUDA=OFF", "CPU")])
def test_the_users_cmake_args_win_over_the_machine(tmp_path, cmake_args, backend):
    fake_nvcc(tmp_path / "bin")
    fake_nvidia_smi(tmp_path / "bin", "gpu")
    choice = choose_build(read_machine(_env(tmp_path / "bin", CMAKE_ARGS=f" {cmake_args} ")))
    assert (choice.backend, choice.cmake_args, choice.from_user) == (backend, cmake_args, True)
    assert choice.reason == f"CMAKE_ARGS={cmake_args} set in your environment"


def _mac(machine: str, rosetta: bool) -> MachineFacts:
    return MachineFacts(system="Darwin", machine=machine, rosetta=rosetta, nvcc=None, nvcc_on_path=False,
                        nvcc_release=None, gpus=(), gpu_problem=None, cmake_args=None)


def test_metal_on_apple_silicon_and_not_under_rosetta():
    metal = choose_build(_mac("arm64", False))
    assert (metal.backend, metal.label, metal.cmake_args) == ("MTL", "Metal", "-DSD_METAL=ON")
    rosetta = choose_build(_mac("x86_64", True))
    assert rosetta.backend == "CPU" and "Rosetta" in rosetta.reason


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "install", "--sdcpp", *args], env=env, capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL)


def _cli_env(tmp_path: Path, folder: Path, **extra: str) -> dict[str, str]:
    env = clean_env(KITTY_COREML_HOME=str(tmp_path / "home"), KITTY_COREML_PROGRESS="plain", **extra)
    env["PATH"] = f"{folder}{os.pathsep}{env['PATH']}"
    env.pop("CMAKE_ARGS", None)
    return env


def test_already_done_on_this_machines_cpu_build(tmp_path):
    folder = tmp_path / "bin"
    fake_nvidia_smi(folder, "no-device")
    env = _cli_env(tmp_path, folder)
    done = _cli(env, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["models"] == []
    assert [(s["name"], s["title"], s["status"]) for s in report["steps"]] == [
        ("sdcpp", "build stable-diffusion.cpp for CPU", "skipped")]
    assert "= build stable-diffusion.cpp for CPU: already done" in done.stderr
    assert "pip install" not in done.stderr, "nothing is built"
    text = _cli(env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.strip() == ("kitty-coreml is installed (no model): 0 step(s) done, 1 already done, "
                                   "0 not applicable here")
    verify = _cli(env, "--verify", "--json")
    assert verify.returncode == 0 and json.loads(verify.stdout)["steps"][0]["status"] == "ok"
    assert not (tmp_path / "home" / "models.json").exists(), "--sdcpp alone installs no model"


def test_plan_on_a_cuda_machine_rebuilds_the_cpu_build(tmp_path):
    folder = tmp_path / "bin"
    nvcc = fake_nvcc(folder)
    fake_nvidia_smi(folder, "gpu")
    env = _cli_env(tmp_path, folder)
    planned = _cli(env, "--dry-run", "--json")
    assert planned.returncode == 0, planned.stderr
    [step] = json.loads(planned.stdout)["steps"]
    assert step["status"] == "would_run"
    assert step["detail"] == (f"the installed stable-diffusion.cpp {version('stable-diffusion-cpp-python')} is "
                              f"built for CPU, not CUDA (nvcc 13.0 at {nvcc} and 1 NVIDIA GPU(s) ({H200}))")
    plan = step["plan"]
    assert (plan["backend"], plan["cmake_args"], plan["cmake_args_from"]) == ("CUDA", "-DSD_CUDA=ON", "machine")
    assert plan["env"] == {"CMAKE_ARGS": "-DSD_CUDA=ON"} and plan["requirement"] == requirement()
    assert Path(plan["python"]).samefile(sys.executable), "into the Python kitty-coreml runs in"
    assert plan["commands"] == [[plan["python"], "-m", "pip", "install", "--verbose", "--force-reinstall",
                                 "--no-deps", "--no-cache-dir", requirement()]]
    text = _cli(env, "--dry-run")
    assert (f"$ CMAKE_ARGS=-DSD_CUDA=ON {plan['python']} -m pip install --verbose --force-reinstall --no-deps "
            f"--no-cache-dir '{requirement()}'") in text.stdout
    verify = _cli(env, "--verify")
    assert verify.returncode == 10
    assert "the installation is broken: the installed stable-diffusion.cpp" in verify.stderr
    assert "built for CPU, not CUDA" in verify.stderr


def test_a_fresh_gpu_build_skips_the_wheel_cache_and_the_cpu_build_keeps_it(tmp_path):
    """pip caches a built wheel by its source archive alone: a cached CPU wheel must not stand in for a
    CUDA build; the default CPU build may use it (that is what makes reinstalling here take seconds)."""
    fake_nvidia_smi(tmp_path / "bin", "no-device")
    settings = Settings.from_env({"KITTY_COREML_HOME": str(tmp_path / "home")})
    step = SdcppStep(settings, env=_env(tmp_path / "bin"), spec="stable-diffusion-cpp-python>=0.5")
    assert step.problems() == [f"stable-diffusion-cpp-python {version('stable-diffusion-cpp-python')} is "
                               "installed; kitty-coreml needs stable-diffusion-cpp-python>=0.5"]
    assert step.plan()["commands"] == [[sys.executable, "-m", "pip", "install", "--verbose",
                                        "stable-diffusion-cpp-python>=0.5"]]
    vulkan = SdcppStep(settings, env=_env(tmp_path / "bin", CMAKE_ARGS="-DSD_VULKAN=ON"),
                       spec="stable-diffusion-cpp-python>=0.5")
    assert vulkan.plan()["commands"][0][-2:] == ["--no-cache-dir", "stable-diffusion-cpp-python>=0.5"]


FAILING_BACKEND = '''import os, sys
from pathlib import Path

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    Path(os.environ["SEEN_CMAKE_ARGS"]).write_text(os.environ.get("CMAKE_ARGS", ""))
    print("*** Configuring CMake...")
    print("-- The CXX compiler identification is GNU 12.2.0")
    print("-- Use CUDA as backend stable-diffusion")
    print("[1/2] Configuring ggml")
    print("CMake Error at ggml/src/ggml-cuda/CMakeLists.txt:3 (project):")
    print("  No CMAKE_CUDA_COMPILER could be found.")
    print("*** CMake configuration failed")
    sys.stdout.flush()
    sys.exit(1)
'''


def _failing_project(tmp_path: Path) -> Path:
    """A project pip cannot build: its in-tree backend fails as CMake does without the CUDA compiler.
    Named apart from the real package, so nothing could ever replace it."""
    project = tmp_path / "failing-build"
    (project / "backend").mkdir(parents=True)
    (project / "pyproject.toml").write_text('[build-system]\nrequires = []\nbuild-backend = "failing_cmake"\n'
                                            'backend-path = ["backend"]\n\n[project]\n'
                                            'name = "kitty-failing-sdcpp-build"\nversion = "0.4.7"\n')
    (project / "backend" / "failing_cmake.py").write_text(FAILING_BACKEND)
    return project


@pytest.mark.parametrize("mode", ["plain", "ndjson"])
def test_a_failed_build_quotes_cmake_and_says_what_to_install(tmp_path, mode):
    folder = tmp_path / "bin"
    fake_nvcc(folder)
    fake_nvidia_smi(folder, "gpu")
    seen = tmp_path / "cmake_args.txt"
    env = {**clean_env(), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "SEEN_CMAKE_ARGS": str(seen)}
    env["PATH"] = f"{folder}{os.pathsep}{env['PATH']}"
    env.pop("CMAKE_ARGS", None)
    home = tmp_path / "home"
    project = _failing_project(tmp_path)
    step = SdcppStep(Settings.from_env({"KITTY_COREML_HOME": str(home)}), env=env, spec=str(project))
    assert step.choice == BuildChoice("CUDA", "-DSD_CUDA=ON", step.choice.reason, from_user=False)
    shown = io.StringIO()
    with pytest.raises(InstallError) as failed:
        step.run(Reporter(mode, shown))
    assert seen.read_text() == "-DSD_CUDA=ON", "the build saw the CMAKE_ARGS chosen for this machine"
    log = home / "logs" / "sdcpp-build.log"
    assert re.fullmatch(rf"building {re.escape(str(project))} for CUDA failed after \d+m\d\ds: CMake Error at "
                        r"ggml/src/ggml-cuda/CMakeLists.txt:3 \(project\): No CMAKE_CUDA_COMPILER could be found\. "
                        rf"\(pip's whole output: {re.escape(str(log))}\)", failed.value.message), failed.value.message
    assert failed.value.hint == ("install a C++ compiler (g++ or clang++; on a Mac `xcode-select --install`), cmake "
                                 "3.21+ (pip fetches it when it can reach PyPI), the CUDA toolkit (nvcc) matching "
                                 "the NVIDIA driver, then run `kitty-coreml install --sdcpp` again")
    assert "*** CMake configuration failed" in log.read_text()
    events = shown.getvalue().splitlines()
    assert "building " in events[0] and "CMAKE_ARGS=-DSD_CUDA=ON (chosen for this machine: nvcc 13.0" in events[0]
    if mode == "plain":
        assert any(re.fullmatch(r"  pip install \d+m\d\ds\| CMake Error at .*", line) for line in events), events
    else:
        progress = [json.loads(line) for line in events if '"progress"' in line]
        assert progress and progress[0]["done"] == 1 and progress[0]["total"] == 2
        assert progress[0]["task"] == "build stable-diffusion.cpp" and isinstance(progress[0]["elapsed_s"], int)
    build, why_not = probe_fresh()
    assert why_not is None and "CPU" in build.backends, "the installed build is untouched"


SLOW_BACKEND = '''import os, subprocess, sys
from pathlib import Path

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    compiler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(os.environ["COMPILER_PID"]).write_text(str(compiler.pid))
    print("[1/90] Building CXX object ggml.o", flush=True)
    compiler.wait()
'''

INTERRUPTED_STEP = """import os, sys
from kitty_coreml.install.progress import Reporter
from kitty_coreml.install.sdcpp import SdcppStep
from kitty_coreml.settings import Settings
step = SdcppStep(Settings.from_env({"KITTY_COREML_HOME": sys.argv[1]}), spec=sys.argv[2])
try:
    step.run(Reporter("plain"))
except KeyboardInterrupt:
    sys.exit(130)
"""


def test_ctrl_c_during_the_build_leaves_no_compiler_running(tmp_path):
    """A SIGINT that reaches kitty-coreml alone (not the terminal's whole group) still ends pip's build
    and what it started below it."""
    import signal

    from tests.proc_utils import read_pid, wait_gone

    project = _failing_project(tmp_path)
    (project / "backend" / "failing_cmake.py").write_text(SLOW_BACKEND)
    folder = tmp_path / "bin"
    fake_nvidia_smi(folder, "no-device")
    pid_file = tmp_path / "compiler.pid"
    env = {**clean_env(), "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "COMPILER_PID": str(pid_file)}
    env["PATH"] = f"{folder}{os.pathsep}{env['PATH']}"
    env.pop("CMAKE_ARGS", None)
    driver = subprocess.Popen([sys.executable, "-c", INTERRUPTED_STEP, str(tmp_path / "home"), str(project)], env=env,
                              stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        compiler = read_pid(pid_file, timeout=120)
        driver.send_signal(signal.SIGINT)
        assert driver.wait(timeout=60) == 130, driver.stderr.read()
        wait_gone(compiler)
    finally:
        driver.kill()
        driver.wait()
