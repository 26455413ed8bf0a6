"""Running `systemsculpt-local-imagegen` as the Studio host does (cwd /, no stdin, the request in a file)
against three backends: the fake StableDiffusionSample with fake bundles for every ratio, the mock
backend, and (live, on a Mac) the real binary and models. Every run goes through host_rules."""

from __future__ import annotations

import itertools
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kitty_coreml.studio import RATIO_SIZES, RatioEntry, write_manifest
from tests.conftest import BIN_DIR, clean_env
from tests.fakes import make_resources, write_fake_binary
from tests.studio.host_rules import Outcome, check_outcome

PROVIDER = str(BIN_DIR / "systemsculpt-local-imagegen")
LIVE_FLAGS = ("SYSTEMSCULPT_LOCAL_IMAGEGEN_LIVE", "KITTY_COREML_LIVE")
_counter = itertools.count()


def live_skip_reason() -> str | None:
    """None when the live suite can run here; otherwise why not."""
    if not any(os.environ.get(flag, "").strip().lower() in ("1", "true", "yes", "on") for flag in LIVE_FLAGS):
        return "live Studio cases need SYSTEMSCULPT_LOCAL_IMAGEGEN_LIVE=1 or KITTY_COREML_LIVE=1"
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return f"live Studio cases need macOS on Apple Silicon; this is {platform.system()} {platform.machine()}"
    return None


def request(prompt: str = "a red cube", **fields: Any) -> dict[str, Any]:
    """A v1 request as the host writes it."""
    body = {"schema": "studio.local-image-generation.request.v1", "prompt": prompt, "count": 1,
            "aspectRatio": "1:1", "runId": "run_abc", "inputImages": [],
            "localOptions": {"quality": "balanced", "referenceInfluence": "balanced"}}
    body.update(fields)
    return body


def staged_image(path: Path) -> dict[str, Any]:
    return {"hash": "sha256-test", "mimeType": "image/png", "sizeBytes": path.stat().st_size,
            "stagedPath": str(path)}


