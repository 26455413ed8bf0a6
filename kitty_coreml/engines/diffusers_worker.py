"""The portable warm worker: the worker protocol (docs/protocol.md) on torch + diffusers.

    python -m kitty_coreml.engines.diffusers_worker

Loads a diffusers-format Stable Diffusion folder (local files only: nothing downloads) and serves
generations from it: pndm and dpmpp schedulers, seeds, negative prompts, several images, img2img
through StableDiffusionImg2ImgPipeline sharing the loaded components. compute_units cpuOnly runs on
the CPU; every other value on the best device there is (cuda, then mps, then cpu).

A reader thread owns stdin: it answers hello, cancel and bad lines at once and hands the rest to the
main thread, which runs one request at a time. Progress is reported from the pipeline's step
callback, which is also where a cancel stops the run.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .worker_runtime import (
    Job,
    LineWriter,
    PythonWorker,
    RequestFailed,
    StopRequested,
    own_version,
    read_generate,
    run_worker,
    save_png,
)
from .worker_runtime import check_field as _field

__all__ = ["main"]

COMPUTE_UNITS = ("all", "cpuOnly", "cpuAndGPU", "cpuAndNeuralEngine")
SCHEDULERS = ("pndm", "dpmpp")
FAMILIES = ("sd",)


def _best_device(compute_units: str) -> str:
    import torch

    if compute_units == "cpuOnly":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


@dataclass
class _Loaded:
    key: tuple
    pipe: Any
    img2img: Any
    base_scheduler_config: Any
    device: str
    width: int
    height: int
    has_safety: bool
    reply: dict[str, Any]


class DiffusersWorker(PythonWorker):
    def __init__(self, writer: LineWriter, stdin: IO[bytes]):
        super().__init__(writer, stdin)
        self.loaded: _Loaded | None = None

    # -- the requests ---------------------------------------------------------------------------
    def hello_fields(self) -> dict[str, Any]:
        import diffusers
        import torch

        return {"engine": "diffusers",
                "engine_version": f"kitty-coreml {own_version()}; diffusers {diffusers.__version__}; torch {torch.__version__}",
                "device": _best_device("all"), "families": list(FAMILIES), "sizes": ["native"],
                "compute_units": list(COMPUTE_UNITS), "schedulers": list(SCHEDULERS),
                "features": ["img2img", "cancel", "safety", "reduce_memory"]}

    def load(self, message: dict[str, Any]) -> dict[str, Any]:
        model_path = _field(message, "model_path", (str,))
        compute_units = _field(message, "compute_units", (str,), choices=COMPUTE_UNITS)
        family = _field(message, "family", (str,), default="sd", choices=("sd", "sdxl", "sd3"))
        reduce_memory = _field(message, "reduce_memory", (bool,), default=False)
        safety = _field(message, "safety", (bool,), default=False)
        key = (model_path, compute_units, family, reduce_memory, safety)
        if self.loaded is not None and self.loaded.key == key:
            return {**self.loaded.reply, "id": message["id"], "seconds": 0.0}
        self.unload()
        if family not in FAMILIES:
            raise RequestFailed("load_failed", f"family: got {family!r}; this worker loads: {', '.join(FAMILIES)}")
        folder = Path(model_path)
        if not folder.is_absolute():
            raise RequestFailed("bad_request", f"model_path: got {model_path!r}; allowed: an absolute path")
        if not (folder / "model_index.json").is_file():
            raise RequestFailed("load_failed", f"{folder} is not a diffusers pipeline folder "
                                               f"(no model_index.json there)")
        started = time.monotonic()
        try:
            self.loaded = self._load_pipeline(folder, compute_units, family, reduce_memory, safety, key)
        except RequestFailed:
            raise
        except Exception as exc:
            raise RequestFailed("load_failed", f"cannot load {folder}: {type(exc).__name__}: {exc}") from exc
        reply = {**self.loaded.reply, "id": message["id"], "seconds": round(time.monotonic() - started, 4)}
        self.loaded.reply = reply
        return reply

    def _load_pipeline(self, folder: Path, compute_units: str, family: str, reduce_memory: bool,
                       safety: bool, key: tuple) -> _Loaded:
        import torch
        from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

        device = _best_device(compute_units)
        dtype = torch.float16 if device == "cuda" else torch.float32
        options: dict[str, Any] = {"local_files_only": True, "torch_dtype": dtype}
        if not safety:
            options.update(safety_checker=None, requires_safety_checker=False)
        pipe = StableDiffusionPipeline.from_pretrained(str(folder), **options).to(device)
        pipe.set_progress_bar_config(disable=True)
        if reduce_memory:
            pipe.enable_attention_slicing()
        img2img = StableDiffusionImg2ImgPipeline(**pipe.components)
        img2img.set_progress_bar_config(disable=True)
        has_safety = safety and getattr(pipe, "safety_checker", None) is not None
        width = height = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
        reply = {"type": "loaded", "id": "", "model_path": str(folder), "compute_units": compute_units,
                 "device": device, "family": family, "width": width, "height": height,
                 "has_encoder": getattr(pipe, "vae", None) is not None, "has_safety": has_safety,
                 "seconds": 0.0}
        return _Loaded(key=key, pipe=pipe, img2img=img2img, base_scheduler_config=pipe.scheduler.config,
                       device=device, width=width, height=height, has_safety=has_safety, reply=reply)

    def unload(self) -> None:
        if self.loaded is None:
            return
        self.loaded = None
        import gc

        gc.collect()

    def generate(self, job: Job) -> dict[str, Any]:
        message = job.message
        fields = read_generate(message)
        prompt, negative, count, steps, guidance = (fields.prompt, fields.negative, fields.count, fields.steps,
                                                    fields.guidance)
        scheduler, seed, input_image, strength = fields.scheduler, fields.seed, fields.input_image, fields.strength
        output_dir = fields.output_dir
        if self.loaded is None:
            raise RequestFailed("not_loaded", "no model is loaded; send load first")
        loaded = self.loaded
        starting = self._starting_image(input_image, loaded) if input_image is not None else None

        import torch
        from diffusers import DPMSolverMultistepScheduler, PNDMScheduler

        scheduler_class = PNDMScheduler if scheduler == "pndm" else DPMSolverMultistepScheduler
        pipe = loaded.pipe if starting is None else loaded.img2img
        # Images run one at a time, each from its own generator seeded seed + i: a batch of n runs
        # other matrix shapes than n batches of one, and BLAS kernels then round differently, so
        # only this makes image i of a request bit-identical to a count-1 request with seed + i.
        done_steps = 0

        def on_step_end(pipeline: Any, step_index: int, timestep: Any, tensors: dict) -> dict:
            per_image = int(pipeline.num_timesteps)
            self.writer.send({"type": "progress", "id": message["id"], "step": done_steps + step_index + 1,
                              "total": per_image * count})
            if job.stop.is_set():
                raise StopRequested
            return tensors

        if job.stop.is_set():
            raise RequestFailed("cancelled", "cancelled before the first step")
        started = time.monotonic()
        arguments: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative or None, "num_images_per_prompt": 1,
            "num_inference_steps": steps, "guidance_scale": float(guidance),
            "callback_on_step_end": on_step_end, "output_type": "pil",
        }
        if starting is not None:
            arguments.update(image=starting, strength=float(strength))
        else:
            arguments.update(width=loaded.width, height=loaded.height)
        images: list[Any] = []
        flagged: list[bool] = []
        for index in range(count):
            pipe.scheduler = scheduler_class.from_config(loaded.base_scheduler_config)
            generator = torch.Generator(device="cpu").manual_seed((seed + index) % 2**32)
            try:
                with torch.inference_mode():
                    output = pipe(**arguments, generator=generator)
            except StopRequested:
                raise RequestFailed("cancelled", "cancelled after step as asked") from None
            except Exception as exc:
                raise RequestFailed("generation_failed", f"{type(exc).__name__}: {exc}") from exc
            done_steps += int(pipe.num_timesteps)
            images.append(output.images[0])
            flagged.append(bool((getattr(output, "nsfw_content_detected", None) or [False])[0]))
        paths: list[str | None] = []
        for index, image in enumerate(images):
            if flagged[index]:
                paths.append(None)
                continue
            paths.append(save_png(image, output_dir, index))
        reply = {"type": "result", "id": message["id"], "images": paths, "seed": seed,
                 "width": loaded.width, "height": loaded.height,
                 "seconds": round(time.monotonic() - started, 4)}
        warnings = truncation_warnings(pipe, prompt, negative, guidance)
        return {**reply, "warnings": warnings} if warnings else reply

    @staticmethod
    def _starting_image(path_text: str, loaded: _Loaded) -> Any:
        if not loaded.reply["has_encoder"]:
            raise RequestFailed("unsupported", "input_image: this model has no VAE encoder for img2img")
        from PIL import Image

        path = Path(path_text)
        try:
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        except (OSError, ValueError) as exc:
            raise RequestFailed("bad_request", f"input_image: cannot read {path_text!r}: {exc}") from None
        if image.size != (loaded.width, loaded.height):
            image = image.resize((loaded.width, loaded.height), Image.Resampling.LANCZOS)
        return image


def truncation_warnings(pipe: Any, prompt: str, negative: str, guidance: float) -> list[str]:
    """A text with more tokens than the CLIP tokenizer's limit (77, start and end included) is cut by
    the pipeline with only a log line; say so in the answer. The negative prompt counts only when
    guidance uses it (above 1, as diffusers does classifier-free guidance)."""
    tokenizers = [t for t in (getattr(pipe, "tokenizer", None), getattr(pipe, "tokenizer_2", None)) if t]
    if not tokenizers:
        return []
    tokenizer = tokenizers[0]
    limit = tokenizer.model_max_length
    texts = [("the prompt", prompt)] + ([("the negative prompt", negative)] if negative and guidance > 1 else [])
    warnings = []
    for which, text in texts:
        count = len(tokenizer(text, truncation=False).input_ids)
        if count > limit:
            kept = tokenizer.decode(tokenizer(text, truncation=True, max_length=limit).input_ids,
                                    skip_special_tokens=True).strip()
            warnings.append(f"{which} is {count} tokens, longer than the text encoder's {limit}, and was cut "
                            f"after '…{kept[-40:]}'")
    return warnings


def main() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    run_worker(DiffusersWorker)


if __name__ == "__main__":
    main()
