"""The mock engine: procedural PNGs drawn with Pillow, no model and no subprocess. Image i of a run is
seeded from `prompt::runId::i`, so the same request always gives the same pixels; what a host's CI runs."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from ..errors import Cancelled
from ..seeds import studio_seed
from .base import CancelToken, EngineImage, EngineJob, EngineOutput, ProgressCallback, ProgressEvent

__all__ = ["MockEngine", "image_seed"]

_GRID = 48
"""The pattern is computed on a small grid and scaled up: smooth, and fast at any size."""


def image_seed(prompt: str, run_id: str, index: int) -> int:
    """FNV-1a of `prompt::runId::index` (the Studio rule with the index appended to the run id)."""
    return studio_seed(prompt, f"{run_id}::{index}")


def _pattern(seed: int, prompt_weight: float) -> list[tuple[int, int, int]]:
    phase_a = (seed % 1024) / 1024
    phase_b = ((seed >> 10) % 1024) / 1024 * math.pi
    phase_c = ((seed >> 20) % 1024) / 1024 * math.pi * 2
    freq_a = 2.5 + (seed & 0xFF) / 255 * 6.5
    freq_b = 1.8 + ((seed >> 8) & 0xFF) / 255 * 5.4
    freq_c = 1.2 + ((seed >> 16) & 0xFF) / 255 * 4.8
    base = (72 + prompt_weight * 96, 84 + (1 - prompt_weight) * 92, 110 + abs(0.5 - prompt_weight) * 120)
    pixels = []
    for y in range(_GRID):
        ny = y / (_GRID - 1)
        for x in range(_GRID):
            nx = x / (_GRID - 1)
            wave1 = math.sin((nx * freq_a + ny * freq_a * 0.5 + phase_a) * math.pi * 2)
            wave2 = math.cos(ny * freq_b - nx * freq_b * 0.35 + phase_b)
            wave3 = math.sin((math.hypot(nx - 0.5, ny - 0.5) * freq_c + phase_c) * math.pi * 2)
            blend = wave1 * 0.45 + wave2 * 0.35 + wave3 * 0.2
            rgb = (base[0] + blend * 120 + wave2 * 40, base[1] + blend * 98 - wave1 * 32,
                   base[2] + blend * 110 + wave3 * 55)
            pixels.append(tuple(max(0, min(255, round(c))) for c in rgb))
    return pixels


class MockEngine:
    """Engine protocol implementation that needs nothing but Pillow. It draws at the job's model size
    (the orchestrator sets it from the request's width/height); with an input image the result leans
    towards that image as the strength falls."""

    name = "mock"

    def describe(self, job: EngineJob) -> dict[str, Any]:
        width, height = self._size(job)
        return {"engine": self.name, "width": width, "height": height, "count": job.request.count,
                "seeds": [image_seed(job.request.prompt, job.run_id, i) for i in range(job.request.count)]}

    def generate(self, job: EngineJob, on_progress: ProgressCallback, cancel: CancelToken) -> EngineOutput:
        from PIL import Image

        started = time.monotonic()
        width, height = self._size(job)
        request = job.request
        on_progress(ProgressEvent("loading", message="procedural mock: no model to load"))
        reference = None
        if job.input_image is not None:
            with Image.open(job.input_image) as source:
                reference = source.convert("RGB")
            if reference.size != (width, height):
                reference = reference.resize((width, height), Image.Resampling.BICUBIC)
        prompt_weight = (studio_seed(request.prompt, "mock") % 8192) / 8192
        on_progress(ProgressEvent("sampling", images=request.count))
        images = []
        for index in range(request.count):
            if cancel.cancelled:
                raise Cancelled(f"generation cancelled: {cancel.reason}")
            seed = image_seed(request.prompt, job.run_id, index)
            grid = Image.new("RGB", (_GRID, _GRID))
            grid.putdata(_pattern(seed, prompt_weight))
            image = grid.resize((width, height), Image.Resampling.BICUBIC)
            if reference is not None:
                image = Image.blend(reference, image, request.effective_strength)
            path = job.output_dir / f"mock.{index}.{seed}.final.png"
            _save_atomically(image, path)
            images.append(EngineImage(index=index, path=path))
            on_progress(ProgressEvent("saved", step=index + 1, total=request.count, images=index + 1))
        return EngineOutput(engine=self.name, images=images,
                            timings={"generate_s": round(time.monotonic() - started, 4)})

    def close(self) -> None:
        """Nothing is held."""

    @staticmethod
    def _size(job: EngineJob) -> tuple[int, int]:
        return job.model.width, job.model.height


def _save_atomically(image: Any, path: Path) -> None:
    partial = path.with_name(f".{path.name}.partial")
    image.save(partial, format="PNG")
    os.replace(partial, path)
