"""Every environment variable kitty-coreml reads, read here and nowhere else.

Other modules take a Settings (or single values from it) as arguments. `Settings.from_env()` reads
the process environment; tests pass a dict instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, field_validator

from .errors import ConfigError

__all__ = ["Settings", "StudioSettings", "parse_bool", "ENGINE_NAMES", "PROGRESS_MODES", "STUDIO_BACKENDS"]

ENGINE_NAMES = ("auto", "sample", "coreml-worker", "diffusers", "sdcpp", "mock")
SDCPP_WEIGHT_TYPES = ("file", "f32", "f16", "bf16", "q8_0", "q5_0", "q5_1", "q4_0", "q4_1", "q4_k", "q3_k", "q2_k")
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
    service_host: str = "127.0.0.1"
    """SERVICE_HOST: the address `serve` binds (KITTY's variable); anything but loopback needs an API key."""
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
    # -- storage interoperability (interop) --
    s3_checksums: bool = False
    """KITTY_COREML_S3_CHECKSUMS: send boto3's CRC32 checksums on every upload (`when_supported`); by default
    only where an operation requires one (`when_required`): several S3 servers reject them."""
    # convert (model conversion with Apple's torch2coreml)
    converter_venv: Path | None = None
    """KITTY_COREML_CONVERTER_VENV: the converter's own virtualenv (default HOME/converter-venv)."""
    converter_python: str = "python3.11"
    """KITTY_COREML_CONVERTER_PYTHON: the Python that creates it (Apple's pins need 3.11)."""
    convert_timeout_s: float = 14400.0
    """KITTY_COREML_CONVERT_TIMEOUT_S: the limit for one conversion stage (an SDXL Unet takes an hour)."""
    # security: the service's front door and dependency time limits (docs/security.md)
    allowed_hosts: tuple[str, ...] = ()
    """KITTY_COREML_ALLOWED_HOSTS: comma-separated extra Host names the service answers to (besides localhost,
    the address it is reached on and this machine's names); `*` turns the Host check off (behind a proxy)."""
    cors_origins: tuple[str, ...] = ()
    """KITTY_COREML_CORS_ORIGINS: comma-separated origins (https://host:port) whose web pages may call the API;
    `*` lets every origin, as KITTY's gateway does. Default: none (closed)."""
    redis_timeout_s: float = 2.0
    """KITTY_COREML_REDIS_TIMEOUT_S: longest wait for Redis on one call; past it the service answers 503."""
    s3_timeout_s: float = 60.0
    """KITTY_COREML_S3_TIMEOUT_S: longest wait for one answer from S3 (a hung server); the connect waits at most 5 s."""
    worker_lease_s: float = 30.0
    """KITTY_COREML_WORKER_LEASE_S: a Redis worker renews its hold on a running job this often (x 1/4); a job
    not renewed for this long belongs to a dead worker and is run again (once), then failed."""
    # stable-diffusion.cpp (sdcpp)
    sdcpp_weights: str = "file"
    """KITTY_COREML_SDCPP_WEIGHTS: the weight type sd.cpp converts a model to as it loads (q8_0 and q4_0
    halve and quarter the memory of f16); `file` keeps what the file stores."""

    @field_validator("home")
    @classmethod
    def _home_is_a_folder(cls, home: Path) -> Path:
        if home.exists() and not home.is_dir():
            raise ConfigError(f"KITTY_COREML_HOME: got {str(home)!r}, which is a file; allowed: a folder "
                              "(made when missing)")
        return home

    @field_validator("s3_endpoint_url")
    @classmethod
    def _endpoint_is_a_url(cls, url: str | None) -> str | None:
        problem = url and http_url_problem(url)
        if problem:
            raise ConfigError(f"S3_ENDPOINT_URL: got {url!r} ({problem}); allowed: an http:// or https:// URL "
                              "like http://127.0.0.1:9000")
        return url

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
            service_host=(get("SERVICE_HOST") or "").strip() or "127.0.0.1",
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
            # storage interoperability (interop)
            s3_checksums=parse_bool("KITTY_COREML_S3_CHECKSUMS", get("KITTY_COREML_S3_CHECKSUMS"), False),
            # convert
            converter_venv=_path(get("KITTY_COREML_CONVERTER_VENV")),
            converter_python=(get("KITTY_COREML_CONVERTER_PYTHON") or "").strip() or "python3.11",
            convert_timeout_s=_number("KITTY_COREML_CONVERT_TIMEOUT_S", get("KITTY_COREML_CONVERT_TIMEOUT_S"),
                                      14400.0, 1),
            # security
            allowed_hosts=_names(get("KITTY_COREML_ALLOWED_HOSTS")),
            cors_origins=_names(get("KITTY_COREML_CORS_ORIGINS")),
            redis_timeout_s=_number("KITTY_COREML_REDIS_TIMEOUT_S", get("KITTY_COREML_REDIS_TIMEOUT_S"), 2.0, 0.1),
            s3_timeout_s=_number("KITTY_COREML_S3_TIMEOUT_S", get("KITTY_COREML_S3_TIMEOUT_S"), 60.0, 0.1),
            worker_lease_s=_number("KITTY_COREML_WORKER_LEASE_S", get("KITTY_COREML_WORKER_LEASE_S"), 30.0, 2),
            # stable-diffusion.cpp (sdcpp)
            sdcpp_weights=_choice("KITTY_COREML_SDCPP_WEIGHTS", get("KITTY_COREML_SDCPP_WEIGHTS"),
                                  SDCPP_WEIGHT_TYPES, "file"),
        )


