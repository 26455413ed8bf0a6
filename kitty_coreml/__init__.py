"""kitty-coreml: local, private, fail-loud text-to-image on Apple Silicon through Core ML.

    import kitty_coreml
    result = kitty_coreml.generate(kitty_coreml.GenerationRequest(prompt="a red cube", count=2))
    print([image.path for image in result.images])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .request import GenerationRequest, GenerationResult
    from .settings import Settings

_ERRORS = ("KittyError", "InvalidRequest", "ConfigError", "ModelError", "PlatformUnsupported", "EngineError",
           "EngineTimeout", "Cancelled", "SafetyRemovedAll", "StoreError", "PublishPending", "NotFound")
_HOMES = {"GenerationRequest": "request", "GenerationResult": "request", "ImageResult": "request",
          "Settings": "settings", "CancelToken": "cancel", "ProgressEvent": "progress",
          **dict.fromkeys(_ERRORS, "errors")}
"""Where each public name lives. They are imported on first use, so that importing one module of the
package (the CLI, the Studio provider) costs only what that module needs."""

__all__ = ["generate", *_HOMES]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        value = getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate(request: GenerationRequest, settings: Settings | None = None, **options: Any) -> GenerationResult:
    """Generate, check, store and publish one request; settings default to the environment's.
    Options (engine, store, on_progress, cancel) are those of orchestrator.generate."""
    from . import orchestrator
    from .settings import Settings

    return orchestrator.generate(request, settings or Settings.from_env(), **options)
