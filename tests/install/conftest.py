"""Local stand-ins for what `kitty-coreml install` talks to: a bare git repository as the
ml-stable-diffusion remote, a stub `swift` that records its arguments and writes an executable, and a
real HTTP server answering the requests huggingface_hub makes (HF_ENDPOINT points it there), serving a
zip of a fake resource folder."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.fakes import make_resources

CLI = Path(sys.executable).with_name("kitty-coreml")
REPO = "apple/coreml-stable-diffusion-2-1-base-palettized"
STEM = "coreml-stable-diffusion-2-1-base-palettized_split_einsum_v2_compiled"
ARCHIVE = f"{STEM}.zip"
MODEL_COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAD_BYTES = 3 * 1024 * 1024
"""Incompressible weights in the fake Unet, so a download takes several reads and can stop midway."""


class FakeHub:
    """Answers HEAD and GET /{repo}/resolve/{revision}/{file} like the hub: X-Repo-Commit,
    X-Linked-Etag (the LFS sha256), X-Linked-Size, byte ranges. Faults on demand: corrupt the next
    GETs, or stop a GET after `stall_at` bytes until `release` is set (the connection then closes)."""

    def __init__(self):
        self.files: dict[tuple[str, str], tuple[str, bytes]] = {}
        self.requests: list[dict] = []
        self.corrupt_gets = 0
        self.stall_at: int | None = None
        self.release = threading.Event()
        self.lock = threading.Lock()
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub._answer(self, body=False)

            def do_GET(self):
                hub._answer(self, body=True)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, repo: str, filename: str, data: bytes, commit: str = MODEL_COMMIT) -> None:
        self.files[(repo, filename)] = (commit, data)

    def gets(self) -> list[dict]:
        return [r for r in self.requests if r["method"] == "GET"]

    def _answer(self, handler: BaseHTTPRequestHandler, *, body: bool) -> None:
        match = re.fullmatch(r"/(.+?/.+?)/resolve/([^/]+)/(.+)", handler.path.split("?")[0])
        with self.lock:
            self.requests.append({"method": handler.command, "path": handler.path,
                                  "range": handler.headers.get("Range")})
        found = self.files.get((match.group(1), match.group(3))) if match else None
        if found is None or match.group(2) not in (found[0], "main"):
            handler.send_response(404)
            handler.send_header("X-Error-Code", "EntryNotFound")
            handler.send_header("Content-Length", "0")
            handler.end_headers()
            return
        commit, data = found
        sha = hashlib.sha256(data).hexdigest()
        start = 0
        wanted = re.fullmatch(r"bytes=(\d+)-", handler.headers.get("Range") or "")
        if body and wanted:
            start = int(wanted.group(1))
        handler.send_response(206 if start else 200)
        handler.send_header("X-Repo-Commit", commit)
        handler.send_header("X-Linked-Etag", f'"{sha}"')
        handler.send_header("X-Linked-Size", str(len(data)))
        handler.send_header("ETag", f'"{sha}"')
        handler.send_header("Accept-Ranges", "bytes")
        if start:
            handler.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        handler.send_header("Content-Length", str(len(data) - start))
        handler.end_headers()
        if not body:
            return
        payload = bytearray(data[start:])
        with self.lock:
            corrupt, self.corrupt_gets = self.corrupt_gets > 0, max(0, self.corrupt_gets - 1)
            stall, self.stall_at = self.stall_at, None
        if corrupt:
            payload[len(payload) // 2] ^= 0xFF
        if stall is not None:
            handler.wfile.write(bytes(payload[:stall - start]))
            handler.wfile.flush()
            self.release.wait(60)
            handler.close_connection = True
            return
        handler.wfile.write(bytes(payload))


def build_archive(tmp: Path) -> bytes:
    """Apple's archive layout: one top folder named after the stem, the resource folder inside it."""
    folder = make_resources(tmp / "archive-src" / STEM, family="sd", width=512, height=512,
                            attention="split_einsum", encoder=True)
    (folder / "Unet.mlmodelc" / "weights" / "weight.bin").write_bytes(
        hashlib.shake_256(b"kitty").digest(PAD_BYTES))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.parent.rglob("*")):
            zf.write(path, path.relative_to(folder.parent).as_posix())
    return buffer.getvalue()


