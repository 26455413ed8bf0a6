"""`systemsculpt-local-imagegen` as the host runs it: real subprocesses, the fake binary or the mock
backend, every answer checked by host_rules."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kitty_coreml.seeds import studio_seed
from kitty_coreml.studio import RatioEntry, write_manifest
from tests.conftest import KITTY, clean_env
from tests.fakes import make_resources
from tests.studio.harness import PROVIDER, Provider, argv_log, option, request, staged_image
from tests.studio.host_rules import check_outcome


@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_exits_0(mock: Provider, flag: str) -> None:
    proc = subprocess.run([PROVIDER, flag], capture_output=True, text=True, env=mock.env, cwd="/")
    assert proc.returncode == 0
    assert "Usage: systemsculpt-local-imagegen --request <request-json-path>" in proc.stdout
    assert proc.stderr == ""


def test_defaults_reach_the_binary(fake: Provider) -> None:
    answer = fake.run(request("a red cube", runId="run_abc")).answer
    argv = argv_log(fake)[-1]
    assert option(argv, "compute-units") == "cpuAndNeuralEngine"
    assert option(argv, "scheduler") == "pndm"
    assert "--disable-safety" in argv and "--reduce-memory" not in argv
    assert (option(argv, "step-count"), option(argv, "guidance-scale")) == ("20", "7.5")
    assert option(argv, "seed") == "2348168122" == str(answer["metadata"]["seed"])
    assert argv[-2:] == ["--", "a red cube"]
    metadata = answer["metadata"]
    assert (metadata["backend"], metadata["qualityPreset"], metadata["referenceInfluence"]) == \
        ("coreml_diffusion", "balanced", "balanced")
    assert metadata["safetyChecker"] is False and metadata["computeUnits"] == "cpuAndNeuralEngine"
    assert answer["modelId"].endswith(":cpuAndNeuralEngine")
    path = Path(answer["images"][0]["path"])
    assert path.is_relative_to(Path(fake.env["KITTY_COREML_HOME"]) / "store")


def test_seed_is_the_studio_rule_with_local_for_an_empty_run_id(provider: Provider) -> None:
    answer = provider.run(request("  a red cube  ", runId="   ")).answer
    assert answer["metadata"]["seed"] == studio_seed("a red cube", "local") == studio_seed("a red cube", "")


@pytest.mark.parametrize(("quality", "steps", "guidance"), [
    ("high", 32, 8.0), ("High-Detail", 32, 8.0), ("draft", 14, 7.0), ("fast", 14, 7.0), ("", 20, 7.5)])
def test_quality_presets(fake: Provider, quality: str, steps: int, guidance: float) -> None:
    metadata = fake.run(request(localOptions={"quality": quality})).answer["metadata"]
    assert (metadata["stepCount"], metadata["guidanceScale"]) == (steps, guidance)
    argv = argv_log(fake)[-1]
    assert (int(option(argv, "step-count")), float(option(argv, "guidance-scale"))) == (steps, guidance)


def test_unknown_quality_is_balanced_with_a_warning(mock: Provider) -> None:
    answer = mock.run(request(localOptions={"quality": "ultra"})).answer
    assert answer["metadata"]["qualityPreset"] == "balanced"
    assert any("'ultra'" in w for w in answer["warnings"])


def test_top_level_quality_alias_fields(mock: Provider) -> None:
    body = request(qualityPreset="high", referenceInfluence="low")
    del body["localOptions"]
    metadata = mock.run(body).answer["metadata"]
    assert (metadata["qualityPreset"], metadata["referenceInfluence"]) == ("high", "subtle")


@pytest.mark.parametrize(("steps_raw", "guidance_raw", "steps", "guidance"), [
    ("200", "99", 80, 30.0), ("-5", "-3", 2, 1.0), ("12.9", "4.25", 12, 4.25)])
def test_step_and_guidance_variables_are_clamped(fake: Provider, steps_raw: str, guidance_raw: str,
                                                 steps: int, guidance: float) -> None:
    answer = fake.run(request(localOptions={"quality": "high"}), extra_env={
        "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": steps_raw,
        "SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE": guidance_raw}).answer
    assert (answer["metadata"]["stepCount"], answer["metadata"]["guidanceScale"]) == (steps, guidance)
    argv = argv_log(fake)[-1]
    assert (int(option(argv, "step-count")), float(option(argv, "guidance-scale"))) == (steps, guidance)
    # -3 clamps to 0, which the bundle's batch-2 Unet cannot run: lifted to 1, with a warning
    assert any("whose Unet takes batch 2" in w for w in answer["warnings"]) == (guidance_raw == "-3")


def test_one_pndm_step_runs_as_two_with_a_warning(fake: Provider) -> None:
    answer = fake.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "0.5"}).answer
    assert option(argv_log(fake)[-1], "step-count") == "2" and answer["metadata"]["stepCount"] == 2
    assert any("1 step crashes the pndm scheduler" in w for w in answer["warnings"])
    answer = fake.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "1",
                                            "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER": "dpmpp"}).answer
    assert option(argv_log(fake)[-1], "step-count") == "1" and answer["warnings"] == []


def test_environment_switches_reach_the_binary(fake: Provider) -> None:
    fake.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS": "cpuAndGPU",
                                   "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER": "dpmpp",
                                   "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY": "off",
                                   "SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY": "yes"})
    argv = argv_log(fake)[-1]
    assert (option(argv, "compute-units"), option(argv, "scheduler")) == ("cpuAndGPU", "dpmpp")
    assert "--disable-safety" not in argv and "--reduce-memory" in argv


def test_strong_influence_stages_the_reference_at_the_models_size(fake: Provider, tmp_path: Path) -> None:
    reference = tmp_path / "reference.png"
    Image.new("RGB", (300, 900), (200, 30, 30)).save(reference)
    other = tmp_path / "second.png"
    Image.new("RGB", (64, 64)).save(other)
    answer = fake.run(request(aspectRatio="4:3", count=2, inputImages=[staged_image(reference), staged_image(other)],
                              localOptions={"referenceInfluence": "strong"})).answer
    argv = argv_log(fake)[-1]
    # The fake, like the binary, refuses a starting image whose size is not the encoder's input
    # (sampleInputShapeNotCorrect): that the run succeeded means the 300x900 reference was staged at 768x576.
    assert option(argv, "strength") == "0.35" and option(argv, "image").endswith(".png")
    assert [(i["width"], i["height"]) for i in answer["images"]] == [(768, 576)] * 2
    assert answer["metadata"]["referenceStrength"] == 0.35 and answer["metadata"]["usedReferenceImage"]
    assert any(other.name in w and "ignored" in w for w in answer["warnings"])


def test_img2img_needs_a_vae_encoder(fake: Provider, tmp_path: Path) -> None:
    bundle = make_resources(tmp_path / "no-encoder", encoder=False)
    reference = tmp_path / "reference.png"
    Image.new("RGB", (512, 512)).save(reference)
    outcome = fake.run(request(inputImages=[staged_image(reference)]),
                       extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(bundle)})
    assert "no VAEEncoder.mlmodelc" in outcome.error


@pytest.mark.parametrize(("body", "extra_env", "expected"), [
    (request(schema="studio.local-image-generation.request.v2"), {}, "schema: got 'studio.local-image-generation.request.v2'"),
    (request(prompt="   "), {}, "; allowed: non-empty text"),
    ('{"prompt": "a red cube",', {}, "invalid request JSON"),
    (request(prompt="a red\x00cube"), {}, "prompt: got 'a red\\x00cube'; allowed: text without NUL characters"),
    (request(count="many"), {}, "count: got 'many'"),
    ('["a list"]', {}, "request: got 'list'; allowed: a JSON object"),
    (request(), {"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "dalle"},
     "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND: got 'dalle'; allowed: coreml_diffusion, coreml, mock, procedural"),
    (request(), {"SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT": "lots"}, "SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT: got 'lots'"),
    (request(), {"SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS": "ane"}, "SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS: got 'ane'"),
    (request(), {"SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY": "maybe"}, "SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY"),
    (request(aspectRatio="21:9"), {}, "aspect ratio '21:9' is not in the Studio manifest"),
    (request(inputImages=[{"stagedPath": "/nonexistent/ref.png"}]), {}, "inputImages[0].stagedPath: got '/nonexistent/ref.png'"),
])
def test_fails_loud_in_one_line(fake: Provider, body: object, extra_env: dict[str, str], expected: str) -> None:
    outcome = fake.run(body, extra_env=extra_env)
    assert outcome.returncode == 1
    assert expected in outcome.error


def test_a_ratio_the_model_cannot_make_fails_loud(fake: Provider, bundles: dict[str, Path]) -> None:
    outcome = fake.run(request(aspectRatio="16:9"),
                       extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(bundles["1:1"])})
    assert "aspect ratio 16:9 cannot be made by" in outcome.error
    assert "native size is 512x512 (1:1)" in outcome.error
    assert argv_log(fake) == []  # refused before any engine started


def test_a_manifest_entry_pointing_at_the_wrong_shape_fails_loud(fake: Provider, bundles: dict[str, Path]) -> None:
    manifest = write_manifest(fake.workdir / "wrong.json", {"9:16": RatioEntry(bundles["16:9"], 576, 1024)})
    outcome = fake.run(request(aspectRatio="9:16"),
                       extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH": str(manifest.path)})
    assert "aspect ratio 9:16 cannot be made" in outcome.error and "1024x576 (16:9)" in outcome.error


def test_missing_binary_names_the_install_step(fake: Provider, tmp_path: Path) -> None:
    outcome = fake.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN": str(tmp_path / "nope")})
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN points to" in outcome.error and "does not exist" in outcome.error
    assert "kitty-coreml install" in outcome.error
    env = {k: v for k, v in fake.env.items() if k != "SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"}
    env["PATH"] = "/usr/bin:/bin"
    outcome = Provider("fake", env, fake.workdir).run(request())
    assert "StableDiffusionSample not found" in outcome.error and "kitty-coreml install" in outcome.error


def test_resource_path_override_and_home_expansion(fake: Provider, bundles: dict[str, Path]) -> None:
    home = bundles["1:1"].parent
    answer = fake.run(request(), extra_env={"HOME": str(home),
                                            "SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": "${HOME}/1x1"}).answer
    assert answer["metadata"]["resourcePathSource"] == "env_override"
    assert option(argv_log(fake)[-1], "resource-path") == str(bundles["1:1"])


def test_without_a_manifest_the_default_model_serves_its_own_ratio(fake: Provider, bundles: dict[str, Path]) -> None:
    env = {k: v for k, v in fake.env.items() if k != "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH"}
    unset = Provider("fake", {**env, "KITTY_COREML_RESOURCE_PATH": str(bundles["1:1"])}, fake.workdir)
    assert unset.run(request()).answer["metadata"]["resourcePathSource"] == "kitty_model"
    assert "no Core ML bundle for aspect ratio 4:3" in unset.run(request(aspectRatio="4:3")).error


def test_a_manifest_path_that_does_not_exist_fails_loud(fake: Provider) -> None:
    outcome = fake.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH": str(fake.workdir / "absent.json")})
    assert "Studio manifest" in outcome.error and "absent.json does not exist" in outcome.error
    assert "SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH" in outcome.error


def test_manifest_size_that_disagrees_with_the_model_is_a_warning(fake: Provider, bundles: dict[str, Path]) -> None:
    manifest = write_manifest(fake.workdir / "sizes.json", {"4:3": RatioEntry(bundles["4:3"], 1024, 768)})
    answer = fake.run(request(aspectRatio="4:3"),
                      extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH": str(manifest.path)}).answer
    assert (answer["images"][0]["width"], answer["images"][0]["height"]) == (768, 576)
    assert any("1024x768" in w and "768x576" in w for w in answer["warnings"])


def test_original_attention_bundle_runs_on_the_gpu_by_default(fake: Provider, tmp_path: Path) -> None:
    bundle = make_resources(tmp_path / "original", attention="original")
    answer = fake.run(request(), extra_env={"SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH": str(bundle)}).answer
    assert option(argv_log(fake)[-1], "compute-units") == "cpuAndGPU"
    assert any("original attention" in w for w in answer["warnings"])


def test_safety_drops_become_warnings(fake: Provider) -> None:
    safety_on = {"SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY": "false", "FAKE_SD_SAFETY_DROP": "1"}
    answer = fake.run(request(count=3), extra_env=safety_on).answer
    assert len(answer["images"]) == 2 and answer["metadata"]["imagesReturned"] == 2
    assert any("image 2 of 3 was removed by the safety checker" in w for w in answer["warnings"])
    outcome = fake.run(request(count=2), extra_env={**safety_on, "FAKE_SD_SAFETY_DROP": "all"})
    assert "the safety checker removed all 2 image(s)" in outcome.error


def test_engine_failure_is_one_line(fake: Provider) -> None:
    outcome = fake.run(request(), extra_env={"FAKE_SD_FAIL": "resources(\"boom\")"})
    assert "StableDiffusionSample failed (exit code 1)" in outcome.error and "boom" in outcome.error


def test_prompts_with_dashes_and_slashes_work(fake: Provider) -> None:
    answer = fake.run(request("-x ../../etc/passwd --seed=1 a/b")).answer
    assert answer["images"][0]["fileName"].endswith(".png")
    assert argv_log(fake)[-1][-2:] == ["--", "-x ../../etc/passwd --seed=1 a/b"]


def test_base64_output_within_the_budget(provider: Provider) -> None:
    answer = provider.run(request(count=2), extra_env={"KITTY_COREML_STUDIO_OUTPUT": "base64"}).answer
    assert all("base64" in image and "path" not in image for image in answer["images"])
    assert base64.b64decode(answer["images"][0]["base64"]).startswith(b"\x89PNG")


def test_base64_past_the_budget_returns_paths_with_a_warning(provider: Provider) -> None:
    answer = provider.run(request(count=2), extra_env={"KITTY_COREML_STUDIO_OUTPUT": "base64",
                                                       "KITTY_COREML_STUDIO_BASE64_BUDGET": "1000"}).answer
    assert all("path" in image and "base64" not in image for image in answer["images"])
    assert any("over the" in w and "budget" in w for w in answer["warnings"])


def test_ndjson_progress_on_stderr(provider: Provider) -> None:
    outcome = provider.run(request(count=2), extra_env={"KITTY_COREML_PROGRESS": "ndjson"})
    kinds = [event["kind"] for event in outcome.progress]
    assert "loading" in kinds and ("step" in kinds or "saved" in kinds)
    if provider.name == "fake":
        steps = [e for e in outcome.progress if e["kind"] == "step"]
        assert steps[-1]["step"] == steps[-1]["total"]


def test_progress_off_by_default(provider: Provider) -> None:
    assert provider.run(request()).stderr == ""


def test_mock_is_deterministic_per_prompt_run_and_index(mock: Provider) -> None:
    def pixels(**fields: object) -> list[bytes]:
        answer = mock.run(request(count=2, **fields)).answer
        return [Image.open(image["path"]).tobytes() for image in answer["images"]]

    first = pixels(runId="run_1")
    assert first == pixels(runId="run_1")
    assert first[0] != first[1]
    assert first != pixels(runId="run_2")


def test_mock_draws_each_ratio_at_its_own_size(mock: Provider) -> None:
    answer = mock.run(request(aspectRatio="9 : 16")).answer
    assert (answer["images"][0]["width"], answer["images"][0]["height"]) == (576, 1024)
    assert answer["metadata"]["requestedAspectRatio"] == "9:16"


def test_startup_imports_no_typer(mock: Provider) -> None:
    """The host starts the provider once per generation: its path must not load the CLI framework."""
    import sys

    path = mock.write_request(request())
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c",
                           "import sys; from kitty_coreml.studio import main; main(sys.argv[1:])",
                           "--request", str(path)], capture_output=True, text=True, env=mock.env, cwd="/")
    assert proc.returncode == 0, proc.stderr[-500:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "|" in line}
    assert "kitty_coreml.studio" in imported
    assert not {name for name in imported if name.split(".")[0] in ("typer", "click", "rich", "torch")}


def test_kitty_coreml_node_answers_the_same_way(mock: Provider) -> None:
    path = mock.write_request(request(runId="run_abc"))
    proc = subprocess.run([KITTY, "node", "--request", str(path)], capture_output=True, text=True,
                          env=mock.env, cwd="/", stdin=subprocess.DEVNULL)
    answer = check_outcome(proc.returncode, proc.stdout, proc.stderr).answer
    assert answer["metadata"]["seed"] == 2348168122
    proc = subprocess.run([KITTY, "node", "--request", str(mock.write_request("{"))], capture_output=True,
                          text=True, env=mock.env, cwd="/")
    assert "invalid request JSON" in check_outcome(proc.returncode, proc.stdout, proc.stderr).error


def test_arguments_are_checked(mock: Provider) -> None:
    assert "--request: got None" in mock.run(args=[]).error
    assert "argument: got '--verbose'" in mock.run(args=["--verbose"]).error
    assert "--request: got '/nonexistent.json'; allowed: a readable JSON file" in \
        mock.run(args=["--request", "/nonexistent.json"]).error
    path = mock.write_request(request())
    assert mock.run(args=[f"--request={path}"]).answer["images"]


def test_clean_env_has_no_studio_variables() -> None:
    """The harness starts from an environment without any SYSTEMSCULPT_ setting of the developer's."""
    assert not [k for k in clean_env() if k.startswith("SYSTEMSCULPT_")]
