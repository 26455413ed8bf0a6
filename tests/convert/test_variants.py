"""Converted size variants in use: `install --ratios` builds Studio's non-square ratios and writes the
manifest, the Studio provider's ratio request then runs on the converted bundle, and a KITTY
width/height request picks the variant of that size."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from kitty_coreml.convert import pick_variant
from kitty_coreml.studio import read_manifest
from tests.conftest import BIN_DIR, KITTY
from tests.fakes import make_resources, write_fake_binary

SD21 = "stabilityai/stable-diffusion-2-1-base"


def _hub_cache(root: Path, repo: str, folder: Path) -> Path:
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / "feedface"
    shutil.copytree(folder, snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("feedface")
    return root


def test_install_ratios_builds_studio_ratios_and_the_provider_uses_them(converter, smoke_folder, tmp_path):
    square = make_resources(converter.home / "models" / "sd21-palettized")
    (converter.home / "models.json").write_text(json.dumps({"default": "sd21-palettized", "models": {
        "sd21-palettized": {"path": str(square), "format": "coreml", "family": "sd", "width": 512, "height": 512}}}))
    manifest = tmp_path / "studio-manifest.json"
    env = {"HF_HUB_CACHE": str(_hub_cache(tmp_path / "hub", SD21, smoke_folder)),
           "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH": str(manifest)}
    proc = subprocess.run([KITTY, "install", "--ratios", "--json"], capture_output=True, text=True, timeout=600,
                          env={**converter.env, **env}, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    # The original builder's recipe: the weights Apple converted from, ORIGINAL attention, 6-bit palettes.
    calls = converter.calls()
    assert {argv[argv.index("--model-version") + 1] for argv in calls} == {SD21}
    assert {argv[argv.index("--attention-implementation") + 1] for argv in calls if "--convert-unet" in argv} == {"ORIGINAL"}
    assert all(argv[argv.index("--quantize-nbits") + 1] == "6" for argv in calls if "--convert-unet" in argv)
    ratios = read_manifest(manifest).ratios
    assert set(ratios) == {"1:1", "4:3", "3:4", "16:9", "9:16"}
    assert ratios["1:1"].resource_path == square
    wide = ratios["16:9"]
    assert (wide.width, wide.height) == (1024, 576)
    assert wide.resource_path == converter.home / "models" / "sd21-palettized-ratios" / "1024x576"
    assert wide.extra["attentionImplementation"] == "ORIGINAL" and wide.extra["latentWidth"] == 128

    request = tmp_path / "request.json"
    request.write_text(json.dumps({"schema": "studio.local-image-generation.request.v1", "prompt": "a red cube",
                                   "count": 1, "aspectRatio": "16:9", "runId": "run_abc"}))
    studio_env = {**converter.env, **env, "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(write_fake_binary(tmp_path))}
    provider = subprocess.run([str(BIN_DIR / "systemsculpt-local-imagegen"), "--request", str(request)],
                              capture_output=True, text=True, timeout=120, env=studio_env, cwd="/",
                              stdin=subprocess.DEVNULL)
    assert provider.returncode == 0, provider.stderr
    image = json.loads(provider.stdout)["images"][0]
    assert (image["width"], image["height"]) == (1024, 576)


def test_a_kitty_size_request_picks_the_converted_variant(converter, smoke_folder, tmp_path):
    run = converter.run(str(smoke_folder), "--size", "512x512", "--size", "1024x768")
    assert run.returncode == 0, run.stderr
    registry = converter.home / "models.json"
    assert pick_variant(registry, "sd-tiny", 768, 1024) is None
    variant = pick_variant(registry, "sd-tiny", 1024, 768)
    assert variant is not None and variant.path == converter.home / "models" / "sd-tiny" / "1024x768"
    proc = subprocess.run([KITTY, "generate", "a red cube", "--model", str(variant.path), "--engine", "sample",
                           "--steps", "2", "--json"], capture_output=True, text=True, timeout=120,
                          env={**converter.env, "KITTY_COREML_SAMPLE_BIN": str(write_fake_binary(tmp_path))},
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    image = json.loads(proc.stdout)["images"][0]
    assert (image["width"], image["height"]) == (1024, 768)


def test_install_verify_checks_converted_variants(converter, smoke_folder):
    assert converter.run(str(smoke_folder), "--size", "512x512").returncode == 0

    def verify_step():
        proc = subprocess.run([KITTY, "install", "--verify", "--json"], capture_output=True, text=True, timeout=120,
                              env=converter.env, stdin=subprocess.DEVNULL)
        return next(s for s in json.loads(proc.stdout)["steps"] if s["name"] == "converted-variants")

    assert verify_step()["status"] == "ok"
    shutil.rmtree(converter.home / "models" / "sd-tiny" / "512x512" / "Unet.mlmodelc")
    broken = verify_step()
    assert broken["status"] == "broken"
    assert broken["problems"] == [f"sd-tiny 512x512 ({converter.home / 'models' / 'sd-tiny' / '512x512'}) lacks "
                                  "Unet.mlmodelc (or UnetChunk1.mlmodelc + UnetChunk2.mlmodelc)"]
