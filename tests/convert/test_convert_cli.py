"""`kitty-coreml convert` end to end: the real console script supervising the torch2coreml double (and the
xcrun double) in a converter venv, on the project's smoke pipeline."""

from __future__ import annotations

import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from kitty_coreml.resources import inspect_resources
from tests.proc_utils import gone, wait_until

TINY = "sd-tiny"


def _stages_run(calls: list[list[str]]) -> list[str]:
    """What each torch2coreml run converted: the --convert-* flags, or bundle."""
    out = []
    for argv in calls:
        flags = [a[len("--convert-"):] for a in argv if a.startswith("--convert-")]
        latent = f"@{argv[argv.index('--latent-w') + 1]}x{argv[argv.index('--latent-h') + 1]}" if "--latent-h" in argv else ""
        out.append("bundle" if "--bundle-resources-for-swift-cli" in argv else "+".join(flags) + latent)
    return out


def _one_line_error(run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.startswith("kitty-coreml:")]
    assert len(lines) == 1, run.stderr
    assert "Traceback" not in run.stderr
    return lines[0]


def test_folder_at_two_sizes_registers_checked_variants_and_reruns_as_done(converter, smoke_folder):
    run = converter.run(str(smoke_folder), "--size", "512x512", "--size", "1024x576", "--json")
    assert run.returncode == 0, run.stderr
    report = run.json
    assert report["registered"] and report["needs_mac"] is None
    # The text encoder does not depend on the size: converted once; the rest once per size.
    assert _stages_run(converter.calls()) == [
        "text-encoder", "vae-decoder@64x64", "unet@64x64", "bundle", "vae-decoder@128x72", "unet@128x72", "bundle"]
    first = converter.calls()[0]
    # A folder reaches torch2coreml as a link in the work folder, never as a path its shell could split.
    assert first[first.index("--model-version") + 1] == "source"
    assert os.readlink(converter.home / "convert" / TINY / "source") == str(smoke_folder)
    assert first[first.index("--attention-implementation") + 1] == "SPLIT_EINSUM_V2"
    for line in ("[3/7] 512x512 Unet", "[6/7] 1024x576 Unet", "512x512 Unet| Converting unet to CoreML.."):
        assert line in run.stderr, line
    sizes = {(v["width"], v["height"]): Path(v["path"]) for v in converter.sizes(TINY)}
    assert set(sizes) == {(512, 512), (1024, 576)}
    for (width, height), folder in sizes.items():
        info = inspect_resources(folder)
        assert info.complete and (info.width, info.height) == (width, height) and info.attention == "split_einsum"
        assert folder.parent == converter.home / "models" / TINY
    # Nothing half-made is left in the work folder, and a second run converts nothing.
    assert not list((converter.home / "convert" / TINY).rglob("*.partial"))
    again = converter.run(str(smoke_folder), "--size", "512x512", "--size", "1024x576")
    assert again.returncode == 0, again.stderr
    assert len(converter.calls()) == 7
    assert again.stderr.count("already done") == 7


def test_hub_id_loads_from_the_hub_cache_and_a_missing_one_fails_in_one_line(converter, smoke_folder, tmp_path):
    missing = converter.run("example-org/tiny-sd", "--size", "512x512", extra_env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert missing.returncode == 5
    line = _one_line_error(missing)
    assert "text encoder failed: exit code 1" in line and "couldn't connect to 'https://huggingface.co'" in line
    assert TINY not in converter.registry()["models"]

    snapshot = tmp_path / "hub" / "models--example-org--tiny-sd" / "snapshots" / "0123abcd"
    shutil.copytree(smoke_folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0123abcd")
    run = converter.run("example-org/tiny-sd", "--size", "512x512", extra_env={"HF_HUB_CACHE": str(tmp_path / "hub")})
    assert run.returncode == 0, run.stderr
    assert all(argv[argv.index("--model-version") + 1] == "example-org/tiny-sd" for argv in converter.calls())
    variant = converter.sizes("tiny-sd")[0]
    assert (variant["width"], variant["height"]) == (512, 512)


def test_single_file_becomes_diffusers_first_then_converts(converter, smoke_folder, tmp_path):
    from safetensors.torch import save_file
    import torch

    checkpoint = tmp_path / "My Model v2.safetensors"
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(2)}, str(checkpoint),
              metadata={"kitty_test_pipeline": str(smoke_folder)})
    run = converter.run(str(checkpoint), "--size", "768x576")
    assert run.returncode == 0, run.stderr
    assert "single file to diffusers" in run.stderr
    work = converter.home / "convert" / "my-model-v2"
    assert (work / "diffusers" / "unet" / "diffusion_pytorch_model.fp16.safetensors").is_file()
    # torch2coreml is pointed at the diffusers folder by a path relative to the work folder (its cwd).
    assert {argv[argv.index("--model-version") + 1] for argv in converter.calls()} == {"diffusers"}
    info = inspect_resources(Path(converter.sizes("my-model-v2")[0]["path"]))
    assert (info.width, info.height) == (768, 576)


