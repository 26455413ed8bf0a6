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


# ---- the front door: what a web page in the user's browser can and cannot make the service do ----------

BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
           "Accept": "*/*", "Accept-Language": "en-US,en;q=0.9"}


def cross_site(origin: str = "http://evil.example") -> dict[str, str]:
    """The headers Chromium sends with a no-cors POST from another site: no preflight for text/plain."""
    return {**BROWSER, "Origin": origin, "Content-Type": "text/plain;charset=UTF-8", "Sec-Fetch-Site": "cross-site",
            "Sec-Fetch-Mode": "no-cors", "Sec-Fetch-Dest": "empty"}


def counted(client) -> int:
    stats = client.get("/api/images/stats").json()
    return sum(stats[state] for state in ("queued", "started", "finished", "failed"))


def test_cross_site_posts_neither_queue_nor_cancel(env, service_factory):
    service = service_factory({**env, "FAKE_SD_HANG_AT_STEP": "1"})
    with service.client() as client:
        running = client.post("/api/images/generate", json={"prompt": "holds the engine", "steps": 4}).json()
        waiting = client.post("/api/images/generate", json={"prompt": "waits", "steps": 4}).json()
        before = counted(client)
        forged = client.post("/api/images/generate", content='{"prompt": "forged"}', headers=cross_site())
        assert forged.status_code == 403 and forged.json()["error"]["code"] == "cross_origin"
        assert "http://evil.example" in forged.json()["detail"]
        cancel = client.post(f"/api/images/jobs/{waiting['job_id']}/cancel", headers=cross_site())
        assert cancel.status_code == 403
        assert client.get(f"/api/images/jobs/{waiting['job_id']}").json()["status"] == "queued"
        assert counted(client) == before
        # a text/plain body is refused even without an Origin: JSON travels only as application/json
        plain = client.post("/api/images/generate", content='{"prompt": "x"}', headers={"Content-Type": "text/plain"})
        assert plain.status_code == 415 and "application/json" in plain.json()["detail"]
        # the service's own page (same origin) and a client without Origin (kitty-cli) are obeyed
        own = client.post("/api/images/generate", json={"prompt": "own page"},
                          headers={**BROWSER, "Origin": service.url, "Sec-Fetch-Site": "same-origin"})
        assert own.status_code == 200
        assert client.post(f"/api/images/jobs/{running['job_id']}/cancel").status_code == 200


def test_a_page_in_chromium_cannot_queue_a_generation(mock_service, tmp_path):
    """A real browser: a page served from another origin POSTs to the service the way a CSRF page does
    (fetch no-cors with a text/plain body, and a form submit); nothing is queued."""
    import http.server
    import threading

    from .test_gallery import chromium

    target = f"{mock_service.url}/api/images/generate"
    page = tmp_path / "site" / "index.html"
    page.parent.mkdir()
    page.write_text(f"""<!doctype html><body>
<form id="f" method="POST" action="{target}" enctype="text/plain" target="sink">
<input name='{{"prompt": "form", "x": "' value='"}}'></form><iframe name="sink"></iframe>
<script>
fetch({target!r}, {{method: "POST", mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
       body: JSON.stringify({{prompt: "fetched"}})}})
  .then(() => {{ document.body.insertAdjacentHTML("beforeend", "<p id=sent>sent</p>"); document.getElementById("f").submit(); }});
</script></body>""")
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(page.parent), **k)  # noqa: E731
    site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    try:
        dom = chromium(tmp_path, f"http://127.0.0.1:{site.server_address[1]}/index.html", "--dump-dom")
    finally:
        site.shutdown()
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="sent"' in dom.stdout  # the browser did send the forged request
    with mock_service.client() as client:
        assert counted(client) == 0


def test_dns_rebinding_host_names_are_refused(mock_env, service_factory):
    service = service_factory({**mock_env, "KITTY_COREML_ALLOWED_HOSTS": "images.lan"})
    port = service.url.rsplit(":", 1)[1]
    with service.client() as client:
        rebound = client.get("/api/images/gallery", headers={**BROWSER, "Host": f"attacker.example:{port}"})
        assert rebound.status_code == 421 and "attacker.example" in rebound.json()["detail"]
        assert client.get("/vision", headers={"Host": "attacker.example"}).status_code == 421
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"images.lan:{port}", "LOCALHOST"):
            assert client.get("/api/images/gallery", headers={"Host": host}).status_code == 200, host


