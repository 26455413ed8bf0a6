"""A test double of swift_bridge's `kitty-coreml-worker` (Sources/kitty-coreml-worker/main.swift), which
needs Core ML and cannot run here. It speaks docs/protocol.md as that worker does: the same hello, the
resource checks and native size of `inspectResources`, the refusals it makes before the library would
crash (steps 1 with pndm or sd3, SD3 img2img, guidance below 1 on a batch-2 Unet, an input image not at the
native size), PNDM's extra step, progress only while not stopped, `image_<i>.png` renamed from a dotted
temporary name, and end of stdin ending it silently. Instead of Core ML it writes small deterministic PNGs.

Knobs (environment variables, all optional):
  FAKE_SD_STEP_DELAY      seconds to spend on each step (float)
  FAKE_SD_INPUT_COPY      a file path: copy each generate's input_image there, as the worker read it
  FAKE_WORKER_LOADS       a file path: one JSON line per model load ({model_path, compute_units, pid}),
                          so tests can count how often a model was loaded
"""

import json
import os
import shutil
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from stable_diffusion_sample import image_size_of_file, input_shape, png_bytes  # noqa: E402

COMPUTE_UNITS = ["all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine"]
SCHEDULERS = ["pndm", "dpmpp"]
FAMILIES = ["sd", "sdxl", "sd3"]
REQUEST_TYPES = ["hello", "load", "generate", "cancel", "unload", "shutdown"]

out = os.fdopen(os.dup(1), "wb", buffering=0)  # fd 1 becomes stderr, as after the worker's dup2
os.dup2(2, 1)
lock = threading.Lock()
queue_ready = threading.Condition(lock)
state = {"queue": [], "pending": None, "ended": False, "loaded": None}


class Failed(Exception):
    def __init__(self, code, message):
        super().__init__(message)
        self.code, self.message = code, message


def send(message):
    out.write((json.dumps(message, separators=(",", ":")) + "\n").encode())


def error(request_id, code, message):
    return {"type": "error", "id": request_id, "code": code, "message": " ".join(message.split())}


def field(message, name, kinds, default=None, required=True, allowed=None, bounds=None):
    value = message.get(name)
    if value is None:
        if required and default is None:
            raise Failed("bad_request", f"{name}: missing; required")
        return default
    if not isinstance(value, kinds) or isinstance(value, bool) and bool not in kinds:
        raise Failed("bad_request", f"{name}: got {json.dumps(value)}; allowed: {allowed or kinds}")
    if allowed and value not in allowed:
        raise Failed("bad_request", f"{name}: got {json.dumps(value)}; allowed: {', '.join(allowed)}")
    if bounds and not bounds[0] <= value <= bounds[1]:
        raise Failed("bad_request", f"{name}: got {value}; allowed: {bounds[0]}..{bounds[1]}")
    return value


def inspect(folder, family):
    """main.swift's inspectResources: required files, the family, the native size and the Unet batch."""
    def has(name):
        return os.path.exists(os.path.join(folder, name))

    unet = "UnetChunk1.mlmodelc" if has("UnetChunk1.mlmodelc") and has("UnetChunk2.mlmodelc") else "Unet.mlmodelc"
    denoiser = "MultiModalDiffusionTransformer.mlmodelc" if family == "sd3" else unet
    encoders = {"sd": ["TextEncoder.mlmodelc"], "sdxl": ["TextEncoder2.mlmodelc"],
                "sd3": ["TextEncoder.mlmodelc", "TextEncoder2.mlmodelc"]}[family]
    missing = [n for n in [denoiser, "VAEDecoder.mlmodelc", "vocab.json", "merges.txt", *encoders] if not has(n)]
    if missing:
        raise Failed("load_failed", f"{folder} is not a Core ML {family} resource folder: missing {', '.join(missing)}")
    detected = "sd3" if has("MultiModalDiffusionTransformer.mlmodelc") else "sdxl" if has("TextEncoder2.mlmodelc") else "sd"
    if detected != family:
        raise Failed("load_failed", f"{folder} holds an {detected} model, not {family}; load it with family {detected}")
    shape = input_shape(os.path.join(folder, denoiser), "latent_image_embeddings" if family == "sd3" else "sample")
    if not shape or len(shape) != 4:
        raise Failed("load_failed", f"cannot read the native size of {folder}")
    return {"width": shape[3] * 8, "height": shape[2] * 8, "has_encoder": has("VAEEncoder.mlmodelc") and family != "sd3",
            "unet_batch": None if family == "sd3" else shape[0]}


