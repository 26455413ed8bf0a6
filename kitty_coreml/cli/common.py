"""What every command shares: settings, one-line errors, JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any

from ..settings import Settings

__all__ = ["load_settings", "print_json", "echo", "note", "warn"]


def load_settings() -> Settings:
    return Settings.from_env()


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def echo(text: str = "") -> None:
    sys.stdout.write(text + "\n")


def note(text: str) -> None:
    """A line for the person, on stderr (stdout stays for results)."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def warn(text: str) -> None:
    note(f"warning: {text}")
