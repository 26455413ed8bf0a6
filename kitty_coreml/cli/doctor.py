"""`kitty-coreml doctor`: what is installed, what is missing, and why Core ML cannot run here if so."""

from __future__ import annotations

import typer

from .app import app


@app.command()
def doctor(as_json: bool = typer.Option(False, "--json", help="Print one JSON object.")) -> None:
    """Check the platform, the engines, the models and the store. Exits 1 when nothing can generate."""
    from ..doctor import diagnose
    from .common import load_settings, print_json

    report = diagnose(load_settings())
    if as_json:
        print_json(report)
    else:
        for check in report["checks"]:
            mark = "MISS" if not check["ok"] else "warn" if check.get("warning") else "ok  "
            typer.echo(f"[{mark}] {check['name']}: {check['detail']}")
            if check.get("warning"):
                typer.echo(f"       warning: {check['warning']}")
            if check.get("fix"):
                typer.echo(f"       fix: {check['fix']}")
        typer.echo("ready: " + (", ".join(report["ready"]) if report["ready"] else "nothing can generate yet"))
    if not report["ready"]:
        raise typer.Exit(1)
