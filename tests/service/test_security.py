"""The API key, and the refusal to bind beyond loopback without one."""

from __future__ import annotations

import subprocess

from tests.conftest import KITTY


def test_api_routes_need_the_key(mock_env, service_factory):
    service = service_factory({**mock_env, "KITTY_COREML_API_KEY": "s3cret-key"})
    with service.client() as anonymous, service.client(**{"X-API-Key": "wrong"}) as wrong, \
            service.client(**{"X-API-Key": "s3cret-key"}) as right:
        for method, path in (("GET", "/api/images/latest"), ("GET", "/api/images/stats"),
                             ("POST", "/api/images/generate"), ("POST", "/api/images/select"),
                             ("GET", "/api/images/jobs/abc"), ("GET", "/api/images/gallery")):
            assert anonymous.request(method, path).status_code == 401, path
            assert wrong.request(method, path).status_code == 403, path
        assert right.get("/api/images/latest").status_code == 200
        assert right.post("/api/images/generate", json={"prompt": "x"}).status_code == 200
        assert anonymous.get("/healthz").status_code == 200
        assert anonymous.get("/vision").status_code == 200  # the page only; its data needs the key


def test_non_loopback_bind_needs_a_key(mock_env):
    run = subprocess.run([KITTY, "serve", "--host", "0.0.0.0", "--port", "0"], env=mock_env,
                         capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1 and "KITTY_COREML_API_KEY" in run.stderr and "0.0.0.0" in run.stderr


def test_a_busy_port_is_one_line(mock_service, mock_env):
    port = mock_service.url.rsplit(":", 1)[1]
    run = subprocess.run([KITTY, "serve", "--port", port], env=mock_env, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert run.returncode == 11 and f"cannot listen on 127.0.0.1:{port}" in run.stderr
    assert run.stderr.count("\n") == 1
