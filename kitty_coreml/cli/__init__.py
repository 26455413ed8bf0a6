"""`kitty-coreml`: the command line. Parsing and printing only; the work is in the package."""

from __future__ import annotations

import sys

__all__ = ["main"]

PROG = "kitty-coreml"


# Command -> the module that registers it. Only the invoked command's module is imported: typer
# builds every registered command's parameters on each run, which costs more than the work of a
# fast generation. Help and unknown commands load them all, in the order help lists them.
_COMMAND_MODULES = {"generate": "generate", "batch": "batch", "images": "images", "publish": "publish",
                    "models": "models", "install": "install", "doctor": "doctor", "node": "node",
                    "serve": "serve", "worker": "serve", "selftest": "selftest", "convert": "convert"}


def _load_commands(args: list[str]) -> None:
    import importlib

    command = next((arg for arg in args if not arg.startswith("-")), None)
    modules = [_COMMAND_MODULES[command]] if command in _COMMAND_MODULES else dict.fromkeys(_COMMAND_MODULES.values())
    for module in modules:
        importlib.import_module(f"{__name__}.{module}")


def _click_exception_class() -> type[Exception]:
    # typer vendors its own click; its ClickException is the base of typer.BadParameter either way.
    import typer

    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def main(argv: list[str] | None = None) -> None:
    """Run the CLI: exit 0 on success; on failure one line on stderr and a non-zero exit."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    import typer

    from ..errors import KittyError
    from .app import app

    _load_commands(args)
    click_exception = _click_exception_class()
    try:
        returned = app(args=args, prog_name=PROG, standalone_mode=False)
    except (KeyboardInterrupt, typer.Abort):
        sys.stderr.write(f"{PROG}: cancelled\n")
        sys.exit(130)
    except KittyError as exc:
        if debug:
            raise
        sys.stderr.write(f"{PROG}: error: {exc.one_line()}\n")
        sys.exit(exc.exit_code)
    except click_exception as exc:
        if debug:
            raise
        sys.stderr.write(f"{PROG}: error: {' '.join(exc.format_message().split())} (see `{PROG} --help`)\n")
        sys.exit(exc.exit_code)
    except Exception as exc:  # the last guard: no traceback reaches a user
        if debug:
            raise
        sys.stderr.write(f"{PROG}: internal error: {type(exc).__name__}: {' '.join(str(exc).split())} "
                         "(run again with --debug for a traceback)\n")
        sys.exit(1)
    if returned == 130:  # typer turns a Ctrl-C inside a command into exit code 130
        sys.stderr.write(f"{PROG}: cancelled; the engine was stopped and nothing was stored\n")
    sys.exit(returned if isinstance(returned, int) else 0)
