"""service/loopback.py, the warm path's HTTP to the local service, against a real HTTP server in this
process: each way a body can be framed, lines split across chunks, a quiet stream, errors said as
the urllib client says them, and no proxy in the way."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kitty_coreml.errors import QueueFull, ServiceError
from kitty_coreml.service.client import RequestRefused, ServiceClient
from kitty_coreml.service.loopback import LoopbackError, loopback_request

EVENTS = b'event: status\ndata: {"status": "started"}\n\nevent: finished\ndata: {"status":\n data: "finished"}\n\n'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    release: threading.Event

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/length":
            self._send(200, b'{"ok": true}', Content_Length="12", Content_Type="application/json")
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in (EVENTS[:7], EVENTS[7:40], EVENTS[40:41], EVENTS[41:]):  # lines cut mid-way
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/until-close":
            self.close_connection = True
            self._send(200, b"line one\nline two")
        elif self.path == "/quiet":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self.release.wait(60)
        elif self.path == "/headers":
            seen = {"host": self.headers["Host"], "key": self.headers.get("X-API-Key")}
            body = json.dumps(seen).encode()
            self._send(200, body, Content_Length=str(len(body)))
        elif self.path == "/not-http":
            self.wfile.write(b"SSH-2.0-OpenSSH\r\n")
            self.close_connection = True

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        answers = {"/api/images/generate": (422, {"detail": "steps: got 0; allowed: an integer 1..150",
                                                  "error": {"code": "invalid_request", "details": {"field": "steps"}}}),
                   "/full/api/images/generate": (429, {"detail": "the queue already holds 100 job(s)"}),
                   "/echo/api/images/generate": (200, {"job_id": "j1", "got": body})}
        status, answer = answers[self.path]
        data = json.dumps(answer).encode()
        self._send(status, data, Content_Length=str(len(data)), Content_Type="application/json")


@pytest.fixture
def server():
    release = threading.Event()
    handler = type("Handler", (_Handler,), {"release": release})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    release.set()
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_a_body_framed_by_its_length(server):
    with loopback_request(server, "GET", "/length", timeout=10) as response:
        assert (response.status, response.headers["content-type"]) == (200, "application/json")
        assert json.loads(response.read()) == {"ok": True}


def test_an_event_stream_in_chunks_reads_line_by_line_across_the_cuts(server):
    with loopback_request(server, "GET", "/chunked", timeout=10) as response:
        lines = list(response)
    assert b"".join(lines) == EVENTS
    assert all(line.endswith(b"\n") for line in lines) and len(lines) == EVENTS.count(b"\n")


def test_a_body_that_ends_with_the_connection(server):
    with loopback_request(server, "GET", "/until-close", timeout=10) as response:
        assert list(response) == [b"line one\n", b"line two"]


def test_a_quiet_stream_times_out(server):
    with loopback_request(server, "GET", "/quiet", timeout=0.2) as response:
        with pytest.raises(TimeoutError):
            list(response)


def test_an_answer_that_is_not_http_is_an_os_error(server):
    with pytest.raises(LoopbackError):
        loopback_request(server, "GET", "/not-http", timeout=10)


def test_the_host_and_the_api_key_are_sent(server):
    client = ServiceClient(server, api_key="k3y", loopback=True)
    assert client._json("GET", "/headers") == {"host": server.removeprefix("http://"), "key": "k3y"}


@pytest.mark.parametrize("prefix, error", [("", RequestRefused), ("/full", QueueFull)])
def test_errors_are_the_same_as_through_urllib(server, prefix, error):
    said = []
    for loopback in (True, False):
        with pytest.raises(error) as raised:
            ServiceClient(server + prefix, loopback=loopback).submit({"prompt": "p", "steps": 0})
        said.append((raised.value.one_line(), raised.value.details))
    assert said[0] == said[1]


def test_a_proxy_in_the_environment_is_not_in_the_way(server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    assert ServiceClient(server + "/echo", loopback=True).submit({"prompt": "p"}) == \
        {"job_id": "j1", "got": {"prompt": "p"}}


def test_nothing_listening_is_a_service_error_saying_where(server):
    closed = "http://127.0.0.1:9"
    with pytest.raises(ServiceError, match="cannot reach the images service at http://127.0.0.1:9"):
        ServiceClient(closed, loopback=True).submit({"prompt": "p"})
