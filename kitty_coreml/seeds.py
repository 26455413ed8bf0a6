"""Seeds: an explicit seed wins; else the Studio rule over prompt and run id (bit-exact with the host's
provider); a request without a run id gets a fresh one, recorded, so every image can be reproduced."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

__all__ = ["studio_seed", "utf16_units", "js_trim", "JS_WHITESPACE", "new_run_id", "resolve_seed"]

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
JS_WHITESPACE = ("\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
                 "\u2028\u2029\u202f\u205f\u3000\ufeff")
"""What JavaScript's String.prototype.trim() removes (WhiteSpace and LineTerminator); Python's
str.strip() differs (it also strips \\x1c-\\x1f and \\x85, and keeps \\ufeff)."""


def js_trim(text: str) -> str:
    """`text.trim()` as the host's JavaScript computes it."""
    return text.strip(JS_WHITESPACE)


def utf16_units(text: str) -> Iterator[int]:
    """The UTF-16 code units of a string as JavaScript sees them. A lone surrogate (the host cuts prompts
    with slice(), which can split an emoji) is one unit of its own value; UTF-16 encoding would refuse it."""
    for char in text:
        point = ord(char)
        if point > 0xFFFF:
            point -= 0x10000
            yield 0xD800 + (point >> 10)
            yield 0xDC00 + (point & 0x3FF)
        else:
            yield point


def studio_seed(prompt: str, run_id: str | None) -> int:
    """32-bit FNV-1a over the low byte of each UTF-16 code unit of `prompt::runId` (both trimmed as
    JavaScript trims; "local" when the run id is empty), never 0."""
    text = f"{js_trim(prompt)}::{js_trim(run_id or '') or 'local'}"
    value = _FNV_OFFSET
    for unit in utf16_units(text):
        value = ((value ^ (unit & 0xFF)) * _FNV_PRIME) & 0xFFFFFFFF
    return max(1, value)


def new_run_id() -> str:
    return f"run_{uuid.uuid4()}"


def resolve_seed(prompt: str, seed: int | None, run_id: str | None) -> tuple[int, str]:
    """(seed, run_id) for a request."""
    run_id = run_id or new_run_id()
    return (seed if seed is not None else studio_seed(prompt, run_id)), run_id
