"""Every environment variable kitty-coreml reads, read here and nowhere else.

Other modules take a Settings (or single values from it) as arguments. `Settings.from_env()` reads
the process environment; tests pass a dict instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .errors import ConfigError

__all__ = ["Settings", "StudioSettings", "parse_bool", "ENGINE_NAMES", "PROGRESS_MODES", "STUDIO_BACKENDS"]

ENGINE_NAMES = ("auto", "sample", "coreml-worker", "diffusers", "mock")
PROGRESS_MODES = ("auto", "bar", "plain", "ndjson", "none")
ML_SD_COMMIT = "e12202c1f6405b83918b58a5d097cd61e3e1f702"
"""The ml-stable-diffusion commit every build and the Swift worker's Package.swift pin."""
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_bool(name: str, raw: str | None, default: bool) -> bool:
    """Booleans as the Studio host spells them: 1/true/yes/on and 0/false/no/off; empty is the default."""
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name}: got {raw!r}; allowed: 1/true/yes/on or 0/false/no/off")


def _choice(name: str, raw: str | None, allowed: tuple[str, ...], default: str) -> str:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip()
    if value not in allowed:
        raise ConfigError(f"{name}: got {raw!r}; allowed: {', '.join(allowed)}")
    return value


def _number(name: str, raw: str | None, default: float, minimum: float) -> float:
    if raw is None or raw.strip() == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: got {raw!r}; allowed: a number >= {minimum:g}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name}: got {raw!r}; allowed: a finite number >= {minimum:g}")
    return value


def _commit(raw: str | None) -> str:
    pinned = ML_SD_COMMIT
    if raw is None or raw.strip() == "":
        return pinned
    value = raw.strip().lower()
    if len(value) != 40 or any(c not in "0123456789abcdef" for c in value):
        raise ConfigError(f"KITTY_COREML_ML_SD_COMMIT: got {raw!r}; allowed: a full 40-hex-digit commit "
                          f"(default {pinned})")
    return value


def _path(raw: str | None) -> Path | None:
    if raw is None or raw.strip() == "":
        return None
    return Path(os.path.expandvars(raw.strip())).expanduser()


