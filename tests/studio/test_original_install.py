"""A Studio user who used the original provider swaps the command in and changes nothing: a fake home laid
out as the original installer leaves it, the provider run as the host runs it, every answer checked by
the host's rules (host_rules.py)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kitty_coreml.pngmeta import read_text_chunks
from kitty_coreml.studio import ORIGINAL_MODEL_ID, RATIO_SIZES
from tests.conftest import KITTY, clean_env
from tests.studio.harness import (Provider, argv_log, option, original_bundle, original_home, original_manifest,
                                  original_provider, request, staged_image)

ORIGINAL_EXPORTS = {"SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS": "cpuAndNeuralEngine"}
"""What the original installer tells its user to export."""


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return original_home(tmp_path_factory.mktemp("original"))


@pytest.fixture
def home(tmp_path: Path, layout: Path) -> Path:
    """The original layout, plus this test's own kitty-coreml home (~/.kitty-coreml) kept apart."""
    home = tmp_path / "Users" / "studio-user"
    home.mkdir(parents=True)
    for name in ("gits", ".systemsculpt"):
        (home / name).symlink_to(layout / name)
    return home


@pytest.mark.parametrize("label", list(RATIO_SIZES))
def test_no_settings_finds_the_original_binary_and_every_ratio(tmp_path: Path, home: Path, label: str) -> None:
    provider = original_provider(tmp_path, home)
    answer = provider.run(request(aspectRatio=label)).answer
    assert (answer["images"][0]["width"], answer["images"][0]["height"]) == RATIO_SIZES[label]
    argv = argv_log(provider)[-1]
    assert option(argv, "resource-path") == str(original_bundle(home, label))
    metadata = answer["metadata"]
    assert (metadata["resourcePathSource"], metadata["sampleBinarySource"]) == \
        ("systemsculpt_install", "systemsculpt_install")
    units = "cpuAndNeuralEngine" if label == "1:1" else "cpuAndGPU"  # unset: original attention goes to the GPU
    assert option(argv, "compute-units") == units == metadata["computeUnits"]
    assert answer["modelId"] == f"{ORIGINAL_MODEL_ID}:{units}"
    assert Path(answer["images"][0]["path"]).is_relative_to(home / ".kitty-coreml" / "store" / "studio")


@pytest.mark.parametrize("label", ["1:1", "4:3", "9:16"])
def test_the_original_exports_run_original_attention_on_the_neural_engine(tmp_path: Path, home: Path,
                                                                        label: str) -> None:
    provider = original_provider(tmp_path, home, **ORIGINAL_EXPORTS)
    answer = provider.run(request(aspectRatio=label)).answer
    assert option(argv_log(provider)[-1], "compute-units") == "cpuAndNeuralEngine"
    assert answer["modelId"] == f"{ORIGINAL_MODEL_ID}:cpuAndNeuralEngine"
    slower = [w for w in answer["warnings"] if "original attention" in w]
    assert bool(slower) == (label != "1:1") and all("SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS" in w for w in slower)


def test_the_original_manifest_format_through_manifest_path(tmp_path: Path, home: Path) -> None:
    manifest = original_manifest(tmp_path / "model-manifest.json")
    provider = original_provider(tmp_path, home, SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH=str(manifest),
                                 **ORIGINAL_EXPORTS)
    answer = provider.run(request(aspectRatio="16:9")).answer
    assert option(argv_log(provider)[-1], "resource-path") == str(original_bundle(home, "16:9"))
    assert answer["metadata"]["resourcePathSource"] == "manifest"
    assert answer["metadata"]["manifestPath"] == "model-manifest.json"


def test_the_hosts_surrogate_cut_prompt(tmp_path: Path, home: Path) -> None:
    # The host cut the prompt at 7900 UTF-16 units with slice(), inside an emoji; JSON.stringify wrote the
    # lone high surrogate as \ud83d. Seed from node: 953624007 (tests/studio/test_seed_rule.py).
    provider = original_provider(tmp_path, home)
    body = json.dumps(request("x" * 7899 + "\ud83d", runId="run_1"))
    assert "\\ud83d" in body
    answer = provider.run(body).answer
    assert answer["metadata"]["seed"] == 953624007
    argv = argv_log(provider)[-1]
    assert option(argv, "seed") == "953624007"
    assert argv[-1] == "x" * 7899 + "\ufffd"  # what node's spawn hands the binary for a lone surrogate


