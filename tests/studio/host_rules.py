"""The Studio host's acceptance rules for its local image provider (CONTRACTS.md section 5), applied to
every answer the tests get, plus the stricter rules kitty-coreml promises on top of them.

The host: trims stdout, parses one JSON object, needs a non-empty `images` list whose entries each have
`path` or `base64`, a mime type of png, jpeg or webp (from mimeType, else the path's extension, else png
for base64), and bytes it can store. It cuts stdout and stderr at 8 MiB and, on a non-zero exit, shows
the start of stderr. kitty-coreml adds: the exact schema string, images that decode to the width and
height the answer states, exit code exactly 0 or 1, and on failure nothing but NDJSON progress lines
and one final `[systemsculpt-local-imagegen] <message>` line.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RESPONSE_SCHEMA = "studio.local-image-generation.response.v1"
ERROR_PREFIX = "[systemsculpt-local-imagegen] "
HOST_OUTPUT_CAP = 8 * 1024 * 1024
ALLOWED_MIME = {"image/png": "PNG", "image/jpeg": "JPEG", "image/jpg": "JPEG", "image/webp": "WEBP"}
_EXTENSION_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    answer: dict[str, Any] | None = None
    """The parsed answer when the provider succeeded."""
    error: str | None = None
    """The failure message (without the prefix) when it failed."""
    progress: list[dict[str, Any]] = field(default_factory=list)


def _progress_lines(lines: list[str]) -> list[dict[str, Any]]:
    events = []
    for line in lines:
        event = json.loads(line)  # anything but NDJSON progress on stderr breaks the contract
        assert isinstance(event, dict) and event.get("event") == "progress", f"stray stderr line: {line!r}"
        events.append(event)
    return events


def _mime(entry: dict[str, Any], index: int) -> str:
    hint = str(entry.get("mimeType") or entry.get("mime_type") or "").strip().lower()
    if not hint and entry.get("path"):
        hint = _EXTENSION_MIME.get(Path(str(entry["path"])).suffix.lower(), "")
    if not hint and entry.get("base64"):
        hint = "image/png"
    assert hint in ALLOWED_MIME, f"images[{index}] has unsupported mime type {hint!r}"
    return hint


def check_answer(stdout: str) -> dict[str, Any]:
    """Apply the host's rules to a successful provider's stdout; return the parsed answer."""
    from PIL import Image

    assert len(stdout.encode()) <= HOST_OUTPUT_CAP, "stdout passes the host's 8 MiB cut"
    raw = stdout.strip()
    assert raw, "the provider returned no stdout payload"
    answer = json.loads(raw)
    assert isinstance(answer, dict), "the answer must be one JSON object"
    assert answer.get("schema") == RESPONSE_SCHEMA, f"schema is {answer.get('schema')!r}"
    assert isinstance(answer.get("modelId"), str) and answer["modelId"].strip()
    images = answer.get("images")
    assert isinstance(images, list) and images, "the host needs a non-empty images list"
    for index, entry in enumerate(images):
        assert isinstance(entry, dict), f"images[{index}] must be an object"
        path = str(entry.get("path") or "").strip()
        encoded = str(entry.get("base64") or "").strip()
        assert path or encoded, f"images[{index}] needs path or base64"
        mime = _mime(entry, index)
        if path:  # the host prefers the path when both are given
            assert Path(path).is_absolute(), f"images[{index}].path {path!r} must be absolute (the host runs in /)"
            data = Path(path).read_bytes()
        else:
            data = base64.b64decode("".join(encoded.split()), validate=True)
        assert data, f"images[{index}] is empty"
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            assert image.format == ALLOWED_MIME[mime], f"images[{index}] is {image.format}, said {mime}"
            size = image.size
        assert (entry.get("width"), entry.get("height")) == size, \
            f"images[{index}] says {entry.get('width')}x{entry.get('height')}, the image is {size[0]}x{size[1]}"
    warnings = answer.get("warnings", [])
    assert isinstance(warnings, list) and all(isinstance(w, str) and w.strip() for w in warnings)
    assert isinstance(answer.get("metadata"), dict)
    return answer


def check_failure(stdout: str, stderr: str) -> str:
    """A failure: nothing on stdout; on stderr only progress lines, then one prefixed line. The message."""
    assert stdout == "", f"a failing provider printed on stdout: {stdout[:200]!r}"
    lines = stderr.splitlines()
    assert lines and stderr.endswith("\n"), f"no failure line on stderr: {stderr!r}"
    _progress_lines(lines[:-1])
    last = lines[-1]
    assert last.startswith(ERROR_PREFIX), f"the failure line lacks the prefix: {last!r}"
    message = last[len(ERROR_PREFIX):]
    assert message.strip() and "Traceback" not in stderr
    return message


def check_outcome(returncode: int, stdout: str, stderr: str) -> Outcome:
    """What every provider run must look like: exit 0 with an answer, or exit 1 with one failure line."""
    assert returncode in (0, 1), f"exit code {returncode}; the host knows 0 and 1. stderr: {stderr[-500:]!r}"
    if returncode == 0:
        progress = _progress_lines(stderr.splitlines())
        return Outcome(returncode, stdout, stderr, answer=check_answer(stdout), progress=progress)
    message = check_failure(stdout, stderr)
    return Outcome(returncode, stdout, stderr, error=message, progress=_progress_lines(stderr.splitlines()[:-1]))