def http_url_problem(url: str) -> str | None:
    """What is wrong with an http(s) URL a person typed, or None."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check (out of range, not a number)
    except ValueError as exc:
        return str(exc)
    if parts.scheme not in ("http", "https"):
        return "not http:// or https://"
    if not parts.hostname:
        return "no host name"
    return None


def _names(raw: str | None) -> tuple[str, ...]:
    """A comma-separated list; blanks dropped."""
    return tuple(part.strip() for part in (raw or "").split(",") if part.strip())


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
    # Studio drop-in (issue 11): discovery of the original install, image retention, the warm path.
    manifest_path_set: bool = False
    """Whether SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH was set: then it must exist and map the ratio; unset,
    HOME/studio-manifest.json is one place discovery looks among others."""
    user_home: Path = Path.home()
    """HOME: where the original installer left its binary (~/gits/apps/ml-stable-diffusion) and bundles
    (~/.systemsculpt/local-image-models)."""
    retention_s: float = 3600.0
    """KITTY_COREML_STUDIO_RETENTION_S: how long a Studio call's images stay in HOME/store/studio/ (the host
    copies them into the vault as soon as the call answers); older ones go at the next call. At least 60 s:
    a concurrent node's call must not sweep an image its host has not read yet."""
    keep_images: bool = False
    """KITTY_COREML_STUDIO_KEEP: keep Studio images in the KITTY store (S3_PREFIX keys, listed by the service)
    instead of the swept studio/ folder."""
    warm: bool = True
    """KITTY_COREML_STUDIO_WARM: send requests to a running `kitty-coreml serve` of this home, whose engine
    stays loaded between images; off: always start Apple's binary cold."""

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
            # Studio drop-in (issue 11)
            manifest_path_set=bool((get("SYSTEMSCULPT_LOCAL_DIFFUSION_MANIFEST_PATH") or "").strip()),
            user_home=(_path(get("HOME")) or Path.home()).absolute(),
            retention_s=_number("KITTY_COREML_STUDIO_RETENTION_S", get("KITTY_COREML_STUDIO_RETENTION_S"), 3600.0, 60),
            keep_images=parse_bool("KITTY_COREML_STUDIO_KEEP", get("KITTY_COREML_STUDIO_KEEP"), False),
            warm=parse_bool("KITTY_COREML_STUDIO_WARM", get("KITTY_COREML_STUDIO_WARM"), True),
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
