"""`kitty-coreml install` end to end against the stand-ins (real git, real HTTP, real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from kitty_coreml.models import Registry
from kitty_coreml.resources import inspect_resources
from tests.proc_utils import wait_until

from .conftest import ARCHIVE, MODEL_COMMIT, REPO, Stage


def _statuses(report: dict) -> dict[str, str]:
    return {step["name"]: step["status"] for step in report["steps"]}


def test_fresh_install_sets_up_everything_and_a_second_run_skips_it(stage: Stage):
    report = stage.install_json()
    assert _statuses(report) == {"ml-stable-diffusion": "done", "StableDiffusionSample": "done",
                                 "kitty-coreml-worker": "done", "model:sd21-palettized": "done", "links": "done"}

    clone = stage.home / "src" / "ml-stable-diffusion"
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert head.strip() == stage.commits[0]
    calls = stage.swift_calls()
    assert [c["argv"] for c in calls] == [
        ["build", "-c", "release", "--product", "StableDiffusionSample"],
        ["build", "-c", "release", "--package-path", str(stage.tmp / "kitty-src" / "swift_bridge")]]
    assert calls[0]["cwd"] == str(clone)
    for product in ("StableDiffusionSample", "kitty-coreml-worker"):
        ran = subprocess.run([str(stage.home / "bin" / product)], capture_output=True, text=True)
        assert ran.stdout.strip() == f"{product} stand-in"

    info = inspect_resources(stage.model_dir)
    assert info.missing == [] and (info.width, info.height, info.attention) == (512, 512, "split_einsum")
    assert Registry(stage.home / "models.json").read()["models"]["sd21-palettized"]["path"] == str(stage.model_dir)
    manifest = json.loads((stage.home / "studio-manifest.json").read_text())
    assert manifest["ratios"]["1:1"]["resourcePath"] == str(stage.model_dir)
    assert not (stage.home / "downloads" / f"sd21-palettized-{MODEL_COMMIT[:12]}-{ARCHIVE}").exists()
    assert os.path.realpath(stage.links / "kitty-coreml") == str(stage.home / "bin" / "kitty-coreml")
    env = {k: v for k, v in stage.env.items() if k != "KITTY_COREML_HOME"}
    listed = subprocess.run([str(stage.links / "kitty-coreml"), "models", "list", "--json"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert json.loads(listed.stdout)["home"] == str(stage.home), "the launcher sets the install's home"
    assert [r["path"] for r in stage.hub.gets()] == [f"/{REPO}/resolve/{MODEL_COMMIT}/{ARCHIVE}"]

    requests_before = len(stage.hub.requests)
    again = stage.install_json()
    assert set(_statuses(again).values()) == {"skipped"}
    assert len(stage.swift_calls()) == 2, "nothing is rebuilt"
    assert len(stage.hub.requests) == requests_before, "nothing is asked of the hub"


def test_an_existing_clone_is_moved_to_the_pinned_commit_and_the_sample_rebuilt(stage: Stage):
    stage.install_json()
    stage.env["KITTY_COREML_ML_SD_COMMIT"] = stage.commits[1]
    report = stage.install_json()
    assert _statuses(report)["ml-stable-diffusion"] == "done"
    assert _statuses(report)["StableDiffusionSample"] == "done"
    assert _statuses(report)["kitty-coreml-worker"] == "skipped"
    clone = stage.home / "src" / "ml-stable-diffusion"
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    assert head.strip() == stage.commits[1]


def test_an_interrupted_download_resumes_where_it_stopped(stage: Stage):
    stop_at = 1024 * 1024
    stage.hub.stall_at = stop_at
    part = stage.home / "downloads" / f"sd21-palettized-{MODEL_COMMIT[:12]}-{ARCHIVE}.part"
    child = subprocess.Popen(stage.command("install"), env=stage.env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: part.exists() and part.stat().st_size >= stop_at, 30.0, "the first megabyte")
        child.send_signal(signal.SIGINT)  # Ctrl-C
        _out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == 130, err
    assert part.stat().st_size == stop_at
    stage.hub.release.set()

    report = stage.install_json()
    assert _statuses(report)["model:sd21-palettized"] == "done"
    assert stage.hub.gets()[-1]["range"] == f"bytes={stop_at}-"
    assert not part.exists()
    assert inspect_resources(stage.model_dir).missing == []
    weights = stage.model_dir / "Unet.mlmodelc" / "weights" / "weight.bin"
    assert weights.stat().st_size == 3 * 1024 * 1024


def test_a_corrupted_archive_is_refused_and_fetched_again(stage: Stage):
    stage.hub.corrupt_gets = 1
    done = stage.run("install", "--json")
    assert done.returncode == 0, done.stderr
    assert "refused:" in done.stderr and "hashes to" in done.stderr
    assert len(stage.hub.gets()) == 2
    assert inspect_resources(stage.model_dir).missing == []


def test_an_archive_that_never_matches_its_pin_fails_naming_it_and_leaves_nothing(stage: Stage):
    stage.write_catalog(sha256="0" * 64)
    done = stage.run("install")
    assert done.returncode == 10
    assert ARCHIVE in done.stderr and "refusing to download" in done.stderr
    assert stage.hub.gets() == [], "a hash that differs from the hub's LFS hash stops it before any byte"
    assert len(done.stderr.strip().splitlines()[-1]) < 600

    stage.write_catalog(sha256=None)
    stage.hub.corrupt_gets = 2
    done = stage.run("install")
    assert done.returncode == 10
    assert "hashes to" in done.stderr.splitlines()[-1] and ARCHIVE in done.stderr.splitlines()[-1]
    assert not list((stage.home / "downloads").glob("*.part")), "a corrupt download is deleted"
    assert not stage.model_dir.exists()


def test_a_wrong_link_is_fixed_and_a_real_file_is_never_overwritten(stage: Stage):
    stage.install_json()
    link = stage.links / "kitty-coreml"
    link.unlink()
    link.symlink_to("/bin/true")
    report = stage.install_json()
    assert _statuses(report)["links"] == "done"
    assert os.path.realpath(link) == str(stage.home / "bin" / "kitty-coreml")

    other = stage.links / "systemsculpt-local-imagegen"
    other.unlink()
    other.write_text("#!/bin/sh\necho mine\n")
    done = stage.run("install")
    assert done.returncode == 10
    assert f"{other} is a real file" in done.stderr
    assert other.read_text() == "#!/bin/sh\necho mine\n"


def test_verify_passes_on_a_good_install_and_names_what_is_broken(stage: Stage):
    stage.install_json()
    good = stage.run("install", "--verify", "--json")
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["ok"] is True

    weights = stage.model_dir / "Unet.mlmodelc" / "weights" / "weight.bin"
    weights.unlink()
    (stage.home / "bin" / "StableDiffusionSample").write_text("#!/bin/sh\necho tampered\n")
    requests_before = len(stage.hub.requests)
    bad = stage.run("install", "--verify", "--json")
    assert bad.returncode == 10
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert f"{weights} is missing" in report["problems"]
    assert any("StableDiffusionSample changed since it was installed" in p for p in report["problems"])
    assert str(weights) in bad.stderr
    assert not weights.exists(), "--verify changes nothing"
    assert len(stage.hub.requests) == requests_before

    repaired = stage.install_json()
    assert _statuses(repaired)["model:sd21-palettized"] == "done"
    assert stage.run("install", "--verify").returncode == 0


def test_dry_run_prints_the_plan_and_does_nothing(stage: Stage):
    done = stage.run("install", "--model", "sd21-palettized", "--dry-run", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    model = next(s for s in report["steps"] if s["name"] == "model:sd21-palettized")
    assert model["plan"]["repo"] == REPO and model["plan"]["revision"] == MODEL_COMMIT
    assert model["plan"]["size_bytes"] == len(stage.archive) and model["status"] == "would_run"
    clone = next(s for s in report["steps"] if s["name"] == "ml-stable-diffusion")
    assert clone["plan"]["commands"][0][:2] == ["git", "clone"]
    assert not stage.home.exists() and stage.hub.requests == [] and stage.swift_calls() == []
