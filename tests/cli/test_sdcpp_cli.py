"""Single-file models through the real CLI on the real stable-diffusion.cpp engine: register, generate,
what lands in the store, and the errors a user meets."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from PIL import Image

from kitty_coreml.install.sd15_random import cached_random_sd15
from kitty_coreml.models.checkpoint import tensor_names

pytestmark = pytest.mark.timeout(900)


def _gguf(path: Path, names: list[str]) -> Path:
    """A GGUF v3 file as sd.cpp's converter writes them: one metadata entry, then the tensor infos."""
    def text(value: str) -> bytes:
        data = value.encode()
        return struct.pack("<Q", len(data)) + data

    body = b"GGUF" + struct.pack("<IQQ", 3, len(names), 1)
    body += text("general.architecture") + struct.pack("<I", 8) + text("stable-diffusion")
    for name in names:
        body += text(name) + struct.pack("<I", 2) + struct.pack("<QQ", 4, 4) + struct.pack("<IQ", 1, 0)
    path.write_bytes(body + b"\0" * 64)
    return path


@pytest.fixture(scope="module")
def model_file():
    return cached_random_sd15()


def test_a_safetensors_file_registers_generates_and_records_what_ran(kitty, model_file, home):
    added = kitty("models", "add", "sd15r", str(model_file), "--json")
    assert added.returncode == 0, added.stderr
    assert (added.json["format"], added.json["family"], added.json["width"]) == ("checkpoint", "sd", 512)

    run = kitty("generate", "a red fox in snow", "--model", "sd15r", "--width", "64", "--height", "64",
                "--steps", "2", "-n", "2", "--seed", "99", "--json", "--cold")
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["engine"] == "sdcpp"
    assert result["warnings"] == ["stable-diffusion.cpp has no PNDM sampler: ran dpmpp (DPM++ 2M) instead"]
    assert [(image["width"], image["height"]) for image in result["images"]] == [(64, 64), (64, 64)]
    for index, image in enumerate(result["images"]):
        with Image.open(image["path"]) as png:
            assert png.mode == "RGB" and png.size == (64, 64)
        sidecar = json.loads(Path(image["path"]).with_suffix(".json").read_text())
        assert sidecar["engine"] == "sdcpp" and sidecar["scheduler"] == "dpmpp"
        details = sidecar["engineDetails"]
        assert details["library"] == "stable-diffusion.cpp" and details["package_version"].startswith("0.4")
        assert (details["backend"], details["sampler"], details["scheduler"]) == ("CPU", "dpm++2m", "discrete")
        assert details["model_version"] == "SD 1.x"
        assert sidecar["seedRecord"]["seed"] == 99 + index  # image i is a one-image request with seed + i


def test_quantized_weights_through_the_setting(kitty, model_file):
    run = kitty("generate", "a red fox", "--model", str(model_file), "--width", "64", "--height", "64",
                "--steps", "1", "--scheduler", "dpmpp", "--json", "--cold",
                extra_env={"KITTY_COREML_SDCPP_WEIGHTS": "q4_0"})
    assert run.returncode == 0, run.stderr
    sidecar = json.loads(Path(run.json["images"][0]["path"]).with_suffix(".json").read_text())
    assert sidecar["engineDetails"]["weight_type"] == "q4_0"
    bad = kitty("generate", "x", "--model", str(model_file), extra_env={"KITTY_COREML_SDCPP_WEIGHTS": "q9"})
    assert bad.returncode != 0 and "KITTY_COREML_SDCPP_WEIGHTS: got 'q9'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_sizes_sd_cpp_cannot_make_and_engines_that_cannot_load_a_file_are_named(kitty, model_file):
    odd = kitty("generate", "x", "--model", str(model_file), "--width", "72")
    assert odd.returncode != 0
    assert "--width: got 72; allowed: a multiple of 64" in odd.stderr
    missing = kitty("generate", "x", "--model", str(model_file.with_name("no-such.gguf")))
    assert missing.returncode != 0 and f"model file {model_file.with_name('no-such.gguf')} does not exist" in missing.stderr
    wrong = kitty("generate", "x", "--model", str(model_file), "--engine", "diffusers")
    assert wrong.returncode != 0 and "needs a diffusers model" in wrong.stderr and "checkpoint" in wrong.stderr


