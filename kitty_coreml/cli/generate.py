"""`kitty-coreml generate PROMPT`: its typer declaration (help, completion, usage errors). What it does is
cli/generating.py; cli/generate_args.py reads the common command lines without typer, flag for flag
as declared here (tests/cli/test_generate_args.py holds the two together)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from ..request import COMPUTE_UNITS as COMPUTE_UNIT_NAMES
from ..request import SCHEDULERS
from ..settings import ENGINE_NAMES
from .app import app

# Closed sets as Enums, so help and shell completion list their values and click refuses others.
Scheduler = Enum("Scheduler", {name: name for name in SCHEDULERS}, type=str)
ComputeUnits = Enum("ComputeUnits", {name: name for name in COMPUTE_UNIT_NAMES}, type=str)
EngineName = Enum("EngineName", {name: name for name in ENGINE_NAMES}, type=str)

# Shared by `generate` and `batch`: the same flags mean the same thing everywhere.
NEGATIVE = typer.Option("", "--negative", help="Negative prompt: what to steer away from.")
COUNT = typer.Option(1, "--count", "-n", help="Images to make, 1..8.")
STEPS = typer.Option(20, "--steps", help="Diffusion steps, 1..150.")
GUIDANCE = typer.Option(7.5, "--guidance", help="Guidance scale, 0..30.")
SCHEDULER = typer.Option("pndm", "--scheduler", help="Sampler: pndm (PLMS) or dpmpp (DPM++ 2M).")
COMPUTE_UNITS = typer.Option(None, "--compute-units",
                             help="Where Core ML runs the model; default: from the model's attention.")
SEED = typer.Option(None, "--seed", help="0..4294967295; default: derived from the prompt and run id.")
RUN_ID = typer.Option(None, "--run-id", help="Run id; with the prompt it gives the seed (Studio rule).")
IMAGE = typer.Option(None, "--image", help="Start from this image (img2img); needs a model with a VAEEncoder.")
STRENGTH = typer.Option(None, "--strength", help="How far to move from --image, 0..1 (default 0.5).")
SAFETY = typer.Option(True, "--safety/--no-safety", help="Run the model's safety checker, if it has one.")
REDUCE_MEMORY = typer.Option(False, "--reduce-memory", help="Load models on demand to lower peak memory.")
TIMEOUT = typer.Option(None, "--timeout", help="Seconds before the engine is killed (default 900).")
ENGINE = typer.Option(None, "--engine", help="Which engine generates; default: auto (KITTY_COREML_ENGINE).")
MODEL = typer.Option(None, "--model", help="Installed model name, a model folder or a .gguf/.safetensors file.")
WIDTH = typer.Option(None, "--width", help="Image width, a multiple of 8 (64 for single-file models); "
                                           "default: the model's own.")
HEIGHT = typer.Option(None, "--height", help="Image height, like --width; default: the model's own.")
JSON = typer.Option(False, "--json", help="Print one JSON object instead of text.")


@app.command()
def generate(
    prompt: str = typer.Argument(..., help="What to draw. Quote it; it may start with '-' after `--`."),
    negative: str = NEGATIVE,
    count: int = COUNT,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    scheduler: Scheduler = SCHEDULER,
    compute_units: Optional[ComputeUnits] = COMPUTE_UNITS,
    seed: Optional[int] = SEED,
    run_id: Optional[str] = RUN_ID,
    image: Optional[Path] = IMAGE,
    strength: Optional[float] = STRENGTH,
    safety: bool = SAFETY,
    reduce_memory: bool = REDUCE_MEMORY,
    timeout: Optional[float] = TIMEOUT,
    engine: Optional[EngineName] = ENGINE,
    model: Optional[str] = MODEL,
    width: Optional[int] = WIDTH,
    height: Optional[int] = HEIGHT,
    as_json: bool = JSON,
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate and print the resolved request and engine "
                                                          "command; launch nothing."),
    server: Optional[str] = typer.Option(None, "--server", help="Submit to a `kitty-coreml serve` at this URL "
                                                                "instead of generating here."),
    wait: bool = typer.Option(False, "--wait", help="With --server: follow the job with the progress bar until "
                                                    "its images are stored."),
    cold: bool = typer.Option(False, "--cold", help="Generate in this process even when a `kitty-coreml serve` "
                                                    "of this home is running (by default its warm engine serves)."),
) -> None:
    """Generate images from a prompt and store them.

    They go to the local folder, or to S3 when S3_BUCKET is set.

    \b
    Example:
      kitty-coreml generate "studio photo of a matte black water bottle" --count 2 --steps 20
    """
    from .generating import run_generate

    run_generate(prompt, negative=negative, count=count, steps=steps, guidance=guidance, scheduler=scheduler,
                 compute_units=compute_units, seed=seed, run_id=run_id, image=image, strength=strength,
                 safety=safety, reduce_memory=reduce_memory, timeout=timeout, engine=engine, model=model,
                 width=width, height=height, as_json=as_json, dry_run=dry_run, server=server, wait=wait, cold=cold)
