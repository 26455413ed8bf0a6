"""`kitty-coreml node --request FILE`: the Studio host's local image provider, the same program as
`systemsculpt-local-imagegen` (see docs/studio.md): one JSON answer on stdout, or one
`[systemsculpt-local-imagegen] <message>` line on stderr and exit 1."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app


@app.command("node")
def node(
    request: Path = typer.Option(..., "--request", help="The studio.local-image-generation.request.v1 JSON file."),
) -> None:
    """Answer one Studio request (systemsculpt-local-imagegen).

    The same program as the systemsculpt-local-imagegen command; see docs/studio.md.
    """
    from ..studio import main

    main(["--request", str(request)])
