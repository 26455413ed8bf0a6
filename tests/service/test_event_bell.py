"""A job's event stream hears of a change when the queue tells of it, not at its next look: with the
looks turned off (an hour apart), a stream still follows a job to its end. A real uvicorn server in
this process, over a queue the test moves by hand."""

from __future__ import annotations

import asyncio
import json
import socket
import threading

import httpx
import pytest
import uvicorn

from kitty_coreml.service import app as service_app
from kitty_coreml.settings import Settings
from tests.proc_utils import wait_until


class ScriptedQueue:
    """One job, moved by the test; tells its listeners of each move as the embedded queue does."""

    kind = "scripted"

    def __init__(self) -> None:
        self.job = {"job_id": "j1", "status": "started", "position": None, "created_at": None}
        self.events: list[dict] = []
        self.listeners: list = []

    def on_change(self, listener) -> None:
        self.listeners.append(listener)

    def move(self, *, event: dict | None = None, **job) -> None:
        if event is not None:
            self.events.append(event | {"seq": len(self.events) + 1})
        self.job = self.job | job
        for listener in self.listeners:
            listener()

    def get(self, job_id: str):
        return dict(self.job) if job_id == "j1" else None

    def progress_since(self, job_id: str, after: int) -> list[dict]:
        return self.events[after:]

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def served(tmp_path, monkeypatch):
    monkeypatch.setattr(service_app, "EVENT_POLL_S", 3600.0)
    queue = ScriptedQueue()
    app = service_app.create_app(Settings.from_env({"KITTY_COREML_HOME": str(tmp_path / "home")}), queue)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="on"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[listener])), daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, "uvicorn to start")
    assert server.started
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", queue
    server.should_exit = True
    thread.join(30)


def test_a_stream_follows_a_job_to_its_end_on_the_queues_word_alone(served):
    url, queue = served
    seen: list[tuple[str, dict]] = []
    with httpx.stream("GET", f"{url}/api/images/jobs/j1/events", timeout=httpx.Timeout(30.0)) as response:
        name = None
        for line in response.iter_lines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                seen.append((name, json.loads(line[5:])))
                if name == "status":  # the stream now waits: only the queue's word can move it on
                    queue.move(event={"kind": "step", "step": 1, "total": 2})
                elif name == "progress" and len(seen) == 2:
                    queue.move(status="finished", result={"images": []})
    assert [name for name, _ in seen] == ["status", "progress", "finished"]
    assert seen[1][1]["step"] == 1 and seen[2][1]["status"] == "finished"
