"""Fixtures of the Studio provider tests: a fake bundle per ratio (made once), and providers on the
fake binary and on the mock backend."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.studio.harness import Provider, fake_bundles, fake_provider, mock_provider


@pytest.fixture(scope="session")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return fake_bundles(tmp_path_factory.mktemp("bundles"))


@pytest.fixture
def fake(tmp_path: Path, bundles: dict[str, Path]) -> Provider:
    return fake_provider(tmp_path, bundles)


@pytest.fixture
def mock(tmp_path: Path) -> Provider:
    return mock_provider(tmp_path)


@pytest.fixture(params=["fake", "mock"])
def provider(request: pytest.FixtureRequest, tmp_path: Path, bundles: dict[str, Path]) -> Provider:
    """The same case against the fake binary and against the mock backend."""
    return fake_provider(tmp_path, bundles) if request.param == "fake" else mock_provider(tmp_path)
