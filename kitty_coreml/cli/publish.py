"""`kitty-coreml publish --pending`: send the images the outbox holds back, exactly once."""

from __future__ import annotations

import typer

from .app import app


@app.command("publish")
def publish(
    pending: bool = typer.Option(False, "--pending", help="Publish every image waiting in the outbox."),
    workers: int = typer.Option(8, "--workers", min=1, max=64, help="Uploads at once."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Publish the images a failed publish kept in the outbox.

    Safe beside running generations and other `publish --pending` runs: each image is sent once.
    Exits non-zero if any image failed.
    """
    from ..errors import InvalidRequest, StoreError
    from ..storage import create_store
    from ..storage.outbox import publish_pending
    from .common import load_settings, print_json

    if not pending:
        raise InvalidRequest("--pending", False, "--pending (the only thing publish does for now)")
    settings = load_settings()
    report = publish_pending(create_store(settings), settings.outbox_dir, workers=workers)
    report["outbox"] = str(settings.outbox_dir)
    if as_json:
        print_json(report)
    else:
        for key in report["published"]:
            typer.echo(f"published {key}")
        for failure in report["failed"]:
            typer.echo(f"failed {failure['key']}: {failure['error']}", err=True)
        typer.echo(f"{len(report['published'])} published, {len(report['failed'])} failed, "
                   f"{report['remaining']} still in {settings.outbox_dir}")
        if report["incomplete"]:
            typer.echo(f"{len(report['incomplete'])} PNG(s) without a sidecar left in the outbox "
                       "(an interrupted staging): " + ", ".join(report["incomplete"][:5]), err=True)
    if report["failed"]:
        raise typer.Exit(StoreError.exit_code)