def _git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid",
                           "-c", "init.defaultBranch=main", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_ml_sd_remote(tmp: Path) -> tuple[Path, list[str]]:
    """A bare repository with two commits standing in for ml-stable-diffusion; returns (path, commits)."""
    work = tmp / "ml-sd-work"
    work.mkdir()
    _git("init", "-q", cwd=work)
    commits = []
    for version in (1, 2):
        (work / "Package.swift").write_text(f"// swift-tools-version: 5.8\n// stand-in v{version}\n")
        _git("add", "-A", cwd=work)
        _git("commit", "-q", "-m", f"v{version}", cwd=work)
        commits.append(_git("rev-parse", "HEAD", cwd=work))
    bare = tmp / "ml-stable-diffusion.git"
    _git("clone", "-q", "--bare", str(work), str(bare))
    return bare, commits


STUB_SWIFT = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["FAKE_SWIFT_LOG"], "a") as log:
    log.write(json.dumps({{"argv": args, "cwd": os.getcwd()}}) + "\\n")
if args[:3] != ["build", "-c", "release"]:
    sys.exit("stub swift: unexpected arguments " + " ".join(args))
if "--package-path" in args:
    package, product = Path(args[args.index("--package-path") + 1]), "kitty-coreml-worker"
else:
    package, product = Path.cwd(), args[args.index("--product") + 1]
out = package / ".build" / "release"
out.mkdir(parents=True, exist_ok=True)
print("[1/2] Compiling " + product)
print("Build complete!")
binary = out / product
binary.write_text("#!/bin/sh\\necho " + product + " stand-in\\n")
binary.chmod(0o755)
"""


class Stage:
    """Everything one install run needs, and helpers to run the CLI against it."""

    def __init__(self, tmp: Path, hub: FakeHub):
        self.tmp = tmp
        self.hub = hub
        self.home = tmp / "home"
        self.links = tmp / "links"
        self.remote, self.commits = make_ml_sd_remote(tmp)
        self.archive = build_archive(tmp)
        hub.add(REPO, ARCHIVE, self.archive)
        stub_dir = tmp / "stub-bin"
        stub_dir.mkdir()
        (stub_dir / "swift").write_text(STUB_SWIFT.format(python=sys.executable))
        (stub_dir / "swift").chmod(0o755)
        self.swift_log = tmp / "swift.log"
        source = tmp / "kitty-src" / "swift_bridge"
        source.mkdir(parents=True)
        (source / "Package.swift").write_text("// swift-tools-version: 5.8\n// stand-in for swift_bridge\n")
        self.catalog = tmp / "catalog.json"
        self.write_catalog(sha256=hashlib.sha256(self.archive).hexdigest())
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("KITTY_COREML_", "HF_", "HUGGING", "SYSTEMSCULPT_", "S3_"))}
        env.update({
            "PATH": f"{stub_dir}{os.pathsep}{env.get('PATH', '')}",
            "KITTY_COREML_HOME": str(self.home),
            "KITTY_COREML_INSTALL_COREML": "yes",
            "KITTY_COREML_CATALOG": str(self.catalog),
            "KITTY_COREML_ML_SD_REPO": str(self.remote),
            "KITTY_COREML_ML_SD_COMMIT": self.commits[0],
            "KITTY_COREML_SOURCE_DIR": str(tmp / "kitty-src"),
            "KITTY_COREML_LINK_DIR": str(self.links),
            "KITTY_COREML_PROGRESS": "plain",
            "HF_ENDPOINT": hub.url,
            "HF_HOME": str(tmp / "hf-home"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "FAKE_SWIFT_LOG": str(self.swift_log),
        })
        self.env = env

    def write_catalog(self, *, sha256: str | None) -> None:
        self.catalog.write_text(json.dumps([{
            "name": "sd21-palettized", "repo": REPO, "filename": ARCHIVE, "revision": MODEL_COMMIT,
            "size_bytes": len(self.archive), "sha256": sha256, "family": "sd", "width": 512, "height": 512,
            "attention": "split_einsum", "description": "stand-in archive served by the fake hub"}]))

    def swift_calls(self) -> list[dict]:
        if not self.swift_log.exists():
            return []
        return [json.loads(line) for line in self.swift_log.read_text().splitlines()]

    def command(self, *args: str) -> list[str]:
        return [str(CLI), *args]

    def run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(*args), env=self.env, capture_output=True, text=True, timeout=timeout)

    def install_json(self, *args: str) -> dict:
        done = self.run("install", "--json", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    @property
    def model_dir(self) -> Path:
        return self.home / "models" / "sd21-palettized"


@pytest.fixture
def hub():
    server = FakeHub()
    server.thread.start()
    yield server
    server.release.set()
    server.server.shutdown()
    server.server.server_close()


@pytest.fixture
def stage(tmp_path, hub) -> Stage:
    return Stage(tmp_path, hub)
