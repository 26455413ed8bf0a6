"""The Studio host's local image provider (CONTRACTS.md section 5): contract.py (the request and the
answer), manifest.py (ratio -> bundle files), discovery.py (where an existing install lives) and
provider.py (the `systemsculpt-local-imagegen` command). Importing this package stays light: the host
starts the command once per image."""

from .contract import (INFLUENCE_STRENGTH, MOCK_MODEL_ID, ORIGINAL_MODEL_ID, PROG, QUALITY_PRESETS, RATIO_SIZES,
                       RATIO_TOLERANCE, REQUEST_SCHEMA, RESPONSE_SCHEMA, StudioRequest, load_request, mock_size,
                       normalize_influence, normalize_quality, parse_ratio, parse_request)
from .manifest import MANIFEST_SCHEMA, Manifest, RatioEntry, manifest_entry, read_manifest, write_manifest
from .provider import answer, main, resolve_resources

__all__ = [
    "PROG", "REQUEST_SCHEMA", "RESPONSE_SCHEMA", "MANIFEST_SCHEMA", "MOCK_MODEL_ID", "ORIGINAL_MODEL_ID",
    "QUALITY_PRESETS", "INFLUENCE_STRENGTH", "RATIO_SIZES", "RATIO_TOLERANCE",
    "StudioRequest", "RatioEntry", "Manifest",
    "parse_request", "load_request", "normalize_quality", "normalize_influence", "parse_ratio",
    "mock_size", "read_manifest", "write_manifest", "manifest_entry",
    "resolve_resources", "answer", "main",
]
