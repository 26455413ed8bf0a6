"""Seeds: an explicit seed wins; else the Studio rule over prompt and run id (bit-exact with the host's
provider); a request without a run id gets a fresh one, recorded, so every image can be reproduced."""

from __future__ import annotations

import uuid

__all__ = ["studio_seed", "new_run_id", "resolve_seed"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def studio_seed(prompt: str, run_id: str | None) -> int:
    """32-bit FNV-1a over the low byte of each UTF-16 code unit of `prompt::runId` (both trimmed;
    "local" when the run id is empty), never 0."""
    text = f"{prompt.strip()}::{(run_id or '').strip() or 'local'}"
    units = text.encode("utf-16-le")
    value = _FNV_OFFSET
    for low_byte in units[0::2]:
        value = ((value ^ low_byte) * _FNV_PRIME) & 0xFFFFFFFF
    return max(1, value)


def new_run_id() -> str:
    return f"run_{uuid.uuid4()}"


def resolve_seed(prompt: str, seed: int | None, run_id: str | None) -> tuple[int, str]:
    """(seed, run_id) for a request."""
    run_id = run_id or new_run_id()
    return (seed if seed is not None else studio_seed(prompt, run_id)), run_id
