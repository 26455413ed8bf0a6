"""A small client of the images service, on the standard library only, so `kitty-coreml generate
--server URL` stays light: submit a request, follow its job over server-sent events, fetch its status.
Against KITTY's own images-service, which has no event stream, it polls /jobs/{id} as kitty-cli does.
The local service of this home is spoken to directly (service/loopback.py); others through urllib,
which knows proxies, TLS and redirects."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from ..errors import Cancelled, InvalidRequest, KittyError, QueueFull, ServiceError
from ..settings import http_url_problem

__all__ = ["ServiceClient", "JobFailed", "RequestRefused", "POLL_S"]

POLL_S = 1.0
"""How often a job is asked for when the service has no event stream (kitty-cli asks every 2 s)."""


class JobFailed(KittyError):
    """The service ran the job and it failed; the message is the service's one-line error."""

    code = "job_failed"
    exit_code = 5


class RequestRefused(KittyError):
    """The service found a value not allowed (422); the message is its "field: got ...; allowed: ..."."""

    code = "invalid_request"
    exit_code = 2


class _NoEventStream(Exception):
    """The service answered 404 for the event stream of a job it knows: KITTY's service has none."""


class ServiceClient:
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout_s: float = 30.0,
                 loopback: bool = False):
        """loopback: base_url is the `kitty-coreml serve` of this machine (service/local.py found it)."""
        problem = http_url_problem(base_url)
        if problem:
            raise InvalidRequest("server", base_url, f"an http:// or https:// URL like http://127.0.0.1:8089 ({problem})")
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.timeout_s = timeout_s
        self.loopback = loopback

    def _open(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
              redirects: bool = False):
        """The open answer to one request (redirects: follow them, which only urllib does)."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["X-API-Key"] = self.api_key
        try:
            if self.loopback and not redirects:
                return self._open_loopback(method, path, data, headers, timeout or self.timeout_s)
            return self._open_urllib(method, path, data, headers, timeout or self.timeout_s)
        except OSError as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(f"cannot reach the images service at {self.base_url}: {reason}",
                               hint="start it with `kitty-coreml serve`, or check --server") from None

    def _open_loopback(self, method: str, path: str, data: bytes | None, headers: dict[str, str], timeout: float):
        from .loopback import loopback_request

        response = loopback_request(self.base_url, method, path, body=data, headers=headers, timeout=timeout)
        if response.status >= 400:
            with response:
                raise _http_error(response.status, response.reason, response.read(), self.base_url)
        return response

    def _open_urllib(self, method: str, path: str, data: bytes | None, headers: dict[str, str], timeout: float):
        import urllib.error
        import urllib.request

        request = urllib.request.Request(self.base_url + path, data=data, headers=headers, method=method)
        try:
            return urllib.request.urlopen(request, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc.code, exc.reason, exc.read(), self.base_url) from None

    def _json(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        with self._open(method, path, body) as response:
            return json.loads(response.read())

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /api/images/generate: {job_id, status: "queued", position, seed, run_id}."""
        return self._json("POST", "/api/images/generate", body)

    def job(self, job_id: str) -> dict[str, Any]:
        return self._json("GET", f"/api/images/jobs/{job_id}")

    def image(self, key: str) -> bytes:
        """The PNG of a key (GET /api/images/file/KEY: the local store's file, or S3 through a redirect)."""
        from urllib.parse import quote

        with self._open("GET", f"/api/images/file/{quote(key)}", redirects=True) as response:
            return response.read()

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._json("POST", f"/api/images/jobs/{job_id}/cancel")

    def events(self, job_id: str, *, timeout: float = 3600) -> Iterator[tuple[str, Any]]:
        """(event, data) pairs of the job's event stream, until its final event; a stream quiet for
        `timeout` seconds raises TimeoutError. _NoEventStream when the service has no stream for a job
        it knows."""
        try:
            opened = self._open("GET", f"/api/images/jobs/{job_id}/events", timeout=timeout)
        except ServiceError as exc:
            if (exc.details or {}).get("status") != 404:
                raise
            self.job(job_id)  # an unknown job is its own 404, said as such
            raise _NoEventStream() from None
        with opened as response:
            event, data = "message", []
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].lstrip())

    def wait(self, job_id: str, on_progress: Callable[[dict[str, Any]], None] | None = None,
             on_status: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Follow a job to its end: the result of a finished job; JobFailed or Cancelled otherwise. Ctrl-C
        cancels the job on the service before it is passed on (where the service can cancel)."""
        try:
            try:
                for event, data in self.events(job_id):
                    if event == "progress" and on_progress:
                        on_progress(data)
                    elif event == "status" and on_status:
                        on_status(data)
                    elif event in ("finished", "failed"):
                        return _outcome(data)
            except _NoEventStream:
                return self._poll(job_id, on_status)
        except KeyboardInterrupt:
            self._cancel_quietly(job_id)
            raise
        return _outcome(self.job(job_id))  # the stream ended early (a proxy cut it): ask once more

    def _poll(self, job_id: str, on_status: Callable[[dict[str, Any]], None] | None) -> dict[str, Any]:
        last = None
        while True:
            job = self.job(job_id)
            if job.get("status") in ("finished", "failed"):
                return _outcome({"job_id": job_id, **job})
            if job.get("status") != last and on_status:
                on_status({"job_id": job_id, **job})
            last = job.get("status")
            time.sleep(POLL_S)

    def _cancel_quietly(self, job_id: str) -> None:
        try:
            self.cancel(job_id)
        except ServiceError:
            pass  # KITTY's service has no cancel: the job runs on there


def _outcome(job: dict[str, Any]) -> dict[str, Any]:
    if job["status"] == "finished":
        return job.get("result") or {}
    if job["status"] == "failed" and job.get("cancelled"):
        raise Cancelled(f"job {job['job_id']} was cancelled: {job.get('error') or 'cancelled'}")
    if job["status"] == "failed":
        raise JobFailed(f"job {job['job_id']} failed: {job.get('error') or 'no error given'}")
    raise ServiceError(f"job {job['job_id']} is still {job['status']} but its event stream ended")


def _http_error(status: int, reason: str, answer: bytes, base_url: str) -> KittyError:
    try:
        payload = json.loads(answer or b"{}")
    except ValueError:
        payload = {}
    detail = payload.get("detail") if isinstance(payload, dict) else None
    error = payload.get("error") if isinstance(payload, dict) else None
    message = detail if isinstance(detail, str) else reason
    if status == 422:
        return RequestRefused(message, details=error.get("details") if isinstance(error, dict) else None)
    if status == 429:
        return QueueFull(f"the images service at {base_url} is full: {message}", hint="try again shortly")
    if status in (401, 403):
        return ServiceError(f"the images service at {base_url} refused the API key ({status}: {message})",
                            hint="set KITTY_COREML_API_KEY to the service's key")
    return ServiceError(f"the images service at {base_url} answered {status}: {message}",
                        details={"status": status})
