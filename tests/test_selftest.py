"""`kitty-coreml selftest` as CI runs it: against the doubles of Apple's binary and of the Swift worker,
through the real console script. `--live` needs a Mac and says so here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import KITTY
from tests.fakes import make_resources, write_fake_worker

CHECKS = ["pick a Core ML model", "find StableDiffusionSample", "contract: StableDiffusionSample",
          "protocol: kitty-coreml-worker", "generate: sample", "generate: coreml-worker", "studio provider",
          "cancel: coreml-worker"]


@pytest.fixture
def selftest_env(env, tmp_path):
    model = make_resources(tmp_path / "small", width=64, height=64, encoder=True)
    return {**env, "KITTY_COREML_WORKER_BIN": str(write_fake_worker(tmp_path)),
            "KITTY_COREML_RESOURCE_PATH": str(model), "FAKE_SD_STEP_DELAY": "0.01"}


def _selftest(env, *args):
    return subprocess.run([KITTY, "selftest", *args], capture_output=True, text=True, env=env, timeout=300,
                          stdin=subprocess.DEVNULL)


def test_selftest_runs_every_check_against_the_doubles_and_reports_timings(selftest_env, home, tmp_path):
    report_file = tmp_path / "report.json"
    done = _selftest(selftest_env, "--report", str(report_file))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert json.loads(report_file.read_text()) == report
    assert report["ok"] and not report["failures"] and report["live"] is False
    assert [check["name"] for check in report["checks"]] == CHECKS
    assert all(check["ok"] for check in report["checks"])
    assert report["versions"]["worker"].startswith("kitty-coreml-worker 0.1.0 (ml-stable-diffusion e12202c1")
    assert report["model"]["path"] == selftest_env["KITTY_COREML_RESOURCE_PATH"]
    checks = {check["name"]: check for check in report["checks"]}
    for engine in ("sample", "coreml-worker"):
        timings = checks[f"generate: {engine}"]["timings"]
        assert timings["steps"] == 4 and checks[f"generate: {engine}"]["images"] == ["64x64"]
        assert all(timings[key] is not None and timings[key] >= 0
                   for key in ("load_s", "first_step_s", "per_step_s", "total_s"))
    assert checks["studio provider"]["model_id"].startswith("local/macos-coreml-")
    assert checks["cancel: coreml-worker"]["stopped_after_s"] is not None
    assert not list(home.rglob("*.png"))  # nothing published into the user's store


def test_a_failing_engine_is_named_in_the_report_and_the_exit_status(selftest_env):
    done = _selftest({**selftest_env, "FAKE_SD_FAIL": "resources(\"selftest breaks the binary\")"})
    assert done.returncode == 1
    report = json.loads(done.stdout)
    assert [check["name"] for check in report["checks"]] == CHECKS
    failed = [failure["check"] for failure in report["failures"]]
    assert failed == ["generate: sample", "studio provider"]
    assert "selftest breaks the binary" in report["failures"][0]["error"]
    line, = done.stderr.splitlines()
    assert line.startswith("kitty-coreml: error: selftest: 2 of 8 checks failed; first: generate: sample: ")


@pytest.mark.skipif(sys.platform == "darwin", reason="off a Mac only: on a Mac --live runs")
def test_live_selftest_says_plainly_it_needs_a_mac(selftest_env):
    done = _selftest(selftest_env, "--live")
    assert done.returncode == 3 and done.stdout == ""
    line, = done.stderr.splitlines()
    assert line.startswith("kitty-coreml: error: selftest --live needs a Mac: Core ML runs only on macOS 13.1+")