def test_unreadable_single_file_fails_naming_the_stage(converter, tmp_path):
    from safetensors.torch import save_file
    import torch

    checkpoint = tmp_path / "broken.safetensors"
    save_file({"w": torch.zeros(1)}, str(checkpoint))
    run = converter.run(str(checkpoint), "--size", "512x512")
    assert run.returncode == 5
    assert "single file to diffusers failed: exit code 1" in _one_line_error(run)
    assert converter.calls() == []
    assert not (converter.home / "convert" / "broken" / "diffusers").exists()


def test_failure_midway_keeps_finished_sub_models_and_resumes(converter, smoke_folder):
    failed = converter.run(str(smoke_folder), "--size", "512x512", extra_env={"FAKE_TORCH2COREML_FAIL_AT": "unet"})
    assert failed.returncode == 5
    line = _one_line_error(failed)
    assert "512x512 Unet failed: exit code 1" in line and "fake failure while converting unet" in line
    assert TINY not in converter.registry()["models"]
    work = converter.home / "convert" / TINY
    assert (work / "text_encoder" / ".kitty-stage.json").is_file()
    assert not (work / "512x512" / "unet").exists()
    resumed = converter.run(str(smoke_folder), "--size", "512x512")
    assert resumed.returncode == 0, resumed.stderr
    # The second run converted only the Unet (again, from scratch) and bundled.
    assert _stages_run(converter.calls()) == ["text-encoder", "vae-decoder@64x64", "unet@64x64", "unet@64x64", "bundle"]
    assert not (work / "512x512" / "unet.partial").exists()
    assert [v["width"] for v in converter.sizes(TINY)] == [512]


def test_ctrl_c_kills_the_converter_and_everything_under_it(converter, smoke_folder, tmp_path):
    pids_file = tmp_path / "pids"
    proc = converter.popen(str(smoke_folder), "--size", "512x512",
                           extra_env={"FAKE_TORCH2COREML_HANG_AT": "unet", "FAKE_TORCH2COREML_PIDS": str(pids_file)})
    wait_until(lambda: pids_file.exists() and pids_file.read_text().endswith("\n"), 120, "the Unet stage to hang")
    converter_pid, grandchild_pid = map(int, pids_file.read_text().split())
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    wait_until(lambda: gone(converter_pid) and gone(grandchild_pid), 20, "the converter's tree to end")
    assert TINY not in converter.registry()["models"]
    resumed = converter.run(str(smoke_folder), "--size", "512x512")
    assert resumed.returncode == 0, resumed.stderr
    assert "= [1/4] text encoder: already done" in resumed.stderr


def test_full_disk_is_refused_before_anything_runs(converter, tmp_path):
    checkpoint = tmp_path / "huge.safetensors"
    with open(checkpoint, "wb") as handle:  # sparse: as big as the disk can never hold, using no space
        handle.truncate(shutil.disk_usage(tmp_path).total + 1)
    run = converter.run(str(checkpoint), "--size", "512x512")
    assert run.returncode == 10
    line = _one_line_error(run)
    assert "not enough disk space to convert huge" in line and "GB free" in line
    assert converter.calls() == []
    assert not (converter.home / "models").exists()


def test_a_bundle_whose_compile_failed_is_not_registered_and_is_compiled_again(converter, smoke_folder):
    run = converter.run(str(smoke_folder), "--size", "512x512", extra_env={"FAKE_COREMLCOMPILER_FAIL": "unet"})
    # torch2coreml itself reports success: its compile step ignores coremlcompiler's exit status.
    assert "coremlcompiler: error" in run.stderr and "Bundled resources for the Swift CLI" in run.stderr
    assert run.returncode == 3
    line = _one_line_error(run)
    assert "the 512x512 bundle failed its check and was not registered" in line
    assert "Unet.mlmodelc/metadata.json is missing" in line
    assert TINY not in converter.registry()["models"]
    assert not (converter.home / "models" / TINY / "512x512").exists()
    fixed = converter.run(str(smoke_folder), "--size", "512x512")
    assert fixed.returncode == 0, fixed.stderr
    assert _stages_run(converter.calls())[-2:] == ["bundle", "bundle"]
    assert converter.sizes(TINY)[0]["width"] == 512


