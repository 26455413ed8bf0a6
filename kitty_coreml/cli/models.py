"""`kitty-coreml models`: what is installed and available, and the tiny smoke model."""

from __future__ import annotations

import typer

from .app import app

models_app = typer.Typer(help="List models; create the tiny smoke model.", no_args_is_help=True)
app.add_typer(models_app, name="models")


@models_app.command("list")
def list_models(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Show installed and available models with their disk use."""
    from ..install.inventory import list_models as inventory
    from .common import load_settings, print_json

    report = inventory(load_settings())
    if as_json:
        print_json(report)
        return
    from ..install.inventory import format_models

    typer.echo(format_models(report))


@models_app.command("smoke")
def smoke(
    force: bool = typer.Option(False, "--force", help="Create it again even if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Create a tiny random-weight Stable Diffusion pipeline (diffusers format) and register it as `smoke`.

    It makes noise, quickly, through the real pipeline code: how the product runs without a real model.
    """
    from ..install.smoke import create_smoke_model
    from .common import load_settings, print_json

    model = create_smoke_model(load_settings(), force=force)
    if as_json:
        print_json(model.to_dict())
    else:
        typer.echo(f"smoke model ready at {model.path} ({model.width}x{model.height}); "
                   "use it with --engine diffusers --model smoke")
