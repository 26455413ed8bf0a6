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


def test_a_folder_read_again_shows_what_changed_since(tmp_path):
    """Readings are reused while nothing changed: a part removed or added, a Unet rewritten, a dangling
    link, each shows on the next inspection."""
    import json
    import shutil

    folder = make_resources(tmp_path / "m", encoder=True)
    assert inspect_resources(folder).has_encoder and inspect_resources(folder).complete
    shutil.rmtree(folder / "VAEEncoder.mlmodelc")
    (folder / "merges.txt").unlink()
    (folder / "merges.txt").symlink_to(tmp_path / "gone.txt")
    changed = inspect_resources(folder)
    assert not changed.has_encoder and changed.missing == ["merges.txt"]
    changed.missing.append("a caller's own note")  # an answer is the caller's: the next one is unchanged
    assert inspect_resources(folder).missing == ["merges.txt"]
    metadata = folder / "Unet.mlmodelc" / "metadata.json"
    described = json.loads(metadata.read_text())
    described[0]["inputSchema"] = [dict(item, shape="[2, 4, 96, 64]") if item.get("name") == "sample" else item
                                   for item in described[0]["inputSchema"]]
    metadata.write_text(json.dumps(described))
    assert (inspect_resources(folder).width, inspect_resources(folder).height) == (512, 768)
