"""The HTTP service: KITTY's images-service API, the job queue behind it, and the /vision gallery."""

from __future__ import annotations

__all__ = ["create_app"]


def create_app(*args, **kwargs):
    """See kitty_coreml.service.app.create_app (imported lazily: FastAPI is an optional extra)."""
    from .app import create_app as build

    return build(*args, **kwargs)
