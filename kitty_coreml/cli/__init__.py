"""`kitty-coreml`: the command line. Parsing and printing only; the work is in the package.

How a run ends (README "Exit codes"): 0 on success, and for a bare `kitty-coreml` or a bare group
(`kitty-coreml images`), which print their help on stdout; otherwise one line on stderr and the
error's exit code. With `--json` (any command) the same error is also one JSON object on stdout,
`{"error": {"code", "message", "hint"?}}`, merged into whatever answer the command had so far.
`--debug`, anywhere before `--`, adds the traceback of our code's frames (typer's and click's are left
out) above that line; a command-line mistake has no traceback to show."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["main"]

PROG = "kitty-coreml"


# Command -> the module that registers it. Only the invoked command's module is imported: typer
# builds every registered command's parameters on each run, which costs more than the work of a
# fast generation. Help and unknown commands load them all, in the order help lists them.
_COMMAND_MODULES = {"generate": "generate", "batch": "batch", "images": "images", "publish": "publish",
                    "models": "models", "install": "install", "doctor": "doctor", "node": "node",
                    "serve": "serve", "worker": "serve", "version": "version", "selftest": "selftest",
                    "convert": "convert"}

# Request fields as the user typed them on the command line (InvalidRequest names the field).
FLAGS = {"prompt": "PROMPT", "negative_prompt": "--negative", "count": "--count", "steps": "--steps",
         "guidance": "--guidance", "scheduler": "--scheduler", "compute_units": "--compute-units",
         "seed": "--seed", "run_id": "--run-id", "input_image": "--image", "strength": "--strength",
         "safety": "--safety", "reduce_memory": "--reduce-memory", "timeout_s": "--timeout",
         "engine": "--engine", "model": "--model", "width": "--width", "height": "--height",
         "limit": "--limit", "port": "--port",
         "prompts_file": "PROMPTS_FILE"}


def _load_commands(args: list[str]) -> None:
    import importlib

    command = next((arg for arg in args if not arg.startswith("-")), None)
    modules = [_COMMAND_MODULES[command]] if command in _COMMAND_MODULES else dict.fromkeys(_COMMAND_MODULES.values())
    for module in modules:
        importlib.import_module(f"{__name__}.{module}")


def _split_options(args: list[str]) -> tuple[list[str], bool, bool]:
    """(args without --debug, debug, json): both count anywhere before `--`, which ends options."""
    end = args.index("--") if "--" in args else len(args)
    head, tail = args[:end], args[end:]
    return [arg for arg in head if arg != "--debug"] + tail, "--debug" in head, "--json" in head


def _typer_classes() -> tuple[tuple[type[BaseException], ...], type[Exception], tuple[type[Exception], ...]]:
    """(typer.Abort, click's ClickException, NoArgsIsHelpError or nothing): the errors only typer raises.
    typer vendors its own click in newer releases; its ClickException is the base of typer.BadParameter
    either way, and NoArgsIsHelpError (click 8.2+) sits beside it."""
    import typer

    click_exception = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")
    no_args = getattr(sys.modules[click_exception.__module__], "NoArgsIsHelpError", None)
    return (typer.Abort,), click_exception, (no_args,) if no_args else ()


def _run_typer(args: list[str]) -> Any:
    from .app import app

    _load_commands(args)
    return app(args=args, prog_name=PROG, standalone_mode=False)


def _run_fast(options: dict[str, Any]) -> int:
    """`generate` read by cli/generate_args.py; a Ctrl-C inside ends as typer ends one (exit 130)."""
    from .generating import run_generate

    try:
        run_generate(**options)
    except KeyboardInterrupt:
        return 130
    return 0


def _our_traceback(exc: BaseException) -> str:
    """The traceback of exc without typer's and click's frames."""
    import os
    import traceback

    framework = tuple(os.path.dirname(module.__file__) + os.sep
                      for module in (sys.modules.get("typer"), sys.modules.get("click"))
                      if module is not None and module.__file__)
    frames = [frame for frame in traceback.extract_tb(exc.__traceback__) if not frame.filename.startswith(framework)]
    return "".join(["Traceback (most recent call last):\n", *traceback.format_list(frames),
                    *traceback.format_exception_only(type(exc), exc)])


def _fail(message: str, exit_code: int, *, error: dict[str, Any], answer: dict[str, Any] | None, as_json: bool,
          traceback_text: str | None = None) -> None:
    if as_json:
        from .common import print_json

        print_json({**(answer or {}), "error": error})
    if traceback_text:
        sys.stderr.write(traceback_text)
    sys.stderr.write(f"{PROG}: {message}\n")
    sys.exit(exit_code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: exit 0 on success; on failure one line on stderr and a non-zero exit."""
    args, debug, as_json = _split_options(list(sys.argv[1:] if argv is None else argv))
    from ..errors import InvalidRequest, KittyError
    from .generate_args import read_generate_args

    fast = read_generate_args(args)
    # `except ()` catches nothing: without typer imported, none of its errors can be raised
    abort, click_exception, no_args_is_help = ((), (), ()) if fast is not None else _typer_classes()
    try:
        returned = _run_fast(fast) if fast is not None else _run_typer(args)
    except (KeyboardInterrupt, *abort):
        sys.stderr.write(f"{PROG}: cancelled\n")
        sys.exit(130)
    except no_args_is_help as exc:
        sys.stdout.write(exc.ctx.get_help() + "\n")
        sys.exit(0)
    except KittyError as exc:
        shown = exc.for_field(FLAGS[exc.field]) if isinstance(exc, InvalidRequest) and exc.field in FLAGS else exc
        _fail(f"error: {shown.one_line()}", shown.exit_code, error=shown.to_dict(), answer=shown.answer,
              as_json=as_json, traceback_text=_our_traceback(exc) if debug else None)
    except click_exception as exc:
        message = f"{' '.join(exc.format_message().split())} (see `{PROG} --help`)"
        _fail(f"error: {message}", exc.exit_code, error={"code": "usage", "message": message}, answer=None,
              as_json=as_json)
    except Exception as exc:  # the last guard: no traceback reaches a user unless asked for
        message = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
        _fail(f"internal error: {message}" + ("" if debug else " (run again with --debug for a traceback)"), 1,
              error={"code": "internal", "message": message}, answer=None, as_json=as_json,
              traceback_text=_our_traceback(exc) if debug else None)
    if returned == 130:  # typer turns a Ctrl-C inside a command into exit code 130
        sys.stderr.write(f"{PROG}: cancelled; the engine was stopped and nothing was stored\n")
    sys.exit(returned if isinstance(returned, int) else 0)
