"""Stand-in for diffusers' single-file loader inside the fake converter venv only (the tests' own venv
has the real diffusers). Real `from_single_file` needs the hub for the original configs, which tests
cannot reach; this one reads a real .safetensors header and rebuilds the pipeline the test recorded in
its `__metadata__` ("kitty_test_pipeline": a diffusers folder), saving it as the fp16 variant the way
`save_pretrained(variant="fp16")` names files. A checkpoint without that key fails as an unreadable one."""

import json
import shutil
import struct
from pathlib import Path


class _Pipeline:
    def __init__(self, folder):
        self.folder = Path(folder)

    def save_pretrained(self, out, variant=None, safe_serialization=True):
        shutil.copytree(self.folder, out, dirs_exist_ok=True)
        for weights in Path(out).rglob("*.safetensors"):
            if variant and f".{variant}." not in weights.name:
                weights.rename(weights.with_name(weights.name.replace(".safetensors", f".{variant}.safetensors")))


class StableDiffusionPipeline:
    @classmethod
    def from_single_file(cls, path, torch_dtype=None):
        with open(path, "rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        source = (header.get("__metadata__") or {}).get("kitty_test_pipeline")
        if not source:
            raise ValueError(f"Failed to load {path}. The checkpoint could not be matched to a known model type.")
        return _Pipeline(source)


class StableDiffusionXLPipeline(StableDiffusionPipeline):
    pass