def test_mock_backend_ignores_junk_references(tmp_path: Path) -> None:
    """The host's own mock e2e test: two 12-byte 'PNGs' (a signature and four bytes), 16:9, strong."""
    junk = []
    for name, tail in (("reference-a.png", b"\0\0\0\0"), ("reference-b.png", b"\1\1\1\1")):
        path = tmp_path / name
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + tail)
        junk.append({"hash": f"hash-{name}", "mimeType": "image/png", "sizeBytes": 12, "path": str(path)})
    provider = Provider("mock", clean_env(HOME=str(tmp_path), SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="mock"), tmp_path)
    body = request("Wide cinematic scene with practical lighting", aspectRatio="16:9", inputImages=junk,
                   runId="run_local_e2e_reference")
    del body["localOptions"]
    body.update(qualityPreset="balanced", referenceInfluence="strong")
    answer = provider.run(body).answer
    assert answer["modelId"] == "local/macos-procedural-v1"
    assert len(answer["images"]) == 1 and (answer["images"][0]["width"], answer["images"][0]["height"]) == (1024, 576)
    assert Path(answer["images"][0]["path"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    missing = provider.run(request(inputImages=[{"stagedPath": str(tmp_path / "gone.png")}])).answer
    assert missing["metadata"]["usedReferenceImage"] is False


def test_nothing_found_names_the_settings_that_fix_it(tmp_path: Path, home: Path) -> None:
    empty = tmp_path / "Users" / ("someone-with-a-very-long-home-folder-name-" * 6)
    empty.mkdir(parents=True)
    provider = original_provider(tmp_path, empty)
    outcome = provider.run(request(aspectRatio="4:3"))
    assert "no Core ML bundle for aspect ratio 4:3" in outcome.error
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH" in outcome.error and "kitty-coreml install" in outcome.error
    bundle = original_bundle(empty, "1:1")
    outcome = provider.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(bundle.parent)})
    assert len("[systemsculpt-local-imagegen] " + outcome.error) <= 420
    outcome = original_provider(tmp_path, home).run(request(), extra_env={
        "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(empty / "nope")})
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN points to" in outcome.error
    assert len("[systemsculpt-local-imagegen] " + outcome.error) <= 420


def _absolute_paths(text: str) -> list[str]:
    return re.findall(r"(?<![\w.:])/(?:[\w.+-]+/)+[\w.+-]*", text)


def test_no_local_path_in_png_chunks_or_answers(tmp_path: Path, home: Path) -> None:
    reference = home / "Pictures" / "reference.png"
    reference.parent.mkdir()
    Image.new("RGB", (640, 480), (10, 200, 30)).save(reference)
    provider = original_provider(tmp_path, home, **ORIGINAL_EXPORTS)
    mock = Provider("mock", clean_env(HOME=str(home), SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="mock"), tmp_path)
    answers = [provider.run(request("a red cube", aspectRatio="4:3", count=2)).answer,
               provider.run(request("a red cube", inputImages=[staged_image(reference)])).answer,
               mock.run(request("a red cube", inputImages=[staged_image(reference)])).answer]
    for answer in answers:
        shown = {**answer, "images": [{k: v for k, v in image.items() if k != "path"} for image in answer["images"]]}
        text = json.dumps(shown, ensure_ascii=False)
        assert str(home) not in text and str(tmp_path) not in text
        assert _absolute_paths(text) == [], text
        for image in answer["images"]:
            data = Path(image["path"]).read_bytes()
            for keyword, value in read_text_chunks(data).items():
                assert str(home) not in value and str(tmp_path) not in value, keyword
                assert _absolute_paths(value) == [], (keyword, value)
    sidecar = json.loads(Path(answers[0]["images"][0]["path"]).with_suffix(".json").read_text())
    assert sidecar["request"]["model"] == str(original_bundle(home, "4:3"))  # the full record stays local


def test_studio_images_are_swept_after_the_retention(tmp_path: Path, home: Path) -> None:
    provider = original_provider(tmp_path, home)
    first = Path(provider.run(request()).answer["images"][0]["path"])
    hour_ago = first.stat().st_mtime - 3601
    os.utime(first, (hour_ago, hour_ago))
    os.utime(first.with_suffix(".json"), (hour_ago, hour_ago))
    second = Path(provider.run(request("a blue cube")).answer["images"][0]["path"])
    assert not first.exists() and not first.with_suffix(".json").exists() and second.exists()
    kept = provider.run(request("a green cube"), extra_env={"KITTY_COREML_STUDIO_KEEP": "1"}).answer
    assert Path(kept["images"][0]["path"]).is_relative_to(home / ".kitty-coreml" / "store" / "images")
    assert kept["metadata"]["kept"] == "kitty_store"
    for path in (Path(kept["images"][0]["path"]), second):
        os.utime(path, (hour_ago, hour_ago))
    provider.run(request("a cube"))
    assert not second.exists()
    assert Path(kept["images"][0]["path"]).exists()  # the KITTY store is never swept
    refused = provider.run(request(), extra_env={"KITTY_COREML_STUDIO_RETENTION_S": "5"}).error
    assert "KITTY_COREML_STUDIO_RETENTION_S: got '5'; allowed: a finite number >= 60" in refused


def test_doctor_reports_what_discovery_found(tmp_path: Path, home: Path) -> None:
    proc = subprocess.run([KITTY, "doctor", "--json"], capture_output=True, text=True, env=clean_env(HOME=str(home)),
                          stdin=subprocess.DEVNULL)
    report = json.loads(proc.stdout)["studio"]
    assert report["sampleBinary"] == {"path": str(home / "gits/apps/ml-stable-diffusion/.build/release/"
                                                         "StableDiffusionSample"), "source": "systemsculpt_install"}
    for label in RATIO_SIZES:
        assert report["ratios"][label]["source"] == "systemsculpt_install"
        assert report["ratios"][label]["path"] == str(original_bundle(home, label))
    text = subprocess.run([KITTY, "doctor"], capture_output=True, text=True, env=clean_env(HOME=str(home)),
                          stdin=subprocess.DEVNULL).stdout
    assert "studio 16:9" in text and "the original installer" in text


def test_engine_failures_name_the_studio_settings(tmp_path: Path, home: Path) -> None:
    provider = original_provider(tmp_path, home, SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY="false")
    outcome = provider.run(request(count=2), extra_env={"FAKE_SD_SAFETY_DROP": "all"})
    assert "the safety checker removed all 2 image(s)" in outcome.error
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY=true" in outcome.error and "--no-safety" not in outcome.error
    outcome = provider.run(request(), extra_env={"FAKE_SD_FAIL": "resources(\"" + "x" * 900 + "\")"})
    line = outcome.stderr.splitlines()[-1]
    assert len(line) <= 420 and line.startswith("[systemsculpt-local-imagegen] StableDiffusionSample failed")