class Settings(BaseModel):
    """Settings of one kitty-coreml process. Defaults are those a user gets with no variable set."""

    model_config = ConfigDict(frozen=True)

    home: Path
    """KITTY_COREML_HOME: everything kitty-coreml keeps (images, outbox, models, locks). ~/.kitty-coreml"""
    engine: str = "auto"
    """KITTY_COREML_ENGINE: auto, sample (Apple's binary), coreml-worker (swift_bridge), diffusers, mock."""
    sample_bin: Path | None = None
    """KITTY_COREML_SAMPLE_BIN: StableDiffusionSample; default HOME/bin/StableDiffusionSample, then PATH."""
    worker_bin: Path | None = None
    """KITTY_COREML_WORKER_BIN: the swift_bridge worker; default HOME/bin/kitty-coreml-worker."""
    resource_path: Path | None = None
    """KITTY_COREML_RESOURCE_PATH: resource folder of the default Core ML model."""
    model: str | None = None
    """KITTY_COREML_MODEL: name (or folder) of the default model."""
    timeout_s: float = 900.0
    """KITTY_COREML_TIMEOUT_S: default limit on one generation, seconds."""
    idle_unload_s: float = 600.0
    """KITTY_COREML_IDLE_UNLOAD_S: a warm worker idle this long is shut down."""
    progress: str = "auto"
    """KITTY_COREML_PROGRESS: auto (bar on a terminal, plain lines otherwise), bar, plain, ndjson, none."""
    store: Literal["local", "s3"] = "local"
    """KITTY_COREML_STORE: local or s3; s3 when S3_BUCKET is set."""
    s3_endpoint_url: str | None = None
    """S3_ENDPOINT_URL: MinIO or any S3 endpoint; AWS when unset."""
    s3_bucket: str = "kitty-artifacts"
    """S3_BUCKET."""
    s3_region: str = "us-east-1"
    """S3_REGION."""
    s3_access_key: str | None = None
    """S3_ACCESS_KEY."""
    s3_secret_key: str | None = None
    """S3_SECRET_KEY."""
    prefix: str = "images/"
    """S3_PREFIX: key prefix of images, in S3 and in the local store alike."""
    s3_create_bucket: bool = False
    """KITTY_COREML_S3_CREATE_BUCKET: create a missing bucket instead of failing."""
    presign_expiry_s: int = 86400
    """KITTY_COREML_PRESIGN_EXPIRY_S: lifetime of a presigned download URL."""
    s3_retry_total_s: float = 20.0
    """KITTY_COREML_S3_RETRY_TOTAL_S: longest time one S3 operation keeps retrying transient failures."""
    api_key: str | None = None
    """KITTY_COREML_API_KEY: when set, every /api route needs the X-API-Key header."""
    redis_url: str | None = None
    """REDIS_URL: use the distributed (RQ) queue."""
    service_port: int = 8089
    """SERVICE_PORT."""
    queue_max: int = 100
    """KITTY_COREML_QUEUE_MAX: most jobs waiting in the service's queue; a submission beyond it gets 429."""
    job_retention_s: float = 86400.0
    """KITTY_COREML_JOB_RETENTION_S: how long a finished job's status and result stay answerable, seconds."""
    live: bool = False
    """KITTY_COREML_LIVE or SYSTEMSCULPT_LOCAL_IMAGEGEN_LIVE: run the live suites on a Mac."""
    ml_sd_repo_url: str = "https://github.com/apple/ml-stable-diffusion.git"
    """KITTY_COREML_ML_SD_REPO: where `kitty-coreml install` clones ml-stable-diffusion from (a mirror or a
    local path); the pinned commit is checked out whatever the source."""
    ml_sd_commit: str = ML_SD_COMMIT
    """KITTY_COREML_ML_SD_COMMIT: the ml-stable-diffusion commit built (40 hex digits); change it only on
    purpose (a newer commit under test, or a test repository)."""
    source_dir: Path | None = None
    """KITTY_COREML_SOURCE_DIR: the kitty-coreml clone whose swift_bridge/ is built; default: the folder the
    package was installed from when it holds swift_bridge/ (installers/install.sh sets it)."""
    catalog_path: Path | None = None
    """KITTY_COREML_CATALOG: a JSON file of extra installable models (your own converted models or a mirror),
    a list of objects with CatalogEntry's fields; an entry named like a built-in one replaces it."""
    install_coreml: Literal["auto", "yes", "no"] = "auto"
    """KITTY_COREML_INSTALL_COREML: auto (the Core ML steps run on macOS 13.1+ on Apple Silicon), yes (run them
    anywhere, e.g. to prepare a folder for a Mac), no (skip them)."""
    link_dir: Path | None = None
    """KITTY_COREML_LINK_DIR: where `kitty-coreml install` links the commands; default: the first writable of
    ~/.local/bin, /opt/homebrew/bin, /usr/local/bin on PATH, else ~/.local/bin; `none`: no links."""
    search_path: tuple[Path, ...] = ()
    """PATH: the folders searched for programs (read here for choosing where to link the commands)."""
    # KITTY drop-in (engineer kitty): KITTY's model names and RQ queue name.
    models_yaml: Path | None = None
    """MODELS_YAML: KITTY's models.yaml (a map: model name -> folder, diffusers or Core ML resources)."""
    queue_name: str = "images"
    """KITTY_COREML_QUEUE_NAME: the RQ queue the service fills and workers pull (KITTY's is `images`)."""

    @property
    def images_root(self) -> Path:
        """Root of the local store: keys like images/20261121_101500_abcd1234.png live under it."""
        return self.home / "store"

    @property
    def outbox_dir(self) -> Path:
        return self.home / "outbox"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def registry_path(self) -> Path:
        return self.home / "models.json"

    @property
    def lock_path(self) -> Path:
        return self.home / "generate.lock"

    @property
    def bin_dir(self) -> Path:
        return self.home / "bin"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        get = env.get
        home = _path(get("KITTY_COREML_HOME")) or Path.home() / ".kitty-coreml"
        bucket = (get("S3_BUCKET") or "").strip()
        store = _choice("KITTY_COREML_STORE", get("KITTY_COREML_STORE"), ("local", "s3"),
                        "s3" if bucket else "local")
        prefix = get("S3_PREFIX", "images/").strip().lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        port = _number("SERVICE_PORT", get("SERVICE_PORT"), 8089, 1)
        if port > 65535 or port != int(port):
            raise ConfigError(f"SERVICE_PORT: got {get('SERVICE_PORT')!r}; allowed: an integer 1..65535")
        return cls(
            home=home.absolute(),
            engine=_choice("KITTY_COREML_ENGINE", get("KITTY_COREML_ENGINE"), ENGINE_NAMES, "auto"),
            sample_bin=_path(get("KITTY_COREML_SAMPLE_BIN")),
            worker_bin=_path(get("KITTY_COREML_WORKER_BIN")),
            resource_path=_path(get("KITTY_COREML_RESOURCE_PATH")),
            model=(get("KITTY_COREML_MODEL") or "").strip() or None,
            timeout_s=_number("KITTY_COREML_TIMEOUT_S", get("KITTY_COREML_TIMEOUT_S"), 900.0, 1),
            idle_unload_s=_number("KITTY_COREML_IDLE_UNLOAD_S", get("KITTY_COREML_IDLE_UNLOAD_S"), 600.0, 0),
            progress=_choice("KITTY_COREML_PROGRESS", get("KITTY_COREML_PROGRESS"), PROGRESS_MODES, "auto"),
            store=store,
            s3_endpoint_url=(get("S3_ENDPOINT_URL") or "").strip() or None,
            s3_bucket=bucket or "kitty-artifacts",
            s3_region=(get("S3_REGION") or "").strip() or "us-east-1",
            s3_access_key=get("S3_ACCESS_KEY") or None,
            s3_secret_key=get("S3_SECRET_KEY") or None,
            prefix=prefix,
            s3_create_bucket=parse_bool("KITTY_COREML_S3_CREATE_BUCKET", get("KITTY_COREML_S3_CREATE_BUCKET"), False),
            presign_expiry_s=int(_number("KITTY_COREML_PRESIGN_EXPIRY_S", get("KITTY_COREML_PRESIGN_EXPIRY_S"), 86400, 1)),
            s3_retry_total_s=_number("KITTY_COREML_S3_RETRY_TOTAL_S", get("KITTY_COREML_S3_RETRY_TOTAL_S"), 20.0, 0),
            api_key=get("KITTY_COREML_API_KEY") or None,
            redis_url=(get("REDIS_URL") or "").strip() or None,
            service_port=int(port),
            queue_max=int(_number("KITTY_COREML_QUEUE_MAX", get("KITTY_COREML_QUEUE_MAX"), 100, 1)),
            job_retention_s=_number("KITTY_COREML_JOB_RETENTION_S", get("KITTY_COREML_JOB_RETENTION_S"), 86400.0, 1),
            live=parse_bool("KITTY_COREML_LIVE", get("KITTY_COREML_LIVE"), False)
            or parse_bool("SYSTEMSCULPT_LOCAL_IMAGEGEN_LIVE", get("SYSTEMSCULPT_LOCAL_IMAGEGEN_LIVE"), False),
            ml_sd_repo_url=(get("KITTY_COREML_ML_SD_REPO") or "").strip()
            or "https://github.com/apple/ml-stable-diffusion.git",
            ml_sd_commit=_commit(get("KITTY_COREML_ML_SD_COMMIT")),
            source_dir=_path(get("KITTY_COREML_SOURCE_DIR")),
            catalog_path=_path(get("KITTY_COREML_CATALOG")),
            install_coreml=_choice("KITTY_COREML_INSTALL_COREML", get("KITTY_COREML_INSTALL_COREML"),
                                   ("auto", "yes", "no"), "auto"),
            link_dir=_path(get("KITTY_COREML_LINK_DIR")),
            search_path=tuple(Path(p) for p in (get("PATH") or "").split(os.pathsep) if p),
            # KITTY drop-in (engineer kitty)
            models_yaml=_path(get("MODELS_YAML")),
            queue_name=_queue_name(get("KITTY_COREML_QUEUE_NAME")),
        )


