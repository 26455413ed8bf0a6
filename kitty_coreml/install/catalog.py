"""The installable models: the built-in CATALOG plus the entries of KITTY_COREML_CATALOG; how far each
pin is confirmed; and the commits and hashes `install` recorded for pins that are not."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

from ..atomic import write_json
from ..errors import ConfigError
from ..models import CATALOG, CatalogEntry
from ..settings import Settings
from .step import read_json

__all__ = ["load_catalog", "COMMIT_RE", "SHA256_RE", "UNVERIFIED_PIN", "pin_note", "pins_path", "recorded_pin",
           "record_pin"]

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")

UNVERIFIED_PIN = "unverified pin"
# Built-in entries whose revision and sha256 could not be confirmed together against the hub from where
# they were written (no network to huggingface.co). The revisions come from a public project's links to
# these repositories' trees; sdxl-mbp's sha256 was published for the file at `main`, not at that commit.
_UNCONFIRMED = {
    "sdxl-base": "revision taken from a public link to the repository's tree; no sha256 published",
    "sdxl-mbp": "revision taken from a public link to the repository's tree; sha256 published for `main`",
}


def pin_note(entry: CatalogEntry) -> str | None:
    """None when the entry pins a commit and a sha256 known to belong together; otherwise why its pin
    is unverified (then `install` records what it got and holds later runs to it)."""
    if not COMMIT_RE.fullmatch(entry.revision):
        return f"{UNVERIFIED_PIN}: revision {entry.revision!r} is not a commit"
    if entry.sha256 is None:
        return f"{UNVERIFIED_PIN}: no sha256 in the catalog"
    if entry.name in _UNCONFIRMED and CATALOG.get(entry.name) == entry:
        return f"{UNVERIFIED_PIN}: {_UNCONFIRMED[entry.name]}"
    return None


def pins_path(settings: Settings) -> Path:
    """HOME/pins.json: name -> the repo, file, revision, commit, sha256 and size of the archive the first
    install of an unverified pin got. It outlives the model folder, so a reinstall gets the same bytes."""
    return settings.home / "pins.json"


def recorded_pin(settings: Settings, entry: CatalogEntry) -> dict[str, Any] | None:
    """What install recorded for this entry, if it was recorded for the same repo, file and revision."""
    pin = (read_json(pins_path(settings)) or {}).get(entry.name)
    if not isinstance(pin, dict) or (pin.get("repo"), pin.get("file"), pin.get("revision")) != \
            (entry.repo, entry.filename, entry.revision):
        return None
    if not (COMMIT_RE.fullmatch(str(pin.get("commit"))) and SHA256_RE.fullmatch(str(pin.get("sha256")))):
        return None
    return pin


def record_pin(settings: Settings, entry: CatalogEntry, *, commit: str, sha256: str, size: int) -> None:
    data = read_json(pins_path(settings)) or {}
    data[entry.name] = {"repo": entry.repo, "file": entry.filename, "revision": entry.revision,
                        "commit": commit, "sha256": sha256, "size": size}
    write_json(pins_path(settings), data)


def load_catalog(settings: Settings) -> dict[str, CatalogEntry]:
    catalog = dict(CATALOG)
    if settings.catalog_path is None:
        return catalog
    source = settings.catalog_path
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"KITTY_COREML_CATALOG: cannot read {source} ({exc.strerror})") from None
    except ValueError as exc:
        raise ConfigError(f"KITTY_COREML_CATALOG: {source} is not valid JSON ({exc})") from None
    if not isinstance(raw, list):
        raise ConfigError(f"KITTY_COREML_CATALOG: {source} must hold a JSON list of model entries")
    fields = {f.name for f in dataclasses.fields(CatalogEntry)}
    for index, item in enumerate(raw):
        where = f"KITTY_COREML_CATALOG: {source} entry {index}"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is not an object")
        item = {"description": "", **item}
        unknown, missing = set(item) - fields, fields - set(item) - {"sha256"}
        if unknown or missing:
            raise ConfigError(f"{where}: unknown fields {sorted(unknown)}, missing fields {sorted(missing)}; "
                              f"allowed: {', '.join(sorted(fields))}")
        entry = CatalogEntry(**{"sha256": None, **item})
        if not _NAME_RE.fullmatch(str(entry.name)):
            raise ConfigError(f"{where}: name {entry.name!r}; allowed: lowercase letters, digits, . _ -")
        if entry.sha256 is not None and not SHA256_RE.fullmatch(str(entry.sha256)):
            raise ConfigError(f"{where}: sha256 {entry.sha256!r}; allowed: 64 lowercase hex digits or null")
        if not isinstance(entry.size_bytes, int) or entry.size_bytes <= 0:
            raise ConfigError(f"{where}: size_bytes {entry.size_bytes!r}; allowed: a positive integer")
        if not str(entry.filename).endswith(".zip"):
            raise ConfigError(f"{where}: filename {entry.filename!r}; allowed: a .zip archive")
        catalog[entry.name] = entry
    return catalog