def test_a_failed_tokenizer_download_fails_the_check(converter, smoke_folder):
    run = converter.run(str(smoke_folder), "--size", "512x512", extra_env={"FAKE_TORCH2COREML_TOKENIZER_404": "1"})
    assert run.returncode == 3
    assert "vocab.json is missing or not JSON" in _one_line_error(run)
    assert TINY not in converter.registry()["models"]


def test_options_reach_torch2coreml_and_the_bundle_is_checked_for_them(converter, smoke_folder):
    run = converter.run(str(smoke_folder), "--size", "576x1024", "--name", "tiny-gpu", "--compute-units", "cpuAndGPU",
                        "--quantize-nbits", "6", "--chunk-unet", "--vae-encoder")
    assert run.returncode == 0, run.stderr
    calls = converter.calls()
    assert _stages_run(calls) == ["text-encoder", "vae-decoder@72x128", "vae-encoder@72x128", "unet@72x128", "bundle"]
    assert {argv[argv.index("--attention-implementation") + 1] for argv in calls[:-1]} == {"ORIGINAL"}
    unet = calls[3]
    assert "--chunk-unet" in unet and unet[unet.index("--quantize-nbits") + 1] == "6"
    folder = Path(converter.sizes("tiny-gpu")[0]["path"])
    assert {p.name for p in folder.glob("*.mlmodelc")} == {
        "TextEncoder.mlmodelc", "UnetChunk1.mlmodelc", "UnetChunk2.mlmodelc", "VAEDecoder.mlmodelc", "VAEEncoder.mlmodelc"}
    info = inspect_resources(folder)
    assert info.attention == "original" and info.has_encoder and (info.width, info.height) == (576, 1024)
    # Another attention is another conversion, not the kept one.
    again = converter.run(str(smoke_folder), "--size", "576x1024", "--name", "tiny-gpu", "--attention", "split-einsum",
                          "--quantize-nbits", "6", "--chunk-unet", "--vae-encoder")
    assert again.returncode == 0, again.stderr
    assert inspect_resources(folder).attention == "split_einsum"
    assert "already done" not in again.stderr


def test_off_a_mac_it_makes_the_packages_and_says_what_is_left(converter_off_mac, smoke_folder):
    run = converter_off_mac.run(str(smoke_folder), "--size", "512x512")
    assert run.returncode == 0, run.stderr
    assert "not finished here" in run.stdout and "needs macOS with Xcode" in run.stdout
    assert "bundle" not in _stages_run(converter_off_mac.calls())
    work = converter_off_mac.home / "convert" / TINY
    assert len(list(work.rglob("*.mlpackage"))) == 3
    assert TINY not in converter_off_mac.registry()["models"]


@pytest.mark.parametrize(("args", "named", "allowed"), [
    (["--size", "1000x576"], "--size: got '1000x576'", "multiple of 64"),
    (["--size", "big"], "--size: got 'big'", "WxH"),
    ([], "--size: got '(none)'", "at least one WxH"),
    (["--size", "512x512", "--quantize-nbits", "4"], "--quantize-nbits: got 4", "6 or 8"),
    (["--size", "512x512", "--attention", "fast"], "--attention: got 'fast'", "original, split-einsum"),
    (["--size", "512x512", "--name", "../up"], "--name: got '../up'", "a-z, 0-9"),
    (["--size", "512x512", "--refiner", "stabilityai/stable-diffusion-xl-refiner-1.0"], "--refiner:", "SDXL"),
])
def test_bad_options_fail_in_one_line_before_anything_runs(converter, smoke_folder, args, named, allowed):
    run = converter.run(str(smoke_folder), *args)
    assert run.returncode == 2
    line = _one_line_error(run)
    assert named in line and allowed in line
    assert converter.calls() == [] and not (converter.home / "convert").exists()


