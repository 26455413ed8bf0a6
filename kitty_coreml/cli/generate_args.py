"""`kitty-coreml generate`'s command line read without typer, for the calls that make up most of its use:
typer and click cost more to import and build than a warm engine takes to make a small image.

It takes only what it reads exactly as typer would (cli/generate.py's declaration): `--flag value`,
`--flag=value`, `-n N`, on/off flags, the prompt anywhere or after `--`, each flag at most once, numbers
in plain digits. For anything else (help, completion, an unknown or repeated flag, a value typer might
refuse or read otherwise, a missing or extra prompt) it answers None and typer reads the command line,
so usage errors and help come from one place. tests/cli/test_generate_args.py checks the table against
typer's command and the values against typer's for many command lines (tests/floors runs it with the
oldest typer allowed too)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..request import COMPUTE_UNITS, SCHEDULERS
from ..settings import ENGINE_NAMES

__all__ = ["GENERATE_FLAGS", "Flag", "read_generate_args"]

COMPLETION_VARIABLE = "_KITTY_COREML_COMPLETE"
"""Set by the shell while it asks for completions: typer answers those."""
_INTEGER = re.compile(r"-?[0-9]+")
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")
"""Numbers as every typer this package allows reads them alike (click's int() and float(), or pydantic):
other spellings (1e3, nan, 5_12, " 5 ") are left to typer."""


@dataclass(frozen=True)
class Flag:
    name: str
    """The parameter of cli/generate.py's `generate`."""
    names: tuple[str, ...]
    kind: str
    """text, integer, number, path, choice or switch (an on/off flag, no value)."""
    default: Any
    choices: tuple[str, ...] = ()
    off: tuple[str, ...] = ()
    """The names that turn a switch off (--no-safety)."""

    def convert(self, text: str) -> Any:
        """The value of `text`, as typer would give it; ValueError for anything left to typer."""
        if self.kind == "text":
            return text
        if self.kind == "integer" and _INTEGER.fullmatch(text):
            return int(text)
        if self.kind == "number" and _NUMBER.fullmatch(text):
            return float(text)
        if self.kind == "choice" and text in self.choices:
            return text
        # click.Path refuses an existing path it cannot read; typer turns "" into Path("."): typer says
        if self.kind == "path" and text and not (os.path.exists(text) and not os.access(text, os.R_OK)):
            return Path(text)
        raise ValueError(text)


GENERATE_FLAGS = (
    Flag("negative", ("--negative",), "text", ""),
    Flag("count", ("--count", "-n"), "integer", 1),
    Flag("steps", ("--steps",), "integer", 20),
    Flag("guidance", ("--guidance",), "number", 7.5),
    Flag("scheduler", ("--scheduler",), "choice", "pndm", choices=SCHEDULERS),
    Flag("compute_units", ("--compute-units",), "choice", None, choices=COMPUTE_UNITS),
    Flag("seed", ("--seed",), "integer", None),
    Flag("run_id", ("--run-id",), "text", None),
    Flag("image", ("--image",), "path", None),
    Flag("strength", ("--strength",), "number", None),
    Flag("safety", ("--safety",), "switch", True, off=("--no-safety",)),
    Flag("reduce_memory", ("--reduce-memory",), "switch", False),
    Flag("timeout", ("--timeout",), "number", None),
    Flag("engine", ("--engine",), "choice", None, choices=ENGINE_NAMES),
    Flag("model", ("--model",), "text", None),
    Flag("width", ("--width",), "integer", None),
    Flag("height", ("--height",), "integer", None),
    Flag("as_json", ("--json",), "switch", False),
    Flag("dry_run", ("--dry-run",), "switch", False),
    Flag("server", ("--server",), "text", None),
    Flag("wait", ("--wait",), "switch", False),
    Flag("cold", ("--cold",), "switch", False),
)
_BY_NAME = {name: flag for flag in GENERATE_FLAGS for name in (*flag.names, *flag.off)}


def read_generate_args(args: list[str]) -> dict[str, Any] | None:
    """The keyword arguments of cli/generating.run_generate for `generate ...` (closed sets as their
    text), or None when typer must read this command line."""
    if not args or args[0] != "generate" or COMPLETION_VARIABLE in os.environ:
        return None
    values: dict[str, Any] = {}
    prompts: list[str] = []
    tokens = iter(args[1:])
    for token in tokens:
        if token == "--":
            prompts.extend(tokens)
            break
        if len(token) < 2 or not token.startswith("-"):
            prompts.append(token)
            continue
        name, equals, given = token.partition("=") if token.startswith("--") else (token, "", "")
        flag = _BY_NAME.get(name)
        if flag is None or flag.name in values:
            return None
        if flag.kind == "switch":
            if equals:
                return None
            values[flag.name] = name not in flag.off
            continue
        text = given if equals else next(tokens, None)
        if text is None:
            return None
        try:
            values[flag.name] = flag.convert(text)
        except ValueError:
            return None
    if len(prompts) != 1:
        return None
    return {flag.name: flag.default for flag in GENERATE_FLAGS} | values | {"prompt": prompts[0]}
