"""The installable models: the built-in CATALOG plus the entries of KITTY_COREML_CATALOG."""

from __future__ import annotations

import dataclasses
import json
import re

from ..errors import ConfigError
from ..models import CATALOG, CatalogEntry
from ..settings import Settings

__all__ = ["load_catalog", "COMMIT_RE", "SHA256_RE"]

COMMIT_RE = re.compile(r"[0-9a-f]{40}")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
_NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")


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