def test_bad_sources_fail_in_one_line(converter, tmp_path, smoke_folder):
    no_fp16 = tmp_path / "fp32-folder"
    shutil.copytree(smoke_folder, no_fp16)
    for weights in no_fp16.rglob("*.fp16.safetensors"):
        weights.rename(weights.with_name(weights.name.replace(".fp16", "")))
    (tmp_path / "notes.txt").write_text("x")
    for source, expected in [(str(tmp_path / "missing"), "SOURCE: got"), (str(tmp_path / "notes.txt"), ".ckpt"),
                             (str(no_fp16), "fp16 safetensors")]:
        run = converter.run(source, "--size", "512x512")
        assert run.returncode == 2
        assert expected in _one_line_error(run)
    assert converter.calls() == []


def test_a_missing_converter_venv_is_installed_from_the_clone_first(converter, smoke_folder, tmp_path):
    env = dict(converter.env, KITTY_COREML_CONVERTER_VENV=str(tmp_path / "not-there"))
    run = converter.run(str(smoke_folder), "--size", "512x512", extra_env=env)
    assert run.returncode == 10
    line = _one_line_error(run)
    assert "ml-stable-diffusion is not cloned" in line and "kitty-coreml install" in line
    assert json.loads(json.dumps(converter.registry()))["models"] == {}
    assert not os.path.exists(tmp_path / "not-there" / "kitty-converter.json")


def _xl_folder(smoke_folder: Path, dest: Path) -> Path:
    """The smoke folder dressed as SDXL: a second text encoder and the XL pipeline class, which is what
    the converter reads from it."""
    shutil.copytree(smoke_folder, dest)
    shutil.copytree(dest / "text_encoder", dest / "text_encoder_2")
    index = json.loads((dest / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "CLIPTextModelWithProjection"])
    (dest / "model_index.json").write_text(json.dumps(index))
    return dest


def test_sdxl_with_a_refiner_bundles_both_unets_and_both_text_encoders(converter, smoke_folder, tmp_path):
    base = _xl_folder(smoke_folder, tmp_path / "tiny-xl")
    refiner = _xl_folder(smoke_folder, tmp_path / "tiny-xl-refiner")
    run = converter.run(str(base), "--size", "1024x1024", "--refiner", str(refiner), "--attention", "original")
    assert run.returncode == 0, run.stderr
    calls = converter.calls()
    assert all("--xl-version" in argv for argv in calls)
    refiner_call = next(argv for argv in calls if argv[argv.index("--model-version") + 1] == "refiner-source")
    assert "--convert-unet" in refiner_call and "--refiner-version" not in refiner_call
    folder = Path(converter.sizes("tiny-xl")[0]["path"])
    assert {p.name for p in folder.glob("*.mlmodelc")} == {
        "TextEncoder.mlmodelc", "TextEncoder2.mlmodelc", "Unet.mlmodelc", "UnetRefiner.mlmodelc", "VAEDecoder.mlmodelc"}
    info = inspect_resources(folder)
    assert info.family == "sdxl" and info.has_refiner and (info.width, info.height) == (1024, 1024)


def test_a_folder_path_a_shell_would_split_converts(converter, smoke_folder, tmp_path):
    # torch2coreml compiles through os.system: the path must never reach that shell.
    odd = tmp_path / "My Models; echo pwned" / "tiny sd"
    shutil.copytree(smoke_folder, odd)
    run = converter.run(str(odd), "--size", "512x512", "--name", "odd")
    assert run.returncode == 0, run.stderr
    assert "pwned" not in run.stderr.replace(str(odd), "")
    assert inspect_resources(Path(converter.registry()["models"]["odd"]["path"])).complete


def test_a_stage_past_its_timeout_is_killed_with_its_tree(converter, smoke_folder, tmp_path):
    pids_file = tmp_path / "pids"
    run = converter.run(str(smoke_folder), "--size", "512x512", "--timeout", "20",
                        extra_env={"FAKE_TORCH2COREML_HANG_AT": "text_encoder", "FAKE_TORCH2COREML_PIDS": str(pids_file)})
    assert run.returncode == 6
    line = _one_line_error(run)
    assert "text encoder (torch2coreml) did not finish within 20 s and was killed" in line and "--timeout" in line
    assert TINY not in converter.registry()["models"]
    if pids_file.exists():  # it reached the hang (it does unless this machine is very slow): all of it is gone
        pids = [int(pid) for pid in pids_file.read_text().split()]
        wait_until(lambda: all(gone(pid) for pid in pids), 20, "the converter's tree to end")
