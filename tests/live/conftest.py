"""The end-to-end Studio cases run against three backends: the fake binary and the mock backend
everywhere, and the real binary and models on a Mac when SYSTEMSCULPT_LOCAL_IMAGEGEN_LIVE=1 or
KITTY_COREML_LIVE=1 (skipped elsewhere, with that reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.studio.harness import Provider, fake_bundles, fake_provider, live_provider, live_skip_reason, mock_provider


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fake_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture(params=["fake", "mock", pytest.param("live", marks=pytest.mark.live)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Provider:
    if request.param == "live":
        reason = live_skip_reason()
        if reason:
            pytest.skip(reason)
        return live_provider(tmp_path)
    if request.param == "mock":
        return mock_provider(tmp_path)
    return fake_provider(tmp_path, request.getfixturevalue("bundles"))
