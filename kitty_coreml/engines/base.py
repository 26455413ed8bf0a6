"""What every engine is: given one EngineJob it writes PNGs into the job's private folder, reports
progress, and honours cancellation. The orchestrator checks what it wrote; engines do not publish."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..cancel import CancelToken
from ..progress import ProgressEvent

if TYPE_CHECKING:
    from ..models import ModelInfo
    from ..request import GenerationRequest

__all__ = ["EngineJob", "ProgressEvent", "EngineImage", "EngineOutput", "CancelToken", "Engine", "ProgressCallback"]


@dataclass(frozen=True)
class EngineJob:
    request: GenerationRequest
    seed: int
    run_id: str
    model: ModelInfo
    compute_units: str
    output_dir: Path
    """A private, empty folder for this run; the engine writes only inside it."""
    timeout_s: float = 900.0
    """The engine kills the generation past this many seconds (EngineTimeout)."""
    input_image: Path | None = None
    """The starting image for img2img, already scaled and cropped to the model's native size."""


ProgressCallback = Callable[[ProgressEvent], None]


@dataclass(frozen=True)
class EngineImage:
    index: int
    path: Path | None
    """None when the safety checker removed the image."""


@dataclass
class EngineOutput:
    engine: str
    images: list[EngineImage]
    timings: dict[str, float] = field(default_factory=dict)
    peak_rss_bytes: int | None = None
    log_tail: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    """What the engine says the user should know (a prompt cut to the text encoder's tokens)."""
    details: dict[str, Any] = field(default_factory=dict)
    """The library, version, backend, device and sampler names behind the images, where the engine says
    (sdcpp); kept in each image's metadata as engineDetails."""


class Engine(Protocol):
    name: str

    def describe(self, job: EngineJob) -> dict[str, Any]:
        """What would run, for --dry-run: at least {"engine": name}; the sample engine adds "argv"."""

    def generate(self, job: EngineJob, on_progress: ProgressCallback, cancel: CancelToken) -> EngineOutput:
        """Write the job's images into job.output_dir. Raise a KittyError on any failure."""

    def close(self) -> None:
        """Release what the engine holds (a warm worker process). Safe to call twice."""
