"""`kitty-coreml models`: what is installed and available, registering folders by name (KITTY's names
too), and the tiny smoke model."""

from __future__ import annotations

import typer

from .app import app

models_app = typer.Typer(help="List, add and remove models; create the tiny smoke model.",
                         no_args_is_help=True)
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
    sdcpp: bool = typer.Option(False, "--sdcpp", help="Instead: a random-weight model with the real SD 1.5 "
                                                      "architecture as one .safetensors file (2.1 GB, built "
                                                      "once per machine in ~/.cache/kitty-coreml), for the "
                                                      "sdcpp engine, registered as `smoke-sd15`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Create a tiny random-weight Stable Diffusion pipeline (diffusers format) and register it as `smoke`.

    It makes noise, quickly, through the real pipeline code: how the product runs without a real model.
    """
    from .common import load_settings, print_json

    settings = load_settings()
    if sdcpp:
        from ..install.sd15_random import build_random_sd15, cached_path
        from ..models.registry import Registry, model_from_folder

        target = cached_path()  # one per machine, shared by every home (and the tests)
        if force or not target.is_file():
            typer.echo(f"building a random-weight SD 1.5 model at {target} (about half a minute)", err=True)
            build_random_sd15(target)
        model = model_from_folder(target, "smoke-sd15")
        Registry(settings.registry_path).register(model)
        hint = "use it with --model smoke-sd15 --width 64 --height 64 (any multiple of 64)"
    else:
        from ..install.smoke import create_smoke_model

        model = create_smoke_model(settings, force=force)
        hint = "use it with --engine diffusers --model smoke"
    if as_json:
        print_json(model.to_dict())
    else:
        typer.echo(f"{model.name} model ready at {model.path} ({model.width}x{model.height}, {model.format}); {hint}")


@models_app.command("add")
def add(
    name: str = typer.Argument(..., help="The name requests use, e.g. KITTY's sdxl_base."),
    folder: str = typer.Argument(..., help="A Core ML resource folder (*.mlmodelc), a diffusers pipeline "
                                           "(model_index.json), or one .gguf/.safetensors/.ckpt file (the "
                                           "sdcpp engine)."),
    variant: bool = typer.Option(False, "--variant", help="Add FOLDER as another size of the registered "
                                                          "model NAME instead of replacing it."),
    make_default: bool = typer.Option(False, "--default", help="Make it the model used when a request names none."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Register a model folder or file under a name (or, with --variant, as another size of a registered model)."""
    from pathlib import Path

    from ..models.registry import Registry, check_name, model_from_folder
    from .common import load_settings, print_json

    registry = Registry(load_settings().registry_path)
    check_name(name)
    if variant:
        added = registry.add_variant(name, Path(folder))
        report = {"name": name, "variant": added.to_dict()}
        message = f"{name}: variant {added.width}x{added.height} at {added.path}"
    else:
        model = model_from_folder(Path(folder), name)
        registry.register(model, make_default=make_default)
        report = model.to_dict()
        message = f"{name}: {model.format} {model.family} model, {model.width}x{model.height}, at {model.path}"
    print_json(report) if as_json else typer.echo(message)


@models_app.command("remove")
def remove(name: str = typer.Argument(..., help="A registered model name.")) -> None:
    """Forget a registered name; the model's files stay where they are."""
    from ..errors import ModelError
    from ..models.registry import Registry
    from .common import load_settings

    registry = Registry(load_settings().registry_path)
    if name not in registry.names():
        raise ModelError(f"no model {name!r} is registered; registered: {', '.join(registry.names()) or 'none'}")
    registry.unregister(name)
    typer.echo(f"{name}: removed from the registry (its files are untouched)")