STUDIO_BACKENDS = {"coreml_diffusion": "coreml_diffusion", "coreml": "coreml_diffusion",
                   "mock": "mock", "procedural": "mock"}
STUDIO_OUTPUTS = ("path", "base64")


def _clamped(name: str, raw: str | None, lo: float, hi: float, *, floor: bool) -> float | None:
    """The Studio provider's numbers: unset or empty is None (the preset decides); a number is floored
    when `floor` and clamped to lo..hi, as the host's provider does; text that is no number is an error."""
    if raw is None or raw.strip() == "":
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: got {raw!r}; allowed: a number (clamped to {lo:g}..{hi:g})") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise ConfigError(f"{name}: got {raw!r}; allowed: a finite number (clamped to {lo:g}..{hi:g})")
    if floor:
        value = float(int(value // 1))
    return min(hi, max(lo, value))


class StudioSettings(BaseModel):
    """The Studio host's SYSTEMSCULPT_LOCAL_* variables (CONTRACTS.md section 5), with the old provider's
    defaults, aliases and clamps, plus kitty-coreml's own Studio options."""

    model_config = ConfigDict(frozen=True)

    backend: Literal["coreml_diffusion", "mock"] = "coreml_diffusion"
    """SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND: coreml_diffusion (alias coreml) or mock (alias procedural)."""
    sample_bin: Path | None = None
    """SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN: StableDiffusionSample; must be executable. Unset: KITTY_COREML_SAMPLE_BIN's rule."""
    resource_path: Path | None = None
    """SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH: one resource folder for every aspect ratio (${HOME} expanded)."""
    manifest_path: Path
    """SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH: aspect ratio -> resource folder. KITTY_COREML_HOME/studio-manifest.json"""
    compute_units: str = "cpuAndNeuralEngine"
    """SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS: all, cpuOnly, cpuAndGPU, cpuAndNeuralEngine."""
    compute_units_set: bool = False
    """Whether SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS was set; unset, original-attention bundles run on cpuAndGPU."""
    step_count: int | None = None
    """SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT: overrides the quality preset; floored, clamped 1..80."""
    guidance_scale: float | None = None
    """SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE: overrides the quality preset; clamped 0..30."""
    scheduler: str = "pndm"
    """SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER: pndm or dpmpp."""
    disable_safety: bool = True
    """SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY: skip the safety checker (the old provider's default)."""
    reduce_memory: bool = False
    """SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY: load and unload models per stage to save memory."""
    timeout_ms: int = 480000
    """SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS: limit on one generation; floored, clamped 30000..1800000."""
    output: Literal["path", "base64"] = "path"
    """KITTY_COREML_STUDIO_OUTPUT: path (each image's file in the local store) or base64 (inline, as the old
    provider did; falls back to paths, with a warning, past the base64 budget)."""
    base64_budget_bytes: int = 6 * 1024 * 1024
    """KITTY_COREML_STUDIO_BASE64_BUDGET: most bytes of base64 in one answer (the host cuts stdout at 8 MiB)."""

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StudioSettings:
        env = os.environ if env is None else env
        get = env.get

        def studio_path(name: str) -> Path | None:
            raw = (get(name) or "").replace("${HOME}", str(Path.home()))
            found = _path(raw)
            return found.absolute() if found is not None else None

        backend_raw = get("SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND") or ""
        backend = STUDIO_BACKENDS.get(backend_raw.strip().lower() or "coreml_diffusion")
        if backend is None:
            raise ConfigError(f"SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND: got {backend_raw!r}; "
                              f"allowed: {', '.join(STUDIO_BACKENDS)}")
        home = _path(get("KITTY_COREML_HOME")) or Path.home() / ".kitty-coreml"
        steps = _clamped("SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT", get("SYSTEMSCULPT_LOCAL_DIFFUSION_STEP_COUNT"),
                         1, 80, floor=True)
        timeout_ms = _clamped("SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS", get("SYSTEMSCULPT_LOCAL_DIFFUSION_TIMEOUT_MS"),
                              30000, 1800000, floor=True)
        budget = _number("KITTY_COREML_STUDIO_BASE64_BUDGET", get("KITTY_COREML_STUDIO_BASE64_BUDGET"),
                         6 * 1024 * 1024, 0)
        return cls(
            backend=backend,
            sample_bin=studio_path("SYSTEMSCULPT_LOCAL_DIFFUSION_SAMPLE_BIN"),
            resource_path=studio_path("SYSTEMSCULPT_LOCAL_DIFFUSION_RESOURCE_PATH"),
            manifest_path=studio_path("SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH")
            or home.absolute() / "studio-manifest.json",
            compute_units=_choice("SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS",
                                  get("SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS"),
                                  ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"), "cpuAndNeuralEngine"),
            compute_units_set=bool((get("SYSTEMSCULPT_LOCAL_DIFFUSION_COMPUTE_UNITS") or "").strip()),
            step_count=None if steps is None else int(steps),
            guidance_scale=_clamped("SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE",
                                    get("SYSTEMSCULPT_LOCAL_DIFFUSION_GUIDANCE_SCALE"), 0, 30, floor=False),
            scheduler=_choice("SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER", get("SYSTEMSCULPT_LOCAL_DIFFUSION_SCHEDULER"),
                              ("pndm", "dpmpp"), "pndm"),
            disable_safety=parse_bool("SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY",
                                      get("SYSTEMSCULPT_LOCAL_DIFFUSION_DISABLE_SAFETY"), True),
            reduce_memory=parse_bool("SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY",
                                     get("SYSTEMSCULPT_LOCAL_DIFFUSION_REDUCE_MEMORY"), False),
            timeout_ms=480000 if timeout_ms is None else int(timeout_ms),
            output=_choice("KITTY_COREML_STUDIO_OUTPUT", get("KITTY_COREML_STUDIO_OUTPUT"), STUDIO_OUTPUTS, "path"),
            base64_budget_bytes=int(budget),
        )


def _queue_name(raw: str | None) -> str:
    """An RQ queue name: KITTY's `images` unless set; printable, no spaces (it is part of Redis keys)."""
    if raw is None or raw.strip() == "":
        return "images"
    value = raw.strip()
    if len(value) > 100 or any(not ("\x21" <= c <= "\x7e") for c in value):
        raise ConfigError(f"KITTY_COREML_QUEUE_NAME: got {raw!r}; allowed: 1..100 printable ASCII characters "
                          "without spaces (default images)")
    return value
