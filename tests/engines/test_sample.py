"""The sample engine against the faithful fake of StableDiffusionSample, through the real CLI."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from kitty_coreml.engines.base import EngineJob
from kitty_coreml.engines.sample import build_argv, image_names
from kitty_coreml.models import ModelInfo
from kitty_coreml.request import GenerationRequest
from tests.conftest import KITTY
from tests.fakes import make_resources
from tests.proc_utils import read_events, read_pid, wait_gone

MODEL = ModelInfo(name="m", format="coreml", path=Path("/models/m"), attention="split_einsum")


def _job(tmp_path: Path, **fields) -> EngineJob:
    request = GenerationRequest(**{"prompt": "a cube", **fields})
    return EngineJob(request=request, seed=42, run_id="run_1", model=MODEL, compute_units="cpuAndNeuralEngine",
                     output_dir=tmp_path)


def _stored(home: Path) -> list[Path]:
    return sorted((home / "store").rglob("*.png"))


def _argv_log(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()]


def test_argv_prompt_after_double_dash_values_attached(tmp_path):
    argv = build_argv(Path("/bin/sds"), _job(tmp_path, prompt="-x dash", negative_prompt="-blurry", safety=False,
                                             reduce_memory=True))
    assert argv[-2:] == ["--", "-x dash"]
    assert "--negative-prompt=-blurry" in argv
    assert "--disable-safety" in argv and "--reduce-memory" in argv
    assert all(a.startswith("--") for a in argv[1:-1])


def test_image_names_follow_the_binary(tmp_path):
    job = _job(tmp_path, prompt="a red cube " * 10, count=2)
    assert image_names(job) == [f"{('a red cube ' * 10)[:75].replace(' ', '_')}.{i}.42.final.png" for i in (0, 1)]


def test_generate_stores_checked_pngs_with_metadata(kitty, home):
    run = kitty("generate", "studio photo of a matte black water bottle", "--count", "2", "--steps", "20",
                "--run-id", "run_1f0c2d3e-0000-4000-8000-000000000001", "--json")
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["seed"] == 3299222219
    assert result["runId"] == "run_1f0c2d3e-0000-4000-8000-000000000001"
    assert len(result["images"]) == 2 and result["warnings"] == []
    for image in result["images"]:
        path = Path(image["path"])
        assert path.is_file() and image["storageUri"] == path.as_uri()
        assert (image["width"], image["height"]) == (512, 512)
        assert path.with_suffix(".json").is_file()
        with Image.open(path) as png:
            assert png.size == (512, 512)
            assert "Seed: 3299222219" in png.text["parameters"]
            assert json.loads(png.text["kitty_coreml"])["runId"] == result["runId"]
    assert not list((home / "runs").iterdir()), "run folders are removed"
    assert not list((home / "outbox").rglob("*.png")), "published images leave the outbox"


@pytest.mark.parametrize("prompt", ["-x starts with a dash", "--help", "a/b/c nested", "../../../../../../../escape",
                                    "a/../../.././../x/../../../y", "/etc/passwd"])
def test_hostile_prompts_stay_in_the_run_folder(kitty, home, tmp_path, prompt):
    log = tmp_path / "argv.jsonl"
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    run = kitty("generate", "--count", "2", "--json", "--", prompt, extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 0, run.stderr
    assert _argv_log(log)[0][-2:] == ["--", prompt]
    created = {p for p in tmp_path.rglob("*") if p.is_file()} - before - {log}
    # Everything new is under the store (2 PNGs + 2 sidecars) or the lock file: nothing escaped.
    assert sorted(p.suffix for p in created if "store" in p.parts) == [".json", ".json", ".png", ".png"]
    assert {p.name for p in created if "store" not in p.parts} <= {"generate.lock"}


def test_hung_engine_killed_at_timeout_with_its_children(kitty, home, tmp_path):
    pid_file, child_file = tmp_path / "pid", tmp_path / "child"
    run = kitty("generate", "a cube", "--timeout", "1", extra_env={
        "FAKE_SD_HANG_AT_STEP": "2", "FAKE_SD_PID_FILE": str(pid_file), "FAKE_SD_SPAWN_CHILD": str(child_file)})
    assert run.returncode == 6
    assert run.stderr.strip().count("\n") == 0
    assert "did not finish within 1 s and was killed" in run.stderr
    wait_gone(read_pid(pid_file))
    wait_gone(read_pid(child_file))
    assert _stored(home) == []


def test_crash_mid_run_publishes_nothing(kitty, home):
    run = kitty("generate", "a cube", "--count", "2", extra_env={"FAKE_SD_CRASH_AT_STEP": "3"})
    assert run.returncode == 5
    assert "StableDiffusionSample crashed (killed by SIGSEGV (11))" in run.stderr
    assert "Traceback" not in run.stderr
    assert _stored(home) == [] and not list((home / "outbox").rglob("*.png"))


def test_engine_error_line_is_reported(kitty):
    run = kitty("generate", "a cube", extra_env={"FAKE_SD_FAIL": "out of memory"})
    assert run.returncode == 5
    assert "StableDiffusionSample failed (exit code 1): Error: out of memory" in run.stderr


def test_safety_drop_is_a_warning(kitty, home):
    run = kitty("generate", "a cube", "--count", "3", "--json", extra_env={"FAKE_SD_SAFETY_DROP": "1"})
    assert run.returncode == 0, run.stderr
    assert [image["index"] for image in run.json["images"]] == [0, 2]
    assert run.json["warnings"] == ["image 2 of 3 was removed by the safety checker"]
    assert len(_stored(home)) == 2


def test_all_removed_by_safety_is_an_error(kitty, home):
    run = kitty("generate", "a cube", "--count", "2", extra_env={"FAKE_SD_SAFETY_DROP": "all"})
    assert run.returncode == 7
    assert "safety checker removed all 2 image(s)" in run.stderr
    assert _stored(home) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_kills_engine_and_stores_nothing(env, home, tmp_path, sig):
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen([KITTY, "generate", "a cube"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "KITTY_COREML_PROGRESS": "ndjson", "FAKE_SD_HANG_AT_STEP": "3",
                                 "FAKE_SD_PID_FILE": str(pid_file)})
    # Progress streams while the engine runs (it hangs at step 3, so this comes before any exit).
    events = read_events(proc.stderr, lambda e: e["event"] == "step" and e["step"] == 4)
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3, 4]
    engine_pid = read_pid(pid_file)
    proc.send_signal(sig)
    assert proc.wait(timeout=30) == 130
    assert "stopped" in proc.stderr.read()
    wait_gone(engine_pid)
    assert _stored(home) == []


def test_two_generations_are_serialised_by_the_lock(env, home, tmp_path):
    pid_file = tmp_path / "pid"
    first = subprocess.Popen([KITTY, "generate", "first"], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True,
                             env={**env, "KITTY_COREML_PROGRESS": "ndjson", "FAKE_SD_HANG_AT_STEP": "1",
                                  "FAKE_SD_PID_FILE": str(pid_file)})
    read_events(first.stderr, lambda e: e["event"] == "step")
    second = subprocess.Popen([KITTY, "generate", "second", "--json"], stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "KITTY_COREML_PROGRESS": "ndjson"})
    waiting = read_events(second.stderr, lambda e: e["event"] in ("waiting", "step"))[-1]
    assert waiting["event"] == "waiting", "the second generation must wait while the first holds the lock"
    assert f"pid {first.pid}" in waiting["message"]
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=30) == 130
    out, _ = second.communicate(timeout=60)
    assert second.returncode == 0
    assert json.loads(out)["images"][0]["path"]


def test_missing_model_file_fails_before_launch(kitty, tmp_path):
    log = tmp_path / "argv.jsonl"
    broken = make_resources(tmp_path / "broken", omit=("merges.txt",))
    run = kitty("generate", "a cube", "--model", str(broken), extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 3
    assert "missing merges.txt" in run.stderr and "kitty-coreml install --model" in run.stderr
    assert _argv_log(log) == []


def test_img2img_needs_an_encoder(kitty, tmp_path):
    log = tmp_path / "argv.jsonl"
    Image.new("RGB", (300, 200), (200, 10, 10)).save(tmp_path / "start.png")
    plain = make_resources(tmp_path / "plain")
    run = kitty("generate", "a cube", "--model", str(plain), "--image", str(tmp_path / "start.png"),
                extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 3 and "has no VAEEncoder" in run.stderr
    assert _argv_log(log) == []


def test_img2img_stages_the_image_at_native_size(kitty, tmp_path):
    log = tmp_path / "argv.jsonl"
    Image.new("RGB", (300, 200), (200, 10, 10)).save(tmp_path / "start.png")
    run = kitty("generate", "a cube", "--image", str(tmp_path / "start.png"), "--strength", "0.35", "--json",
                extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 0, run.stderr
    argv = _argv_log(log)[0]
    assert "--strength=0.35" in argv
    assert any(a.startswith("--image=") and a.endswith("input.png") for a in argv)


def test_original_attention_on_the_neural_engine_warns_and_defaults_to_gpu(kitty, tmp_path):
    log = tmp_path / "argv.jsonl"
    xl = make_resources(tmp_path / "xl", family="sdxl", width=1024, height=1024, attention="original")
    # Apple's original-attention models run on every compute unit, only slower on the Neural Engine.
    obeyed = kitty("generate", "a cube", "--model", str(xl), "--compute-units", "cpuAndNeuralEngine", "--json",
                   extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert obeyed.returncode == 0, obeyed.stderr
    assert "--compute-units=cpuAndNeuralEngine" in _argv_log(log)[0]
    assert any("runs slower on cpuAndNeuralEngine" in w for w in obeyed.json["warnings"])
    run = kitty("generate", "a cube", "--model", str(xl), "--json", extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 0, run.stderr
    argv = _argv_log(log)[1]
    assert "--xl" in argv and "--compute-units=cpuAndGPU" in argv
    assert (run.json["images"][0]["width"], run.json["images"][0]["height"]) == (1024, 1024)


@pytest.mark.parametrize(("args", "said"), [
    (["--count", "9"], "--count: got "), (["--steps", "0"], "--steps: got "), (["--guidance", "nan"], "--guidance: got "),
    (["--scheduler", "euler"], "Invalid value for '--scheduler': "),
    (["--compute-units", "gpu"], "Invalid value for '--compute-units': "),
    (["--seed", "4294967296"], "--seed: got "), (["--timeout", "0"], "--timeout: got "),
    (["--strength", "0.3"], "--strength: got "), (["--image", "/nope.png"], "--image: got "),
    (["--run-id", "a b"], "--run-id: got "),
])
def test_bad_inputs_launch_nothing(kitty, tmp_path, args, said):
    log = tmp_path / "argv.jsonl"
    run = kitty("generate", "a cube", *args, extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 2
    assert run.stderr.startswith(f"kitty-coreml: error: {said}")
    assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr
    assert _argv_log(log) == []


def test_engine_dies_with_a_killed_parent(env, tmp_path):
    pid_file = tmp_path / "pid"
    proc = subprocess.Popen([KITTY, "generate", "a cube"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True,
                            env={**env, "KITTY_COREML_PROGRESS": "ndjson", "FAKE_SD_HANG_AT_STEP": "1",
                                 "FAKE_SD_PID_FILE": str(pid_file)})
    read_events(proc.stderr, lambda e: e["event"] == "step")
    engine_pid = read_pid(pid_file)
    proc.kill()  # SIGKILL: no handler runs; the kernel's parent-death signal must end the engine
    proc.wait(timeout=30)
    wait_gone(engine_pid)
