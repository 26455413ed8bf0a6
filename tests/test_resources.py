import pytest

from kitty_coreml.errors import ModelError
from kitty_coreml.resources import inspect_resources
from tests.fakes import make_resources


def test_sd_split_einsum(tmp_path):
    info = inspect_resources(make_resources(tmp_path / "m", encoder=True, safety=True))
    assert (info.family, info.width, info.height, info.attention) == ("sd", 512, 512, "split_einsum")
    assert info.has_encoder and info.has_safety and info.complete


@pytest.mark.parametrize(("family", "width", "height"), [("sdxl", 1024, 1024), ("sd", 768, 576), ("sd3", 512, 512)])
def test_family_and_native_size(tmp_path, family, width, height):
    info = inspect_resources(make_resources(tmp_path / "m", family=family, width=width, height=height,
                                            attention="original"))
    assert (info.family, info.width, info.height, info.attention) == (family, width, height, "original")
    assert not info.has_encoder and not info.has_safety


def test_chunked_unet_and_missing_files(tmp_path):
    folder = make_resources(tmp_path / "m", chunked=True, omit=("merges.txt", "VAEDecoder.mlmodelc"))
    info = inspect_resources(folder)
    assert info.width == 512
    assert info.missing == ["VAEDecoder.mlmodelc", "merges.txt"]


def test_missing_unet_named(tmp_path):
    info = inspect_resources(make_resources(tmp_path / "m", omit=("Unet.mlmodelc",)))
    assert any(m.startswith("Unet.mlmodelc") for m in info.missing)


def test_missing_folder(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        inspect_resources(tmp_path / "nothing")
