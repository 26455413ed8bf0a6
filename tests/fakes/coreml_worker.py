"""A stand-in for kitty-coreml-worker (swift_bridge) where Core ML cannot run: it speaks docs/protocol.md
(hello, load, generate, cancel, shutdown) on fake Core ML bundles (tests/fakes/resources.py), sizing its
images from the bundle's Unet metadata as the real worker does, and writes one line per model load to
the file named by FAKE_WORKER_LOADS, so tests can count how often a model was loaded."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PIL import Image

out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)


def send(message: dict) -> None:
    out.write((json.dumps(message) + "\n").encode())


def unet_size(folder: Path) -> tuple[int, int]:
    meta = json.loads((folder / "Unet.mlmodelc" / "metadata.json").read_text())[0]
    for tensor in meta["inputSchema"]:
        if tensor["name"] == "sample":
            shape = json.loads(tensor["shape"])
            return shape[3] * 8, shape[2] * 8
    raise ValueError(f"{folder}: no sample input")


loaded: dict | None = None
for line in sys.stdin.buffer:
    message = json.loads(line)
    kind, ident = message["type"], message.get("id")
    if kind == "hello":
        send({"type": "hello", "id": ident, "protocol_version": 1, "engine": "coreml",
              "engine_version": "fake", "device": "ane", "families": ["sd"], "sizes": ["native"],
              "compute_units": ["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"],
              "schedulers": ["pndm", "dpmpp"], "features": ["cancel"], "pid": os.getpid()})
    elif kind == "load":
        folder = Path(message["model_path"])
        width, height = unet_size(folder)
        loaded = {"width": width, "height": height}
        with open(os.environ["FAKE_WORKER_LOADS"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"model_path": str(folder), "compute_units": message["compute_units"],
                                  "pid": os.getpid()}) + "\n")
        send({"type": "loaded", "id": ident, "model_path": str(folder), "compute_units": message["compute_units"],
              "device": "ane", "family": "sd", "width": width, "height": height, "has_encoder": True,
              "has_safety": False, "seconds": 0.0})
    elif kind == "generate":
        for step in range(1, message["steps"] + 1):
            send({"type": "progress", "id": ident, "step": step, "total": message["steps"]})
        paths = []
        for index in range(message["count"]):
            path = os.path.join(message["output_dir"], f"image_{index}.png")
            Image.new("RGB", (loaded["width"], loaded["height"]), (message["seed"] % 256, index, 90)).save(path)
            paths.append(path)
        send({"type": "result", "id": ident, "images": paths, "seed": message["seed"], "width": loaded["width"],
              "height": loaded["height"], "seconds": 0.0})
    elif kind == "cancel":
        send({"type": "ack", "id": ident, "active": False})
    elif kind == "shutdown":
        send({"type": "bye", "id": ident})
        break
