"""`kitty-coreml images`: list the newest stored images; select one for its imageRef."""

from __future__ import annotations

import typer

from .app import app, group

images_app = group("List stored images and select one.")
app.add_typer(images_app, name="images")


@images_app.command("list")
def list_images(
    limit: int = typer.Option(20, "--limit", help="How many, newest first (1..1000)."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"items\": [...]}."),
) -> None:
    """The newest images in the store, newest first."""
    from ..errors import InvalidRequest
    from ..storage import create_store
    from .common import load_settings, print_json

    if not 1 <= limit <= 1000:
        raise InvalidRequest("limit", limit, "an integer 1..1000")
    items = create_store(load_settings()).list(limit)
    if as_json:
        print_json({"items": items})
        return
    if not items:
        typer.echo("no images stored yet; make one with `kitty-coreml generate \"a prompt\"`")
    for index, item in enumerate(items, start=1):
        typer.echo(f"{index:>4}  {item['key']}  {item['size'] / 1024:.0f} KiB  {item['last_modified']}")


@images_app.command("select")
def select_image(
    ref: str = typer.Argument(..., help="1-based index into `images list` (1 = newest), or a key."),
    as_json: bool = typer.Option(False, "--json", help="Print {\"imageRef\": {...}}."),
) -> None:
    """Print the imageRef (downloadUrl and storageUri) of one image."""
    from ..storage import create_store, resolve_ref
    from .common import load_settings, print_json

    settings = load_settings()
    store = create_store(settings)
    answer = store.select(resolve_ref(store, ref, settings.prefix))
    if as_json:
        print_json(answer)
        return
    typer.echo(f"downloadUrl: {answer['imageRef']['downloadUrl']}")
    typer.echo(f"storageUri:  {answer['imageRef']['storageUri']}")
