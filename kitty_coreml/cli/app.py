"""The typer application. Command modules decorate `app` (or add a sub-app) and keep their heavy
imports inside the command functions, so `kitty-coreml generate` starts fast.

Help is click's plain formatter (rich_markup_mode=None): flags show as flags, not `--json <bool>`,
and docstring blocks marked with `\\b` keep their line breaks instead of being rewrapped."""

from __future__ import annotations

from typing import Optional

import typer

HELP_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def group(help: str) -> typer.Typer:
    """A command group: `kitty-coreml images` alone prints its help (see cli/__init__.py)."""
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None, context_settings=HELP_SETTINGS)


app = typer.Typer(
    name="kitty-coreml",
    help="Local, private, fail-loud text-to-image on Apple Silicon (Core ML), with a portable diffusers engine.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings=HELP_SETTINGS,
)


def _print_version(value: bool) -> None:
    if value:
        from .version import versions

        typer.echo(f"kitty-coreml {versions()['kitty-coreml']}")
        raise typer.Exit(0)


# main() reads --debug wherever it appears (before `--`) and removes it before typer parses; it is
# declared here so that help and completion show it.
@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Also print the traceback of a failure (our code's frames); "
                                                      "allowed anywhere on the command line."),
    version: Optional[bool] = typer.Option(None, "--version", callback=_print_version, is_eager=True,
                                           help="Print the version and exit (details: `kitty-coreml version`)."),
) -> None:
    """Generate images locally and publish them to a folder or to MinIO/S3.

    Start with `kitty-coreml doctor` to see what is installed.
    """