def test_a_file_that_is_not_a_model_is_refused_when_added(kitty, tmp_path, home):
    garbage = tmp_path / "noise.safetensors"
    garbage.write_bytes(b"\xff" * 4096)
    run = kitty("models", "add", "noise", str(garbage))
    assert run.returncode != 0 and "is not a readable .safetensors model file" in run.stderr
    assert "Traceback" not in run.stderr
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    run = kitty("models", "add", "notes", str(notes))
    assert run.returncode != 0 and "not a model file" in run.stderr
    assert not (home / "models.json").exists() or "noise" not in (home / "models.json").read_text()


def test_a_model_sd_cpp_rejects_fails_the_generate_cleanly(kitty, tmp_path, home):
    # a header sd.cpp reads, naming a UNet tensor, with no data behind it
    header = json.dumps({"unet.conv_in.weight": {"dtype": "F16", "shape": [320, 4, 3, 3],
                                                  "data_offsets": [0, 23040]}}).encode()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(struct.pack("<Q", len(header)) + header)
    run = kitty("generate", "x", "--model", str(broken), "--width", "64", "--height", "64", "--cold")
    assert run.returncode != 0
    assert "cannot load" in run.stderr and str(broken) in run.stderr and "Traceback" not in run.stderr
    assert not list(home.rglob("*.png"))


def test_gguf_headers_give_the_family(tmp_path, kitty):
    sd = _gguf(tmp_path / "sd.gguf", ["model.diffusion_model.input_blocks.0.0.weight"])
    xl = _gguf(tmp_path / "xl.gguf", ["model.diffusion_model.input_blocks.0.0.weight",
                                      "conditioner.embedders.1.model.token_embedding.weight"])
    assert tensor_names(sd) == ["model.diffusion_model.input_blocks.0.0.weight"]
    assert kitty("models", "add", "small", str(sd), "--json").json["family"] == "sd"
    added = kitty("models", "add", "big", str(xl), "--json").json
    assert (added["family"], added["width"], added["height"]) == ("sdxl", 1024, 1024)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes(sd.read_bytes()[:40])
    run = kitty("models", "add", "cut", str(truncated))
    assert run.returncode != 0 and "not a readable .gguf model file" in run.stderr


@pytest.mark.parametrize("failure, said", [
    ("raise ImportError(\"No module named 'stable_diffusion_cpp'\")", "stable-diffusion.cpp is not installed"),
    ("raise OSError('libcudart.so.12: cannot open shared object file')", "its library does not load"),
], ids=["not-installed", "library-missing"])
def test_without_a_usable_sd_cpp_the_error_says_how_to_get_one(kitty, model_file, tmp_path, failure, said):
    # a package of that name first on the path that fails to import, as a missing or broken install does
    shadow = tmp_path / "shadow"
    (shadow / "stable_diffusion_cpp").mkdir(parents=True)
    (shadow / "stable_diffusion_cpp" / "__init__.py").write_text(failure + "\n")
    run = kitty("generate", "x", "--model", str(model_file), "--width", "64", "--height", "64", "--cold",
                extra_env={"PYTHONPATH": str(shadow)})
    assert run.returncode != 0 and "Traceback" not in run.stderr
    [line] = [line for line in run.stderr.splitlines() if "error:" in line]
    assert said in line and "kitty-coreml install --sdcpp" in line


def test_models_smoke_sdcpp_registers_the_machines_random_sd15(kitty, model_file):
    run = kitty("models", "smoke", "--sdcpp", "--json")
    assert run.returncode == 0, run.stderr
    assert (run.json["name"], run.json["format"], run.json["path"]) == ("smoke-sd15", "checkpoint", str(model_file))
    listed = kitty("models", "list", "--json")
    assert "smoke-sd15" in listed.stdout