def load(message):
    path = field(message, "model_path", (str,))
    units = field(message, "compute_units", (str,), allowed=COMPUTE_UNITS)
    family = field(message, "family", (str,), default="sd", allowed=FAMILIES)
    state["loaded"] = None
    if not path.startswith("/"):
        raise Failed("bad_request", f"model_path: got {json.dumps(path)}; allowed: an absolute path")
    if not os.path.isdir(path):
        raise Failed("load_failed", f"model_path: {path} does not exist or is not a folder")
    info = inspect(path, family)
    reply = {"type": "loaded", "id": message["id"], "model_path": path, "compute_units": units,
             "device": "cpu" if units == "cpuOnly" else "ane", "family": family, "width": info["width"],
             "height": info["height"], "has_encoder": info["has_encoder"], "has_safety": False, "seconds": 0.0}
    state["loaded"] = {**info, "family": family, "path": path}
    if os.environ.get("FAKE_WORKER_LOADS"):
        with open(os.environ["FAKE_WORKER_LOADS"], "a", encoding="utf-8") as log:
            log.write(json.dumps({"model_path": path, "compute_units": units, "pid": os.getpid()}) + "\n")
    return reply


def generate(job):
    message = job["message"]
    prompt = field(message, "prompt", (str,))
    if not prompt.strip():
        raise Failed("bad_request", f"prompt: got {json.dumps(prompt)}; allowed: non-empty text")
    count = field(message, "count", (int,), bounds=(1, 8))
    steps = field(message, "steps", (int,), bounds=(1, 150))
    guidance = field(message, "guidance", (int, float), bounds=(0, 30))
    scheduler = field(message, "scheduler", (str,), allowed=SCHEDULERS)
    seed = field(message, "seed", (int,), bounds=(0, 2**32 - 1))
    input_image = field(message, "input_image", (str,), required=False)
    strength = field(message, "strength", (int, float), default=0.5, bounds=(0, 1))
    output_dir = field(message, "output_dir", (str,))
    if not output_dir.startswith("/") or not os.path.isdir(output_dir):
        raise Failed("bad_request", f"output_dir: got {json.dumps(output_dir)}; allowed: an existing folder, as an absolute path")
    model = state["loaded"]
    if model is None:
        raise Failed("not_loaded", "no model is loaded; send load first")
    family = model["family"]
    if steps < 2 and (scheduler == "pndm" or family == "sd3"):
        raise Failed("unsupported", f"steps: got 1; the {'sd3' if family == 'sd3' else 'pndm'} scheduler needs at least 2")
    if family == "sd" and guidance < 1 and (model["unet_batch"] or 0) >= 2:
        raise Failed("unsupported", f"guidance: got {guidance}; allowed: 1..30 for {model['path']}, whose Unet takes "
                                    f"batch {model['unet_batch']} (guidance below 1 sends batch 1)")
    total = steps + 1 if scheduler == "pndm" and family != "sd3" else steps
    if input_image is not None:
        if family == "sd3":
            raise Failed("unsupported", "input_image: sd3 models cannot start from an image")
        if not model["has_encoder"]:
            raise Failed("unsupported", f"input_image: {model['path']} has no VAEEncoder.mlmodelc for img2img")
        try:
            with open(input_image, "rb") as handle:
                size = image_size_of_file(handle.read())
        except OSError:
            size = None
        if size is None:
            raise Failed("bad_request", f"input_image: cannot read {input_image} as a PNG or JPEG image")
        if size != (model["width"], model["height"]):
            raise Failed("bad_request", f"input_image: {input_image} is {size[0]}x{size[1]}; allowed: the model's "
                                        f"native {model['width']}x{model['height']}")
        if os.environ.get("FAKE_SD_INPUT_COPY"):
            shutil.copyfile(input_image, os.environ["FAKE_SD_INPUT_COPY"])
        if strength < 1:
            run = int(steps * strength)
            if run < 1:
                raise Failed("bad_request", f"strength: got {strength} with steps {steps}; allowed: steps x strength of at least 1")
            total = run + 1 if scheduler == "pndm" else run
    delay = float(os.environ.get("FAKE_SD_STEP_DELAY") or 0)
    for step in range(1, total + 1):
        if delay:
            time.sleep(delay)
        with lock:  # sendProgress: nothing is written once the generate is stopped
            if job["stopped"]:
                raise Failed("cancelled", "cancelled after a step, as asked")
            send({"type": "progress", "id": message["id"], "step": step, "total": total})
    paths = []
    for index in range(count):
        final = os.path.join(output_dir, f"image_{index}.png")
        partial = os.path.join(output_dir, f".image_{index}.png.partial")
        with open(partial, "wb") as handle:
            handle.write(png_bytes(model["width"], model["height"], f"{prompt}\0{seed}\0{index}\0{input_image or ''}"))
        os.rename(partial, final)
        paths.append(final)
    return {"type": "result", "id": message["id"], "images": paths, "seed": seed, "width": model["width"],
            "height": model["height"], "seconds": 0.0}


