"""The store's dependencies failing at each stage: `rclone serve s3` killed or stalled when the images
are published, the disk filling up while they are staged, and settings that would only fail after the
engine ran. Nothing made is lost, nothing is published twice, and the error says where the images are."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import KITTY
from tests.s3server import S3Server

from .conftest import assert_clear_error, assert_nothing_half_written, disk_full_after


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([KITTY, *args], env=env, capture_output=True, text=True, timeout=180,
                          stdin=subprocess.DEVNULL)


@pytest.fixture
def s3(tmp_path: Path):
    server = S3Server(tmp_path / "s3").start()
    yield server
    if server.process is not None:
        os.kill(server.process.pid, signal.SIGCONT)
    server.stop()


def bucket_keys(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


@pytest.mark.parametrize("fault", ["killed", "stalled"])
def test_s3_away_at_publish_keeps_the_images_and_publishes_each_once_later(env, home, s3, fault):
    bucket = s3.create_bucket()
    s3_env = {**env, **s3.env(bucket), "KITTY_COREML_S3_RETRY_TOTAL_S": "1", "KITTY_COREML_S3_TIMEOUT_S": "1"}
    pid = s3.process.pid
    if fault == "killed":
        s3.stop()
    else:
        os.kill(pid, signal.SIGSTOP)  # accepts connections, never answers
    made = run(s3_env, "generate", "kept safe", "--count", "2", "--steps", "2")
    assert made.returncode != 0
    message = assert_clear_error(made.stderr)
    assert "2 of 2 image(s) could not be published and are kept in the outbox" in message
    assert "publish --pending" in message
    staged = sorted(p.name for p in (home / "outbox").rglob("*.png"))
    assert len(staged) == 2
    if fault == "killed":
        s3.start()
    else:
        os.kill(pid, signal.SIGCONT)
    first = run(s3_env, "publish", "--pending")
    assert first.returncode == 0, first.stderr
    again = run(s3_env, "publish", "--pending")
    assert again.returncode == 0 and again.stdout.startswith("0 published"), again.stdout
    keys = bucket_keys(s3, bucket)
    assert sorted(Path(k).name for k in keys if k.endswith(".png")) == staged  # each exactly once
    assert len([k for k in keys if k.endswith(".json")]) == 2
    assert_nothing_half_written(home)


def test_disk_full_while_staging_says_what_reached_the_outbox_and_keeps_the_rest(env, home, tmp_path):
    made = run({**env, **disk_full_after(tmp_path / "hook", 1)}, "generate", "fills the disk", "--count", "3",
               "--steps", "2")
    assert made.returncode != 0
    message = assert_clear_error(made.stderr)
    assert "No space left on device" in message and "1 of 3 image(s) reached the outbox" in message
    [staged] = list((home / "outbox").rglob("*.png"))
    assert staged.relative_to(home / "outbox").as_posix() in message  # its key is named
    assert staged.with_suffix(".json").is_file()
    runs = list((home / "runs").iterdir())
    assert len(runs) == 1 and str(runs[0]) in message  # the others are kept, and the message says where
    assert len(list(runs[0].rglob("*.final.png"))) == 3
    assert not [p for p in (home / "outbox").rglob("*") if p.name.startswith(".")]  # no half-written file
    assert not (home / "store").exists() or not list((home / "store").rglob("*.png"))  # nothing published


def test_a_bad_s3_prefix_is_refused_before_the_engine_starts(env, home, tmp_path):
    log = tmp_path / "argv.jsonl"
    made = run({**env, "S3_PREFIX": "../elsewhere", "FAKE_SD_ARGV_LOG": str(log)}, "generate", "never made")
    assert made.returncode != 0 and "S3_PREFIX" in assert_clear_error(made.stderr)
    assert not log.exists()  # the engine never ran, so no image was thrown away
    assert_nothing_half_written(home)


def test_the_run_folder_goes_with_a_finished_run(env, home, tmp_path):
    log = tmp_path / "argv.jsonl"
    made = run({**env, "FAKE_SD_ARGV_LOG": str(log)}, "generate", "tidy", "--steps", "2", "--json")
    assert made.returncode == 0, made.stderr
    cwd = Path(json.loads(log.read_text())["cwd"])
    assert cwd.parent == home / "runs" and not cwd.exists()
