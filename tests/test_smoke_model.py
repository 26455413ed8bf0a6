"""`kitty-coreml models smoke`: a tiny, deterministic, registered diffusers pipeline, made once."""

from __future__ import annotations

import json

from kitty_coreml.install.smoke import create_smoke_model
from kitty_coreml.models import Registry
from kitty_coreml.settings import Settings


def _weights(folder):
    return {path.relative_to(folder): path.read_bytes() for path in sorted(folder.rglob("*.safetensors"))}


def test_models_smoke_creates_registers_and_reuses(kitty, home):
    made = kitty("models", "smoke", "--json")
    assert made.returncode == 0, made.stderr
    info = made.json
    folder = home / "models" / "smoke"
    assert (info["name"], info["format"], info["path"]) == ("smoke", "diffusers", str(folder))
    assert (info["width"], info["height"]) == (64, 64)
    assert json.loads((home / "models.json").read_text())["models"]["smoke"]["path"] == str(folder)
    for name in ("model_index.json", "tokenizer/vocab.json", "tokenizer/merges.txt", "unet/config.json",
                 "vae/config.json", "text_encoder/config.json", "scheduler/scheduler_config.json"):
        assert (folder / name).is_file(), name
    assert not (folder / "safety_checker").exists()
    assert sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) < 10 * 2**20
    assert not [path for path in (home / "models").iterdir() if path.name.startswith(".")]  # no staging left

    stamps = {path: path.stat().st_mtime_ns for path in folder.rglob("*.safetensors")}
    again = kitty("models", "smoke")
    assert again.returncode == 0, again.stderr
    assert "smoke model ready" in again.stdout
    assert {path: path.stat().st_mtime_ns for path in folder.rglob("*.safetensors")} == stamps


def test_same_weights_every_build_and_a_broken_model_is_rebuilt(tmp_path):
    first = create_smoke_model(Settings.from_env({"KITTY_COREML_HOME": str(tmp_path / "a")}))
    second_settings = Settings.from_env({"KITTY_COREML_HOME": str(tmp_path / "b")})
    second = create_smoke_model(second_settings)
    assert _weights(first.path) == _weights(second.path)
    for path in (second.path / "unet").iterdir():
        path.unlink()
    rebuilt = create_smoke_model(second_settings)
    assert _weights(rebuilt.path) == _weights(first.path)
    assert Registry(second_settings.registry_path).get("smoke").path == second.path
