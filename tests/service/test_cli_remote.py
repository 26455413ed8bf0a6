"""`kitty-coreml generate --server URL [--wait]` against a real service."""

from __future__ import annotations

import json


def test_generate_with_server_and_wait_prints_the_result(kitty, env, service_factory):
    service = service_factory({**env, "FAKE_SD_STEP_DELAY": "0.01"})
    run = kitty("generate", "a blue sphere", "--steps", "5", "--seed", "11", "--server", service.url, "--wait", "--json",
                extra_env={"KITTY_COREML_PROGRESS": "ndjson"})
    assert run.returncode == 0, run.stderr
    result = run.json
    assert result["png_key"].endswith(".png") and result["seed"] == 11 and result["images"][0]["width"] == 512
    events = [json.loads(line) for line in run.stderr.splitlines() if line.startswith("{")]
    assert any(event["event"] == "step" and event["total"] == 6 for event in events), run.stderr

    plain = kitty("generate", "a blue sphere", "--steps", "5", "--server", service.url, "--wait")
    assert plain.returncode == 0 and "1 image(s) stored" in plain.stdout


def test_generate_with_server_without_wait_prints_the_job(kitty, mock_env, service_factory):
    service = service_factory(mock_env)
    run = kitty("generate", "a cube", "--server", service.url, "--json")
    assert run.returncode == 0, run.stderr
    assert run.json["status"] == "queued" and len(run.json["job_id"]) == 32


def test_server_errors_are_one_line(kitty, mock_env, service_factory):
    service = service_factory({**mock_env, "KITTY_COREML_API_KEY": "k"})
    refused = kitty("generate", "a cube", "--server", service.url, "--wait")
    assert refused.returncode == 11 and "refused the API key (401" in refused.stderr
    bad = kitty("generate", "a cube", "--model", "no-such-model", "--server", service.url,
                extra_env={"KITTY_COREML_API_KEY": "k"})
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no-such-model" in bad.stderr, bad.stderr
    unreachable = kitty("generate", "a cube", "--server", "http://127.0.0.1:9", "--wait")
    assert unreachable.returncode == 11 and unreachable.stderr.count("\n") == 1
    assert "cannot reach the images service at http://127.0.0.1:9" in unreachable.stderr
