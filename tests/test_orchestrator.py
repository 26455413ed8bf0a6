"""The orchestrator's checks of what an engine produced, with engines that misbehave on purpose."""

from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from kitty_coreml.engines.base import EngineImage, EngineOutput
from kitty_coreml.errors import OutputError
from kitty_coreml.orchestrator import generate
from kitty_coreml.request import GenerationRequest
from kitty_coreml.settings import Settings


class WritingEngine:
    """Writes the given bytes as each image: a stand-in for an engine that lies about its output."""

    name = "sample"

    def __init__(self, payload: bytes, images: int | None = None):
        self.payload = payload
        self.images = images

    def describe(self, job):
        return {"engine": self.name}

    def generate(self, job, on_progress, cancel):
        paths = []
        for index in range(self.images if self.images is not None else job.request.count):
            path = job.output_dir / f"{index}.png"
            path.write_bytes(self.payload)
            paths.append(EngineImage(index, path))
        return EngineOutput(engine=self.name, images=paths)

    def close(self):
        pass


def _png(size) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(("engine", "message"), [
    (WritingEngine(b"\x89PNG\r\n\x1a\ngarbage"), "is not a PNG that decodes"),
    (WritingEngine(_png((256, 256))), "is 256x256; the model makes 512x512"),
    (WritingEngine(_png((512, 512)), images=1), "returned 1 image(s); 2 were asked for"),
])
def test_bad_engine_output_is_refused_and_nothing_stored(tmp_path, resources, engine, message):
    settings = Settings.from_env({"KITTY_COREML_HOME": str(tmp_path / "home"),
                                  "KITTY_COREML_RESOURCE_PATH": str(resources)})
    with pytest.raises(OutputError, match=re.escape(message)):
        generate(GenerationRequest(prompt="a cube", count=2), settings, engine=engine)
    assert not list((tmp_path / "home").rglob("*.png"))
