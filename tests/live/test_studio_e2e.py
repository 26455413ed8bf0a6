"""End-to-end Studio cases, one definition for every backend (fake binary, mock, live on a Mac):
text-to-image, img2img from an image the provider made itself, and each aspect ratio."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from kitty_coreml.seeds import studio_seed
from kitty_coreml.studio import RATIO_SIZES
from tests.studio.harness import Provider, request, staged_image


def test_text_to_image(backend: Provider) -> None:
    outcome = backend.run(request("studio photo of a matte black water bottle", count=2,
                                  runId="run_1f0c2d3e-0000-4000-8000-000000000001"))
    answer = outcome.answer
    assert len(answer["images"]) == 2
    assert answer["metadata"]["seed"] == 3299222219
    assert answer["metadata"]["qualityPreset"] == "balanced"
    assert len({Path(image["path"]).read_bytes() for image in answer["images"]}) == 2


def test_img2img_from_a_generated_base_image(backend: Provider, tmp_path: Path) -> None:
    base = backend.run(request("a red cube on a table", runId="run_base")).answer["images"][0]
    # The host stages its assets under its own names and formats: a JPEG of another size.
    reference = tmp_path / "staged-reference.jpg"
    with Image.open(base["path"]) as image:
        image.convert("RGB").resize((300, 200)).save(reference, format="JPEG")
    answer = backend.run(request("a blue cube on a table", runId="run_edit", inputImages=[staged_image(reference)],
                                 localOptions={"quality": "fast", "referenceInfluence": "strong"})).answer
    metadata = answer["metadata"]
    if backend.name == "mock":  # like the original's mock: references are ignored, and it says so
        assert metadata["usedReferenceImage"] is False and metadata["referenceStrength"] is None
        assert "the mock backend ignores reference images" in answer["warnings"]
    else:
        assert metadata["usedReferenceImage"] is True and metadata["referenceStrength"] == 0.35
    assert (metadata["stepCount"], metadata["guidanceScale"]) == (14, 7.0)
    assert (answer["images"][0]["width"], answer["images"][0]["height"]) == (base["width"], base["height"])
    assert Path(answer["images"][0]["path"]).read_bytes() != Path(base["path"]).read_bytes()


@pytest.mark.parametrize("ratio", list(RATIO_SIZES))
def test_each_aspect_ratio(backend: Provider, ratio: str) -> None:
    if ratio not in backend.ratio_sizes:
        pytest.skip(f"this machine's Studio manifest has no {ratio} bundle")
    answer = backend.run(request("a lighthouse at dusk", aspectRatio=ratio, runId=f"run_{ratio}")).answer
    image = answer["images"][0]
    assert (image["width"], image["height"]) == backend.ratio_sizes[ratio]
    assert answer["metadata"]["requestedAspectRatio"] == ratio
    assert answer["metadata"]["actualAspectRatio"] == ratio
    assert answer["metadata"]["seed"] == studio_seed("a lighthouse at dusk", f"run_{ratio}")
