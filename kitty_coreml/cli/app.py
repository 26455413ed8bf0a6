"""The typer application. Command modules decorate `app` (or add a sub-app) and keep their heavy
imports inside the command functions, so `kitty-coreml generate` starts fast."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="kitty-coreml",
    help="Local, private, fail-loud text-to-image on Apple Silicon (Core ML), with a portable diffusers engine.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show a traceback when something fails."),
) -> None:
    """Generate images locally and publish them to a folder or to MinIO/S3.

    Start with `kitty-coreml doctor` to see what is installed.
    """
