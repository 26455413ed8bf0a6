"""Hostile and broken inputs that used to end in an internal error, an HTTP 500 or a failure after the
whole generation: each now gets one clear line (or a 422/503 JSON error) naming what was given, before
any engine starts."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KITTY
from tests.studio.harness import Provider, request, staged_image

from .conftest import assert_clear_error, assert_nothing_half_written

HUGE = 10**400  # an integer JSON allows and a float cannot hold


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KITTY, *args], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A PNG that decodes to 400 megapixels from a few kilobytes: Pillow's decompression-bomb guard."""
    from PIL import Image

    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    Image.new("1", (20000, 20000)).save(path)
    return path


@pytest.mark.parametrize("body, field", [
    ({"prompt": "x", "cfg": HUGE}, "guidance"),
    ({"prompt": "x", "timeout_s": HUGE}, "timeout_s"),
    ({"prompt": "x", "timeout_s": -HUGE}, "timeout_s"),
    ({"prompt": "x", "engine": "warp-drive"}, "engine"),
], ids=["cfg-huge", "timeout-huge", "timeout-huge-negative", "unknown-engine"])
def test_http_bodies_are_refused_at_submit(mock_service, body, field):
    with mock_service.client() as client:
        answer = client.post("/api/images/generate", content=json.dumps(body),
                             headers={"Content-Type": "application/json"})
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["code"] == "invalid_request" and field in answer.json()["detail"]
        stats = client.get("/api/images/stats").json()
        assert stats["queued"] + stats["started"] + stats["finished"] + stats["failed"] == 0  # nothing queued


def test_a_prompt_the_binary_cannot_name_a_file_after_is_refused_before_launch(kitty, tmp_path, home):
    log = tmp_path / "argv.jsonl"
    made = kitty("generate", "\U0001F600" * 80, extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert made.returncode != 0
    message = assert_clear_error(made.stderr)
    assert message.startswith("PROMPT: got ") and "255 bytes" in message and "coreml-worker" in message
    assert not log.exists()  # refused before the engine ran
    assert_nothing_half_written(home)
    # CJK text of the same length fits (75 x 3 bytes), and still runs
    assert kitty("generate", "\u732b" * 80, "--steps", "2", extra_env={"FAKE_SD_ARGV_LOG": str(log)}).returncode == 0


def registry(home: Path, data) -> dict[str, str]:
    (home / "models.json").write_text(json.dumps(data))
    return {}


@pytest.mark.parametrize("case", ["bomb-image", "registry-not-object", "registry-models-list", "entry-without-path",
                                  "entry-without-path-list", "home-is-a-file", "home-is-a-file-serve",
                                  "select-superscript", "server-bad-ipv6", "server-port-range",
                                  "endpoint-garbage", "endpoint-bad-ipv6"])
def test_cli_inputs_get_one_clear_line(env, home, tmp_path, bomb, case):
    args: tuple[str, ...]
    extra: dict[str, str] = {}
    expect = case
    if case == "bomb-image":
        args, expect = ("generate", "x", "--image", str(bomb)), "decompression bomb"
    elif case == "registry-not-object":
        registry(home, [1, 2])
        args, expect = ("models", "list"), "models.json"
    elif case == "registry-models-list":
        registry(home, {"models": 3})
        args, expect = ("generate", "x", "--model", "foo"), "models.json"
    elif case in ("entry-without-path", "entry-without-path-list"):
        registry(home, {"models": {"foo": {"format": "coreml"}}})
        args = ("generate", "x", "--model", "foo") if case == "entry-without-path" else ("models", "list")
        expect = "model 'foo' needs a folder"
    elif case.startswith("home-is-a-file"):
        homefile = tmp_path / "homefile"
        homefile.write_text("")
        extra = {"KITTY_COREML_HOME": str(homefile)}
        args = ("generate", "x") if case == "home-is-a-file" else ("serve", "--port", "0")
        expect = "KITTY_COREML_HOME"
    elif case == "select-superscript":
        args, expect = ("images", "select", "\u00b2"), "\u00b2"
    elif case == "server-bad-ipv6":
        args, expect = ("generate", "x", "--server", "http://[::1"), "server: got"
    elif case == "server-port-range":
        args, expect = ("generate", "x", "--server", "http://127.0.0.1:99999"), "server: got"
    else:
        extra = {"S3_BUCKET": "b", "S3_ENDPOINT_URL": "not a url" if case == "endpoint-garbage" else "http://[zz"}
        args, expect = ("generate", "x"), "S3_ENDPOINT_URL"
    made = run({**env, **extra}, *args)
    assert made.returncode != 0
    assert expect in assert_clear_error(made.stderr)


def test_studio_inputs_get_one_clear_line(fake: Provider, bomb, tmp_path):
    deep = '{"a":' * 100000 + "1" + "}" * 100000
    nested = fake.run(deep)
    assert nested.returncode == 1 and "nested" in nested.error and "internal" not in nested.error
    bombed = fake.run(request(inputImages=[staged_image(bomb)]))
    assert bombed.returncode == 1 and "decompression bomb" in bombed.error
    counted = fake.run(request(count=HUGE))  # floored and clamped like the host's provider: 8
    assert counted.returncode == 0 and len(counted.answer["images"]) == 8


def test_a_manifest_size_too_big_for_an_integer_is_ignored_not_a_crash(fake: Provider):
    from kitty_coreml.studio import read_manifest

    manifest_path = Path(fake.env["SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH"])
    manifest = json.loads(manifest_path.read_text())
    manifest["ratios"]["1:1"]["width"] = "__HUGE__"
    manifest_path.write_text(json.dumps(manifest).replace('"__HUGE__"', "1e400"))
    assert read_manifest(manifest_path).ratios["1:1"].width is None  # unknown: the model's size is read instead
    made = fake.run(request())
    assert made.returncode == 0 and made.answer["images"][0]["width"] == 512


def test_a_studio_run_id_is_a_label_not_a_path(fake: Provider, tmp_path):
    from kitty_coreml.seeds import studio_seed

    log = tmp_path / "argv.jsonl"
    home = Path(fake.env["KITTY_COREML_HOME"])
    made = fake.run(request(prompt="a red cube", runId="../../../studio-escape"),
                    extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert made.returncode == 0, made.stderr
    assert made.answer["metadata"]["seed"] == studio_seed("a red cube", "../../../studio-escape")  # the host's seed
    cwd = Path(json.loads(log.read_text())["cwd"])
    assert cwd.resolve().parent == (home / "runs").resolve()
