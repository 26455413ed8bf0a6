"""kitty-coreml: local, private, fail-loud text-to-image on Apple Silicon through Core ML.

    import kitty_coreml
    result = kitty_coreml.generate(kitty_coreml.GenerationRequest(prompt="a red cube", count=2))
    print([image.path for image in result.images])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cancel import CancelToken
from .engines.base import ProgressEvent
from .errors import (Cancelled, ConfigError, EngineError, EngineTimeout, InvalidRequest, KittyError, ModelError,
                     NotFound, PlatformUnsupported, PublishPending, SafetyRemovedAll, StoreError)
from .request import GenerationRequest, GenerationResult, ImageResult

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "generate",
    "GenerationRequest",
    "GenerationResult",
    "ImageResult",
    "Settings",
    "CancelToken",
    "ProgressEvent",
    "KittyError",
    "InvalidRequest",
    "ConfigError",
    "ModelError",
    "PlatformUnsupported",
    "EngineError",
    "EngineTimeout",
    "Cancelled",
    "SafetyRemovedAll",
    "StoreError",
    "PublishPending",
    "NotFound",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    """Settings is imported on first use: it brings pydantic, which `systemsculpt-local-imagegen --help` and
    every other light path of the package do without."""
    if name == "Settings":
        from .settings import Settings

        return Settings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def generate(request: GenerationRequest, settings: Settings | None = None, **options: Any) -> GenerationResult:
    """Generate, check, store and publish one request; settings default to the environment's.
    Options (engine, store, on_progress, cancel) are those of orchestrator.generate."""
    from . import orchestrator
    from .settings import Settings

    return orchestrator.generate(request, settings or Settings.from_env(), **options)