def test_cors_is_closed_by_default(mock_service):
    with mock_service.client() as client:
        preflight = client.options("/api/images/generate", headers={
            **BROWSER, "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
        read = client.get("/api/images/stats", headers={**BROWSER, "Origin": "https://app.example"})
        assert read.status_code == 200 and "access-control-allow-origin" not in read.headers


def test_cors_allow_list_opens_the_api_to_listed_origins(mock_env, service_factory):
    service = service_factory({**mock_env, "KITTY_COREML_CORS_ORIGINS": "https://app.example, http://ui.lan:3000"})
    with service.client() as client:
        preflight = client.options("/api/images/generate", headers={
            **BROWSER, "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-api-key"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        assert "x-api-key" in preflight.headers["access-control-allow-headers"].lower()
        posted = client.post("/api/images/generate", json={"prompt": "from the ui"},
                             headers={**BROWSER, "Origin": "http://ui.lan:3000", "Sec-Fetch-Site": "cross-site"})
        assert posted.status_code == 200 and posted.headers["access-control-allow-origin"] == "http://ui.lan:3000"
        other = client.post("/api/images/generate", json={"prompt": "x"},
                            headers={**BROWSER, "Origin": "https://other.example"})
        assert other.status_code == 403


def test_cors_star_lets_every_origin_but_the_key_still_applies(mock_env, service_factory):
    service = service_factory({**mock_env, "KITTY_COREML_CORS_ORIGINS": "*", "KITTY_COREML_API_KEY": "k3y"})
    with service.client() as client:
        origin = {**BROWSER, "Origin": "https://anything.example"}
        assert client.post("/api/images/generate", json={"prompt": "x"}, headers=origin).status_code == 401
        posted = client.post("/api/images/generate", json={"prompt": "x"}, headers={**origin, "X-API-Key": "k3y"})
        assert posted.status_code == 200
        assert posted.headers["access-control-allow-origin"] == "https://anything.example"


# ---- a run id is a label, never a path -------------------------------------------------------------


def _engine_folders(log) -> list:
    import json
    from pathlib import Path

    return [Path(json.loads(line)["cwd"]) for line in log.read_text().splitlines()]


def test_run_id_over_http_never_shapes_a_path(env, service_factory, tmp_path, home):
    from kitty_coreml.seeds import studio_seed

    log = tmp_path / "argv.jsonl"
    service = service_factory({**env, "FAKE_SD_ARGV_LOG": str(log)})
    hostile = ["../../../escaped", f"{tmp_path}/absolute", "..", "a/../../b"]
    with service.client() as client:
        for run_id in hostile:
            job = client.post("/api/images/generate", json={"prompt": "a cube", "run_id": run_id, "steps": 2}).json()
            from .conftest import wait_job

            done = wait_job(client, job["job_id"])
            assert done["status"] == "finished", done
            assert done["result"]["runId"] == run_id and done["result"]["seed"] == studio_seed("a cube", run_id)
    folders = _engine_folders(log)
    assert len(folders) == len(hostile)
    for folder in folders:
        assert folder.resolve().parent == (home / "runs").resolve(), folder
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["argv.jsonl", "bin", "home", "sd21"])


def test_run_id_on_the_command_line_never_shapes_a_path(kitty, tmp_path, home):
    log = tmp_path / "argv.jsonl"
    run = kitty("generate", "a cube", "--run-id", "../../outside", "--steps", "2", "--json",
                extra_env={"FAKE_SD_ARGV_LOG": str(log)})
    assert run.returncode == 0, run.stderr
    assert run.json["runId"] == "../../outside"
    [folder] = _engine_folders(log)
    assert folder.resolve().parent == (home / "runs").resolve()
    assert not (tmp_path.parent / "outside").exists() and list((home / "runs").iterdir()) == []
