"""Any worker command against docs/protocol.md. Every line either side writes is checked against the
schema by the harness."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image


def _generate(target, output_dir, **fields):
    output_dir.mkdir(parents=True, exist_ok=True)
    message = {"type": "generate", "prompt": "a red cube on a table", "count": 1, "steps": 4,
               "guidance": 7.5, "scheduler": target.scheduler, "seed": 42, "output_dir": str(output_dir),
               **target.generate_fields}
    message.update(fields)
    return message


def _pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_hello_names_engine_capabilities_and_pid(session, target):
    _, reply = session.call({"type": "hello", "protocol_version": 1})
    assert reply["type"] == "hello"
    assert reply["protocol_version"] == 1
    assert reply["pid"] == session.proc.pid
    assert target.scheduler in reply["schedulers"]
    # every worker can be stopped: after a step, or (a library that cannot stop inside an image) between images
    assert len({"cancel", "cancel_between_images"} & set(reply["features"])) == 1


@pytest.mark.parametrize("scheduler", ["pndm", "dpmpp"])
def test_each_scheduler_runs_when_declared_and_is_unsupported_when_not(loaded, target, tmp_path, scheduler):
    declared = loaded.call({"type": "hello", "protocol_version": 1})[1]["schedulers"]
    _, reply = loaded.call(_generate(target, tmp_path / "out", steps=2, scheduler=scheduler))
    if scheduler in declared:
        assert reply["type"] == "result", reply
    else:
        assert (reply["type"], reply["code"]) == ("error", "unsupported"), reply
        assert scheduler in reply["message"]
        assert os.listdir(tmp_path / "out") == []


def test_hello_with_another_version_is_refused(session):
    message_id = session.send({"type": "hello", "protocol_version": 99})
    _, reply = session.final(message_id)
    assert (reply["type"], reply["code"]) == ("error", "unsupported_version")


def test_load_reports_native_size(loaded, target):
    _, reply = loaded.call({"type": "load", "model_path": str(target.model_path),
                            "compute_units": target.compute_units}, timeout=600)
    assert reply["type"] == "loaded"
    assert reply["model_path"] == str(target.model_path)
    assert reply["width"] >= 8 and reply["height"] >= 8


def test_load_of_a_missing_folder_fails_and_names_it(session, tmp_path):
    missing = tmp_path / "no-such-model"
    _, reply = session.call({"type": "load", "model_path": str(missing), "compute_units": "cpuOnly"})
    assert (reply["type"], reply["code"]) == ("error", "load_failed")
    assert str(missing) in reply["message"]


def test_generate_reports_each_step_then_writes_the_png(loaded, target, tmp_path):
    events, reply = loaded.call(_generate(target, tmp_path / "out", steps=5))
    assert reply["type"] == "result", reply
    assert events, "no progress events"
    assert all(event["type"] == "progress" for event in events)
    total = events[0]["total"]
    assert [event["step"] for event in events] == list(range(1, total + 1))
    assert all(event["total"] == total for event in events)
    [path] = reply["images"]
    assert os.path.dirname(path) == str(tmp_path / "out")
    assert os.path.basename(path) == "image_0.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (reply["width"], reply["height"])
    assert sorted(os.listdir(tmp_path / "out")) == ["image_0.png"]


def test_same_seed_same_pixels_other_seed_other_pixels(loaded, target, tmp_path):
    first = loaded.call(_generate(target, tmp_path / "a", seed=7))[1]
    again = loaded.call(_generate(target, tmp_path / "b", seed=7))[1]
    other = loaded.call(_generate(target, tmp_path / "c", seed=8))[1]
    assert np.array_equal(_pixels(first["images"][0]), _pixels(again["images"][0]))
    assert not np.array_equal(_pixels(first["images"][0]), _pixels(other["images"][0]))


def test_count_two_writes_two_different_images(loaded, target, tmp_path):
    _, reply = loaded.call(_generate(target, tmp_path / "out", count=2, scheduler="dpmpp"))
    assert reply["type"] == "result", reply
    assert [os.path.basename(path) for path in reply["images"]] == ["image_0.png", "image_1.png"]
    assert not np.array_equal(_pixels(reply["images"][0]), _pixels(reply["images"][1]))


def test_img2img_from_an_earlier_image(loaded, target, tmp_path):
    source = loaded.call(_generate(target, tmp_path / "src"))[1]["images"][0]
    _, reply = loaded.call(_generate(target, tmp_path / "out", steps=10, input_image=source, strength=0.5))
    assert reply["type"] == "result", reply
    assert _pixels(reply["images"][0]).shape == _pixels(source).shape


def test_cancel_mid_run_stops_after_a_step_and_the_worker_goes_on(loaded, target, tmp_path):
    generate_id = loaded.send(_generate(target, tmp_path / "out", count=4, steps=target.steps))
    first = loaded.next(timeout=600)
    assert (first["id"], first["type"]) == (generate_id, "progress")
    cancel_id = loaded.send({"type": "cancel", "target": generate_id})
    replies = {}
    last_step = first["step"]
    while len(replies) < 2:
        message = loaded.next(timeout=600)
        if message["type"] == "progress":
            last_step = message["step"]
            continue
        replies[message["id"]] = message
    assert replies[cancel_id] == {"type": "ack", "id": cancel_id, "active": True}
    assert (replies[generate_id]["type"], replies[generate_id]["code"]) == ("error", "cancelled")
    assert last_step < first["total"]
    features = loaded.call({"type": "hello", "protocol_version": 1})[1]["features"]
    if "cancel_between_images" in features:  # it stopped where an image ended, not inside one
        assert last_step % (first["total"] // 4) == 0
    assert not [name for name in os.listdir(tmp_path / "out") if not name.startswith(".")]
    _, reply = loaded.call(_generate(target, tmp_path / "after"))
    assert reply["type"] == "result"


def test_cancel_with_nothing_running_is_acknowledged_inactive(loaded):
    _, reply = loaded.call({"type": "cancel"})
    assert reply["type"] == "ack" and reply["active"] is False


def _finals(session, wanted: set[str]) -> dict[str, dict]:
    replies = {}
    while not wanted <= set(replies):
        message = session.next(timeout=600)
        if message["type"] != "progress":
            replies[message["id"]] = message
    return replies


def test_requests_during_a_generate_are_refused_as_busy(loaded, target, tmp_path):
    generate_id = loaded.send(_generate(target, tmp_path / "out", count=4, steps=target.steps))
    assert loaded.next(timeout=600)["id"] == generate_id
    unload_id = loaded.send({"type": "unload"})
    assert _finals(loaded, {unload_id})[unload_id]["code"] == "busy"
    cancel_id = loaded.send({"type": "cancel"})
    replies = _finals(loaded, {cancel_id, generate_id})
    assert replies[cancel_id]["type"] == "ack"
    assert replies[generate_id]["code"] == "cancelled"


def test_unknown_type_is_an_error_not_a_hang(loaded):
    message_id = loaded.new_id()
    loaded.send_raw(b'{"type": "frobnicate", "id": "%s"}\n' % message_id.encode())
    _, reply = loaded.final(message_id, timeout=30)
    assert (reply["type"], reply["code"]) == ("error", "unknown_type")
    assert loaded.call({"type": "hello", "protocol_version": 1}, timeout=30)[1]["type"] == "hello"


@pytest.mark.parametrize("line", [b"this is not json", b"[1, 2]", b'{"type": "hello"}', b'{"id": 5, "type": "hello"}',
                                  b'{"id": "x1"}', "{\"id\": \"\u00e9\", \"type\": \"load\"".encode()])
def test_malformed_lines_get_an_error(loaded, line):
    loaded.send_raw(line + b"\n")
    reply = loaded.next(timeout=30)
    assert (reply["type"], reply["code"]) == ("error", "malformed")
    assert reply["id"] in (None, "x1")


def test_missing_field_is_a_bad_request_naming_it(loaded, target, tmp_path):
    message_id = loaded.new_id()
    loaded.send_raw(b'{"type": "generate", "id": "%s", "prompt": "x", "count": 1, "steps": 2, "guidance": 7, '
                    b'"scheduler": "%s", "output_dir": "%s"}\n' % (message_id.encode(), target.scheduler.encode(),
                                                              str(tmp_path).encode()))
    _, reply = loaded.final(message_id, timeout=30)
    assert (reply["type"], reply["code"]) == ("error", "bad_request")
    assert "seed" in reply["message"]


def test_generate_before_load_is_an_error(session, target, tmp_path):
    _, reply = session.call(_generate(target, tmp_path / "out"))
    assert (reply["type"], reply["code"]) == ("error", "not_loaded")


def test_unload_then_generate_is_not_loaded(session, target, tmp_path):
    assert session.call({"type": "load", "model_path": str(target.model_path),
                         "compute_units": target.compute_units}, timeout=600)[1]["type"] == "loaded"
    assert session.call({"type": "unload"})[1]["type"] == "unloaded"
    assert session.call(_generate(target, tmp_path / "out"))[1]["code"] == "not_loaded"


def test_shutdown_says_bye_and_exits_zero(session):
    _, reply = session.call({"type": "shutdown"})
    assert reply["type"] == "bye"
    assert session.proc.wait(timeout=30) == 0


def test_end_of_input_exits_zero(session):
    assert session.call({"type": "hello", "protocol_version": 1})[1]["type"] == "hello"
    session.proc.stdin.close()
    assert session.proc.wait(timeout=30) == 0


def test_shutdown_during_a_generate_cancels_it_then_says_bye(session, target, tmp_path):
    assert session.call({"type": "load", "model_path": str(target.model_path),
                         "compute_units": target.compute_units}, timeout=600)[1]["type"] == "loaded"
    generate_id = session.send(_generate(target, tmp_path / "out", count=4, steps=target.steps))
    assert session.next(timeout=600)["id"] == generate_id
    shutdown_id = session.send({"type": "shutdown"})
    replies = _finals(session, {generate_id, shutdown_id})
    assert replies[generate_id]["code"] == "cancelled"
    assert replies[shutdown_id]["type"] == "bye"
    assert session.proc.wait(timeout=30) == 0