@dataclass
class Provider:
    """One backend's environment and a way to send it requests."""

    name: str
    env: dict[str, str]
    workdir: Path
    ratio_sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    """The ratios this backend can make and the size each has."""

    def write_request(self, body: dict[str, Any] | str | bytes) -> Path:
        path = self.workdir / f"request-{next(_counter)}.json"
        data = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
        path.write_bytes(data)
        return path

    def command(self, body: dict[str, Any] | str | bytes) -> list[str]:
        return [PROVIDER, "--request", str(self.write_request(body))]

    def run(self, body: dict[str, Any] | str | bytes | None = None, *, args: list[str] | None = None,
            extra_env: dict[str, str] | None = None, timeout: float = 120) -> Outcome:
        argv = [PROVIDER, *args] if args is not None else self.command(body)
        proc = subprocess.run(argv, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              env={**self.env, **(extra_env or {})}, timeout=timeout)
        return check_outcome(proc.returncode, proc.stdout, proc.stderr)

    def start(self, body: dict[str, Any], *, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        return subprocess.Popen(self.command(body), cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env={**self.env, **(extra_env or {})})


def fake_bundles(root: Path) -> dict[str, Path]:
    """A fake Core ML bundle with a VAE encoder for each of the host's ratios."""
    return {label: make_resources(root / label.replace(":", "x"), width=w, height=h, encoder=True)
            for label, (w, h) in RATIO_SIZES.items()}


def fake_provider(tmp: Path, bundles: dict[str, Path]) -> Provider:
    """The coreml_diffusion backend on the fake binary, with a manifest mapping every ratio."""
    (tmp / "bin").mkdir(exist_ok=True)
    binary = write_fake_binary(tmp / "bin")
    manifest = write_manifest(tmp / "studio-manifest.json",
                              {label: RatioEntry(path, *RATIO_SIZES[label]) for label, path in bundles.items()})
    env = clean_env(KITTY_COREML_HOME=str(tmp / "home"), SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN=str(binary),
                    SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH=str(manifest.path),
                    FAKE_SD_ARGV_LOG=str(tmp / "argv.jsonl"))
    return Provider("fake", env, tmp, dict(RATIO_SIZES))


def mock_provider(tmp: Path) -> Provider:
    env = clean_env(KITTY_COREML_HOME=str(tmp / "home"), SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND="mock")
    return Provider("mock", env, tmp, dict(RATIO_SIZES))


def live_provider(tmp: Path) -> Provider:
    """The user's own setup: their environment, binary, models and manifest, found as the provider finds
    them (studio/discovery.py)."""
    from kitty_coreml.models import model_from_folder
    from kitty_coreml.settings import Settings, StudioSettings
    from kitty_coreml.studio.discovery import report

    found = report(StudioSettings.from_env(), Settings.from_env())
    sizes: dict[str, tuple[int, int]] = {}
    for label, entry in found["ratios"].items():
        if entry["path"]:
            model = model_from_folder(Path(entry["path"]))
            w, h = RATIO_SIZES[label]
            if w * model.height == h * model.width:  # a RESOURCE_PATH override makes only its own ratio
                sizes[label] = (model.width, model.height)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FAKE_SD_")}
    return Provider("live", env, tmp, sizes)


def argv_log(provider: Provider) -> list[list[str]]:
    """The argv of each fake binary run so far."""
    path = Path(provider.env["FAKE_SD_ARGV_LOG"])
    return [json.loads(line)["argv"] for line in path.read_text().splitlines()] if path.exists() else []


def option(argv: list[str], name: str) -> str | None:
    """The value of `--name=value` in an argv, or None."""
    prefix = f"--{name}="
    values = [a[len(prefix):] for a in argv[: argv.index("--") if "--" in argv else len(argv)] if a.startswith(prefix)]
    return values[-1] if values else None


ORIGINAL_SQUARE = ("coreml-stable-diffusion-2-1-base-palettized_split_einsum_v2_compiled/"
                   "coreml-stable-diffusion-2-1-base-palettized_split_einsum_v2_compiled")
ORIGINAL_RATIO_FOLDERS = {"4:3": "4x3-768x576", "3:4": "3x4-576x768", "16:9": "16x9-1024x576",
                          "9:16": "9x16-576x1024"}
ORIGINAL_PROFILE = "sd21-palettized-split-einsum-v2"


def original_home(root: Path) -> Path:
    """A home folder laid out exactly as the original installer (and its build-ratio-bundles.mjs) leaves
    it: the binary in ~/gits/apps/ml-stable-diffusion/.build/release, the downloaded 1:1 bundle (split
    einsum, with VAEEncoder, as the 2.1 zip holds) and the converted native-ratio bundles (ORIGINAL
    attention, VAE encoder converted) under ~/.systemsculpt/local-image-models. It writes no manifest."""
    home = root / "Users" / "studio-user"
    release = home / "gits/apps/ml-stable-diffusion/.build/release"
    release.mkdir(parents=True)
    write_fake_binary(release)
    models = home / ".systemsculpt/local-image-models"
    make_resources(models / ORIGINAL_SQUARE, encoder=True)
    for label, folder in ORIGINAL_RATIO_FOLDERS.items():
        width, height = RATIO_SIZES[label]
        make_resources(models / "native-ratios" / ORIGINAL_PROFILE / folder / "Resources", width=width,
                       height=height, attention="original", encoder=True)
    return home


def original_bundle(home: Path, label: str) -> Path:
    models = home / ".systemsculpt/local-image-models"
    if label == "1:1":
        return models / ORIGINAL_SQUARE
    return models / "native-ratios" / ORIGINAL_PROFILE / ORIGINAL_RATIO_FOLDERS[label] / "Resources"


def original_manifest(path: Path) -> Path:
    """A manifest in the original's format (scripts/local-diffusion/model-manifest.json): ${HOME} paths,
    ORIGINAL attention for the ratio bundles."""
    ratios = {}
    for label, (width, height) in RATIO_SIZES.items():
        entry = {"width": width, "height": height, "latentWidth": width // 8, "latentHeight": height // 8,
                 "resourcePath": str(original_bundle(Path("${HOME}"), label)),
                 "source": "downloaded_compiled_bundle" if label == "1:1" else "converted_local"}
        if label != "1:1":
            entry["attentionImplementation"] = "ORIGINAL"
        ratios[label] = entry
    path.write_text(json.dumps({"schema": "studio.local-diffusion.model-manifest.v1", "version": 1,
                                "profileId": "sd21_palettized_split_einsum_v2", "ratios": ratios}))
    return path


def original_provider(tmp: Path, home: Path, **exports: str) -> Provider:
    """The provider as a Studio user who swapped the command in runs it: HOME is theirs, no KITTY_COREML_*
    variable, only the SYSTEMSCULPT_* exports given (none: nothing set at all)."""
    env = clean_env(HOME=str(home), FAKE_SD_ARGV_LOG=str(tmp / "argv.jsonl"), **exports)
    return Provider("original", env, tmp, dict(RATIO_SIZES))


def write_fake_worker(dest_dir: Path) -> Path:
    """An executable stand-in for kitty-coreml-worker (tests/fakes/coreml_worker.py)."""
    script = Path(__file__).resolve().parents[1] / "fakes" / "coreml_worker.py"
    binary = Path(dest_dir) / "kitty-coreml-worker"
    binary.write_text(f"#!{sys.executable}\nimport runpy\nrunpy.run_path({str(script)!r}, run_name='__main__')\n")
    binary.chmod(0o755)
    return binary
