"""The Studio contract's pieces in-process: request parsing, presets, the environment, the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kitty_coreml.errors import ConfigError, InvalidRequest
from kitty_coreml.settings import StudioSettings
from kitty_coreml.studio import (INFLUENCE_STRENGTH, MANIFEST_SCHEMA, QUALITY_PRESETS, RatioEntry, mock_size,
                                 normalize_influence, normalize_quality, parse_request, read_manifest,
                                 write_manifest)
from tests.fakes import make_resources


def test_presets_match_the_host() -> None:
    assert QUALITY_PRESETS == {"fast": (14, 7.0), "balanced": (20, 7.5), "high": (32, 8.0)}
    assert INFLUENCE_STRENGTH == {"subtle": 0.75, "balanced": 0.55, "strong": 0.35}


@pytest.mark.parametrize(("raw", "preset"), [("draft", "fast"), ("HIGH_DETAIL", "high"), ("detail", "high"),
                                             (" Balanced ", "balanced"), (None, "balanced"), ("", "balanced")])
def test_quality_aliases(raw: object, preset: str) -> None:
    assert normalize_quality(raw) == (preset, None)


@pytest.mark.parametrize(("raw", "influence"), [("low", "subtle"), ("high", "strong"), ("Strong", "strong"),
                                                (None, "balanced")])
def test_influence_aliases(raw: object, influence: str) -> None:
    assert normalize_influence(raw) == (influence, None)


@pytest.mark.parametrize(("count", "expected"), [(None, 1), (0, 1), (-3, 1), (2.9, 2), (99, 8), ("3", 3)])
def test_count_is_floored_and_clamped(count: object, expected: int) -> None:
    assert parse_request({"prompt": "x", "count": count}).count == expected


@pytest.mark.parametrize("count", [True, "many", float("nan"), [2]])
def test_count_that_is_no_number_is_refused(count: object) -> None:
    with pytest.raises(InvalidRequest, match="count"):
        parse_request({"prompt": "x", "count": count})


def test_request_fields_are_trimmed_and_images_collected(tmp_path: Path) -> None:
    parsed = parse_request({"schema": "", "prompt": "  a cat  ", "runId": " run_1 ", "aspectRatio": " 16 : 9 ",
                            "inputImages": ["not an object", {"path": "/a.png"}, {"stagedPath": "/b.png"}, {}]})
    assert (parsed.prompt, parsed.run_id, parsed.aspect_ratio) == ("a cat", "run_1", "16:9")
    assert parsed.input_images == [Path("/a.png"), Path("/b.png")]
    assert any("inputImages[3]" in w for w in parsed.warnings)
    assert any("ignored: b.png" in w for w in parsed.warnings)


@pytest.mark.parametrize(("body", "field"), [
    ({"prompt": 42}, "prompt"), ({"prompt": "x", "schema": 1}, "schema"), ({"prompt": "x", "runId": 5}, "runId"),
    ({"prompt": "x", "inputImages": "a.png"}, "inputImages"), ({"prompt": "x", "aspectRatio": 1.5}, "aspectRatio"),
    ({"prompt": "x" * 8000}, "prompt")])
def test_bad_fields_are_named(body: dict, field: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        parse_request(body)
    assert caught.value.field == field


def test_mock_sizes() -> None:
    assert mock_size("16:9") == (1024, 576)
    assert mock_size("2:1") == (1024, 512)
    with pytest.raises(InvalidRequest, match="aspectRatio"):
        mock_size("wide")


def test_environment_defaults() -> None:
    studio = StudioSettings.from_env({"KITTY_COREML_HOME": "/srv/kitty"})
    assert (studio.backend, studio.compute_units, studio.scheduler) == ("coreml_diffusion", "cpuAndNeuralEngine", "pndm")
    assert (studio.disable_safety, studio.reduce_memory, studio.timeout_ms) == (True, False, 480000)
    assert (studio.step_count, studio.guidance_scale, studio.output) == (None, None, "path")
    assert studio.manifest_path == Path("/srv/kitty/studio-manifest.json")


@pytest.mark.parametrize(("raw", "backend"), [("coreml", "coreml_diffusion"), (" COREML_DIFFUSION ", "coreml_diffusion"),
                                              ("procedural", "mock"), ("Mock", "mock"), ("", "coreml_diffusion")])
def test_backend_aliases(raw: str, backend: str) -> None:
    assert StudioSettings.from_env({"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": raw}).backend == backend


@pytest.mark.parametrize(("raw", "expected"), [("1", 30000), ("45000.9", 45000), ("99999999", 1800000), ("", 480000)])
def test_timeout_is_floored_and_clamped(raw: str, expected: int) -> None:
    assert StudioSettings.from_env({"SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS": raw}).timeout_ms == expected


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("yes", True), ("ON", True), ("0", False), ("off", False),
                                            ("No", False)])
def test_booleans(raw: str, value: bool) -> None:
    assert StudioSettings.from_env({"SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY": raw}).reduce_memory is value


@pytest.mark.parametrize("name", ["SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS", "SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE",
                                  "SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER", "KITTY_COREML_STUDIO_OUTPUT"])
def test_unusable_values_name_the_variable(name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        StudioSettings.from_env({name: "nonsense"})


def test_manifest_round_trip_keeps_unknown_keys(tmp_path: Path) -> None:
    bundle = make_resources(tmp_path / "wide", width=1024, height=576)
    written = write_manifest(tmp_path / "m.json", {"16:9": bundle,
                                                   "1:1": RatioEntry(Path("square"), 512, 512, {"quantizeNBits": 6})},
                             extra={"profileModelVersion": "stabilityai/stable-diffusion-2-1-base"})
    data = json.loads((tmp_path / "m.json").read_text())
    assert data["schema"] == MANIFEST_SCHEMA and data["profileModelVersion"].startswith("stabilityai/")
    assert data["ratios"]["16:9"] == {"resourcePath": str(bundle), "width": 1024, "height": 576,
                                      "latentWidth": 128, "latentHeight": 72}
    assert written.ratios["1:1"].resource_path == tmp_path / "square"  # relative to the manifest's folder
    assert written.ratios["1:1"].extra == {"quantizeNBits": 6}


def test_manifest_home_expansion(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "m.json").write_text(json.dumps({"schema": MANIFEST_SCHEMA,
                                                 "ratios": {"1:1": {"resourcePath": "${HOME}/models/sd"}}}))
    assert read_manifest(tmp_path / "m.json").ratios["1:1"].resource_path == tmp_path / "models" / "sd"


@pytest.mark.parametrize(("content", "expected"), [
    ("{", "is not readable JSON"), ('{"schema": "other", "ratios": {}}', "expected 'studio.local-diffusion"),
    (json.dumps({"schema": MANIFEST_SCHEMA, "ratios": {}}), "non-empty object"),
    (json.dumps({"schema": MANIFEST_SCHEMA, "ratios": {"1:1": {"width": 512}}}), "ratio '1:1' has no resourcePath")])
def test_bad_manifests_fail_loud(tmp_path: Path, content: str, expected: str) -> None:
    (tmp_path / "m.json").write_text(content)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
        read_manifest(tmp_path / "m.json")