def run_queue():
    while True:
        with queue_ready:
            while not state["queue"]:
                queue_ready.wait()
            job = state["queue"].pop(0)
            job["started"] = True
        message = job["message"]
        if message["type"] == "shutdown":
            with lock:
                send({"type": "bye", "id": message["id"]})
            os._exit(0)
        try:
            if message["type"] == "load":
                reply = load(message)
            elif message["type"] == "generate":
                reply = generate(job)
            else:
                state["loaded"] = None
                reply = {"type": "unloaded", "id": message["id"]}
        except Failed as failed:
            reply = error(message["id"], failed.code, failed.message)
        with lock:
            if state["pending"] is job:
                state["pending"] = None
            if not state["ended"]:
                send(reply)


def dispatch(message):
    request_id, kind = message["id"], message["type"]
    if kind not in REQUEST_TYPES:
        return send(error(request_id, "unknown_type", f"type: got {json.dumps(kind)}; allowed: {', '.join(REQUEST_TYPES)}"))
    if kind == "hello":
        if message.get("protocol_version") != 1:
            return send(error(request_id, "unsupported_version", f"protocol_version: got {message.get('protocol_version')}; allowed: 1"))
        return send({"type": "hello", "id": request_id, "protocol_version": 1, "engine": "coreml",
                     "engine_version": "fake kitty-coreml-worker", "device": "ane", "families": FAMILIES,
                     "sizes": ["native"], "compute_units": COMPUTE_UNITS, "schedulers": SCHEDULERS,
                     "features": ["img2img", "cancel", "safety", "reduce_memory"], "pid": os.getpid()})
    running = state["pending"]
    if kind == "cancel":
        target = message.get("target")
        active = running is not None and target in (None, running["message"]["id"])
        if active:
            running["stopped"] = True
        return send({"type": "ack", "id": request_id, "active": active})
    if kind == "shutdown" and running is not None:
        running["stopped"] = True
    elif running is not None:
        return send(error(request_id, "busy", f"generate {json.dumps(running['message']['id'])} is running"))
    job = {"message": message, "stopped": False, "started": False}
    if kind == "generate":
        state["pending"] = job
    state["queue"].append(job)
    queue_ready.notify()


def main():
    threading.Thread(target=run_queue, daemon=True).start()
    for number, line in enumerate(sys.stdin.buffer, 1):
        if not line.strip():
            continue
        try:
            message = json.loads(line)
        except ValueError:
            message = None
        with lock:
            if not isinstance(message, dict) or not isinstance(message.get("id"), str) \
                    or not isinstance(message.get("type"), str):
                send(error(message.get("id") if isinstance(message, dict) and isinstance(message.get("id"), str)
                           else None, "malformed", f"line {number} is not a protocol request"))
                continue
            dispatch(message)
    with lock:  # end of stdin: stop silently; only a generate already running is waited for
        state["ended"] = True
        running = state["pending"]
        if running is not None:
            running["stopped"] = True
    os._exit(0)


if __name__ == "__main__":
    if sys.argv[1:] == ["--version"]:  # main.swift: the worker's version and the library commit, then exit 0
        out.write(b"kitty-coreml-worker 0.1.0 (ml-stable-diffusion e12202c1f6405b83918b58a5d097cd61e3e1f702) [double]\n")
        os._exit(0)
    main()
