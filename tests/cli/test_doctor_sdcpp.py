"""`kitty-coreml doctor` on stable-diffusion.cpp: the check worded from probe results (SdcppBuild is a
plain dataclass, so a CUDA or Metal build is built here as ggml reports one), and the real CPU build of
this machine through the real CLI. nvidia-smi and nvcc are stand-ins first on PATH (see
tests/install/test_sdcpp_step.py), so this machine's own nvcc does not decide what doctor expects."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from kitty_coreml.doctor import SDCPP_FIX, sdcpp_check
from kitty_coreml.engines.sdcpp_probe import SdcppBuild, SdcppDevice
from kitty_coreml.install.sdcpp import choose_build, read_machine
from tests.install.test_sdcpp_step import H200, fake_nvcc, fake_nvidia_smi

GIB = 2**30
CPU = SdcppDevice(name="CPU", description="AMD EPYC", kind="cpu", free_bytes=20 * GIB, total_bytes=24 * GIB)
CUDA0 = SdcppDevice(name="CUDA0", description="NVIDIA H200", kind="gpu", free_bytes=139 * GIB, total_bytes=140 * GIB)
MTL0 = SdcppDevice(name="MTL0", description="Apple M3 Max", kind="gpu", free_bytes=48 * GIB, total_bytes=48 * GIB)


def _build(backends: list[str], devices: list[SdcppDevice]) -> SdcppBuild:
    return SdcppBuild(package_version="0.4.7", library_version="unknown", backends=backends, devices=devices)


def test_a_cpu_build_lists_its_version_backends_and_device_memory():
    check = sdcpp_check(_build(["CPU"], [CPU]))
    assert check == {"name": "stable-diffusion.cpp", "ok": True,
                     "detail": "stable-diffusion-cpp-python 0.4.7; backends CPU; devices: CPU (AMD EPYC, cpu) "
                               "20.0 GiB free of 24.0 GiB"}


def test_a_cuda_build_that_sees_its_gpu_is_fine():
    build = SdcppBuild(package_version="0.4.7", library_version="master-4ff2c8c", backends=["CUDA", "CPU"],
                       devices=[CUDA0, CPU])
    check = sdcpp_check(build)
    assert check["ok"] and "warning" not in check
    assert check["detail"] == ("stable-diffusion-cpp-python 0.4.7, sd.cpp master-4ff2c8c; backends CUDA, CPU; devices: "
                               "CUDA0 (NVIDIA H200, gpu) 139.0 GiB free of 140.0 GiB; CPU (AMD EPYC, cpu) 20.0 GiB "
                               "free of 24.0 GiB")
    assert build.device == "cuda"


def test_a_cuda_build_without_a_usable_gpu_is_a_warning_not_a_failure():
    check = sdcpp_check(_build(["CUDA", "CPU"], [CPU]))
    assert check["ok"] is True
    assert check["warning"] == "built for CUDA but no CUDA device is usable: sd.cpp will run on the CPU"
    assert "nvidia-smi" in check["fix"]


def test_metal_is_named_metal_though_ggml_registers_it_as_mtl():
    seen = sdcpp_check(_build(["MTL", "BLAS", "CPU"], [MTL0, CPU]))
    assert "backends Metal, BLAS, CPU" in seen["detail"] and "warning" not in seen
    assert _build(["MTL", "CPU"], [MTL0, CPU]).device == "mps"
    unseen = sdcpp_check(_build(["MTL", "CPU"], [CPU]))
    assert unseen["warning"] == "built for Metal but no Metal device is usable: sd.cpp will run on the CPU"


def test_a_cpu_build_on_a_cuda_machine_says_how_to_rebuild(tmp_path):
    nvcc = fake_nvcc(tmp_path / "bin")
    fake_nvidia_smi(tmp_path / "bin", "gpu")
    planned = choose_build(read_machine({"PATH": str(tmp_path / "bin")}))
    check = sdcpp_check(_build(["CPU"], [CPU]), planned=planned)
    assert check["ok"] is True
    assert check["warning"] == (f"built without CUDA, which this machine has (nvcc 13.0 at {nvcc} and 1 NVIDIA GPU(s) "
                                f"({H200})): sd.cpp will run on the CPU")
    assert check["fix"] == "kitty-coreml install --sdcpp (rebuilds it for CUDA)"
    assert "warning" not in sdcpp_check(_build(["CUDA", "CPU"], [CUDA0, CPU]), planned=planned)


def test_not_installed_says_the_fix():
    check = sdcpp_check(None, "stable-diffusion.cpp is not installed (No module named 'stable_diffusion_cpp')")
    assert check == {"name": "stable-diffusion.cpp", "ok": False, "fix": SDCPP_FIX,
                     "detail": "stable-diffusion.cpp is not installed (No module named 'stable_diffusion_cpp')"}
    assert "pip install 'kitty-coreml[sdcpp]'" in SDCPP_FIX and "kitty-coreml install --sdcpp" in SDCPP_FIX


def _no_gpu(tmp_path: Path, env: dict[str, str]) -> dict[str, str]:
    fake_nvidia_smi(tmp_path / "smi", "no-device")
    return {**env, "PATH": f"{tmp_path / 'smi'}:{env['PATH']}"}


def test_doctor_reports_this_machines_real_build(kitty, env, tmp_path):
    env = _no_gpu(tmp_path, env)
    run = kitty("doctor", "--json", extra_env=env)
    assert run.returncode == 0, run.stderr
    report = run.json
    entry = report["sdcpp"]
    assert entry["available"] is True and entry["reason"] is None and entry["installer_would_build"] == "CPU"
    build = entry["build"]
    assert build["package_version"] == version("stable-diffusion-cpp-python")
    assert build["backends"][-1] == "CPU" and build["device"] == "cpu"
    [cpu] = [device for device in build["devices"] if device["kind"] == "cpu"]
    assert 0 < cpu["free_bytes"] <= cpu["total_bytes"]
    [check] = [c for c in report["checks"] if c["name"] == "stable-diffusion.cpp"]
    assert check["ok"] and "warning" not in check
    assert check["detail"].startswith(f"stable-diffusion-cpp-python {build['package_version']}; backends CPU; "
                                      f"devices: CPU ({cpu['description']}, cpu) ")
    text = kitty("doctor", extra_env=env)
    assert f"[ok  ] stable-diffusion.cpp: {check['detail']}\n" in text.stdout


def test_doctor_warns_that_this_cpu_build_could_use_a_cuda_gpu(kitty, env, tmp_path):
    fake_nvcc(tmp_path / "cuda")
    fake_nvidia_smi(tmp_path / "cuda", "gpu")
    run = kitty("doctor", extra_env={**env, "PATH": f"{tmp_path / 'cuda'}:{env['PATH']}"})
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("[warn] stable-diffusion.cpp: "))
    assert lines[at + 1].startswith("       warning: built without CUDA, which this machine has (nvcc 13.0 at ")
    assert lines[at + 2] == "       fix: kitty-coreml install --sdcpp (rebuilds it for CUDA)"


def test_doctor_without_sdcpp_names_the_fix_and_still_passes(env, tmp_path):
    """The real CLI in a Python where stable_diffusion_cpp cannot be imported (None in sys.modules is how
    Python itself blocks an import); optional like diffusers: the exit status still follows `ready`."""
    blocked = ("import sys; sys.modules['stable_diffusion_cpp'] = None; sys.argv = ['kitty-coreml', 'doctor', '--json']; "
               "from kitty_coreml.cli import main; main()")
    run = subprocess.run([sys.executable, "-c", blocked], env=_no_gpu(tmp_path, env), capture_output=True, text=True,
                         timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout)
    assert report["ready"], "the fake Core ML binary and model are ready"
    assert report["sdcpp"]["available"] is False and report["sdcpp"]["build"] is None
    [check] = [c for c in report["checks"] if c["name"] == "stable-diffusion.cpp"]
    assert check["ok"] is False and check["fix"] == SDCPP_FIX
    assert check["detail"].startswith("stable-diffusion.cpp is not installed (")


def test_a_single_file_model_with_the_build_is_ready_for_the_sdcpp_engine(kitty, env, tmp_path):
    """A safetensors file whose header names an SD UNet tensor (nothing is loaded, so one tiny tensor
    does), registered with `models add`: doctor counts it ready, and exits 0, only because sd.cpp is here."""
    header = json.dumps({"model.diffusion_model.input_blocks.0.0.weight":
                         {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}).encode()
    model = tmp_path / "tiny-sd15.safetensors"
    model.write_bytes(len(header).to_bytes(8, "little") + header + b"\0\0")
    env = {**_no_gpu(tmp_path, env), "KITTY_COREML_SAMPLE_BIN": "", "KITTY_COREML_RESOURCE_PATH": ""}
    added = kitty("models", "add", "tiny", str(model), extra_env=env)
    assert added.returncode == 0, added.stderr
    run = kitty("doctor", "--json", extra_env=env)
    assert run.returncode == 0, run.stderr
    assert run.json["ready"] == ["sdcpp engine with model tiny"]
