"""A stand-in worker for WorkerEngine's failure paths. It speaks docs/protocol.md (hello, load,
generate, cancel, shutdown) and misbehaves on request; the prompt picks the behaviour:

- "crash":  one progress event, a line on stderr, then exit 3 in the middle of the generate;
- "hang":   starts a grandchild (pid on stderr as `grandchild <pid>`), one progress event, then
            stops answering and ignores cancel, like a wedged GPU call;
- "slow":   one progress event per step until a cancel arrives (then `cancelled`);
- anything else: writes `count` small PNGs and answers `result`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

from PIL import Image

out = os.fdopen(os.dup(1), "wb", buffering=0)
os.dup2(2, 1)
write_lock = threading.Lock()
cancelled = threading.Event()
generating = threading.Event()
jobs: list[dict] = []
job_ready = threading.Condition()


def send(message: dict) -> None:
    with write_lock:
        out.write((json.dumps(message) + "\n").encode())


def generate(message: dict) -> None:
    prompt, total = message["prompt"], message["steps"]
    send({"type": "progress", "id": message["id"], "step": 1, "total": total})
    if prompt == "crash":
        sys.stderr.write("boom: simulated crash in the sampler\n")
        sys.stderr.flush()
        os._exit(3)
    if prompt == "hang":
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
        sys.stderr.write(f"grandchild {child.pid}\n")
        sys.stderr.flush()
        threading.Event().wait()
    if prompt == "slow":
        step = 1
        while not cancelled.wait(0.05):
            step = min(step + 1, total)
            send({"type": "progress", "id": message["id"], "step": step, "total": total})
        send({"type": "error", "id": message["id"], "code": "cancelled", "message": "cancelled"})
        return
    paths = []
    for index in range(message["count"]):
        path = os.path.join(message["output_dir"], f"image_{index}.png")
        Image.new("RGB", (64, 64), (message["seed"] % 256, index, 0)).save(path)
        paths.append(path)
    send({"type": "result", "id": message["id"], "images": paths, "seed": message["seed"], "width": 64,
          "height": 64, "seconds": 0.0})


def main_loop() -> None:
    while True:
        with job_ready:
            while not jobs:
                job_ready.wait()
            message = jobs.pop(0)
        if message["type"] == "_eof":
            os._exit(0)
        if message["type"] == "shutdown":
            send({"type": "bye", "id": message["id"]})
            os._exit(0)
        if message["type"] == "load":
            send({"type": "loaded", "id": message["id"], "model_path": message["model_path"],
                  "compute_units": message["compute_units"], "device": "cpu", "family": "sd", "width": 64,
                  "height": 64, "has_encoder": True, "has_safety": False, "seconds": 0.0})
        elif message["type"] == "generate":
            cancelled.clear()
            generate(message)


def read_loop() -> None:
    for line in sys.stdin.buffer:
        message = json.loads(line)
        if message["type"] == "hello":
            send({"type": "hello", "id": message["id"], "protocol_version": 1, "engine": "diffusers",
                  "engine_version": "crashy", "device": "cpu", "families": ["sd"], "sizes": ["native"],
                  "compute_units": ["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"],
                  "schedulers": ["pndm"], "features": ["cancel"], "pid": os.getpid()})
            continue
        if message["type"] == "cancel":
            cancelled.set()
            send({"type": "ack", "id": message["id"], "active": True})
            continue
        with job_ready:
            jobs.append(message)
            job_ready.notify()
    with job_ready:
        jobs.append({"type": "_eof"})
        job_ready.notify()


threading.Thread(target=main_loop, daemon=True).start()
read_loop()
threading.Event().wait()
