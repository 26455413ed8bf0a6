"""`kitty-coreml batch PROMPTS_FILE`: one prompt per line, all through one warm engine."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer

from .app import app
from .generate import (COMPUTE_UNITS, COUNT, ENGINE, GUIDANCE, IMAGE, JSON, MODEL, NEGATIVE, REDUCE_MEMORY, SAFETY,
                       SCHEDULER, SEED, STEPS, STRENGTH, TIMEOUT, ComputeUnits, EngineName, Scheduler)
from .generating import build_request, terminate_as_cancel


def read_prompts(source: str) -> list[str]:
    """The prompts of a file (or `-` for stdin): one per line; blank lines and `#` comments skipped."""
    from ..errors import InvalidRequest

    if source == "-":
        text = sys.stdin.read()
    else:
        try:
            text = Path(source).expanduser().read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise InvalidRequest("prompts_file", source, f"a readable UTF-8 text file ({reason})") from None
    prompts = [line.strip() for line in text.splitlines()]
    prompts = [line for line in prompts if line and not line.startswith("#")]
    if not prompts:
        raise InvalidRequest("prompts_file", source, "a file with at least one prompt line")
    return prompts


@app.command()
def batch(
    prompts_file: str = typer.Argument(..., help="Text file with one prompt per line (`-` reads stdin); "
                                                 "blank lines and lines starting with # are skipped."),
    negative: str = NEGATIVE,
    count: int = COUNT,
    steps: int = STEPS,
    guidance: float = GUIDANCE,
    scheduler: Scheduler = SCHEDULER,
    compute_units: Optional[ComputeUnits] = COMPUTE_UNITS,
    seed: Optional[int] = SEED,
    image: Optional[Path] = IMAGE,
    strength: Optional[float] = STRENGTH,
    safety: bool = SAFETY,
    reduce_memory: bool = REDUCE_MEMORY,
    timeout: Optional[float] = TIMEOUT,
    engine: Optional[EngineName] = ENGINE,
    model: Optional[str] = MODEL,
    as_json: bool = JSON,
) -> None:
    """Generate for every prompt of a file through one warm engine.

    The model loads once.

    Each prompt gets its own run id and seed (unless --seed is given: then all share it). A failed
    prompt is reported and the batch goes on; the exit status is non-zero if any failed.

    \b
    Example:
      kitty-coreml batch prompts.txt --engine diffusers --model smoke --json
    """
    from ..engines import create_engine
    from ..errors import KittyError, PublishPending
    from ..orchestrator import generate as run
    from ..orchestrator import resolve
    from ..progress import ProgressPrinter
    from .common import load_settings, print_json

    options = dict(negative=negative, count=count, steps=steps, guidance=guidance, scheduler=scheduler,
                   compute_units=compute_units, seed=seed, run_id=None, image=image, strength=strength,
                   safety=safety, reduce_memory=reduce_memory, timeout=timeout, engine=engine, model=model)
    settings = load_settings()
    prompts = read_prompts(prompts_file)
    # validate the shared flags and pick the engine once, before anything starts
    first = build_request(prompts[0], **options)
    _, _, engine_name, _, _ = resolve(first, settings, prefer_warm=True)
    terminate_as_cancel()
    warm = create_engine(engine_name, settings)
    items: list[dict[str, Any]] = []
    progress = ProgressPrinter(settings.progress, steps=first.steps, scheduler=first.scheduler)
    try:
        for prompt in prompts:
            try:
                result = run(build_request(prompt, **options), settings, engine=warm, on_progress=progress).to_dict()
                items.append(_item(prompt, result))
            except PublishPending as exc:
                items.append({**_item(prompt, exc.details["result"]), "error": exc.to_dict()})
            except KittyError as exc:
                items.append({"prompt": prompt, "error": exc.to_dict()})
            if not as_json:
                _print_item(items[-1])
    finally:
        progress.close()
        warm.close()
    failed = sum(1 for item in items if "error" in item)
    if as_json:
        print_json({"items": items, "failed": failed})
    else:
        typer.echo(f"{len(items) - failed} of {len(items)} prompt(s) done, {failed} failed")
    if failed:
        raise typer.Exit(1)


def _item(prompt: str, result: dict[str, Any]) -> dict[str, Any]:
    return {"prompt": prompt, "seed": result["seed"], "runId": result["runId"], "images": result["images"]}


def _print_item(item: dict[str, Any]) -> None:
    if "images" in item:
        where = ", ".join(image.get("path") or image["storageUri"] for image in item["images"])
        typer.echo(f"ok      {item['prompt'][:60]!r} (seed {item['seed']}): {where}")
    if "error" in item:
        error = item["error"]
        message = error["message"] + (f" ({error['hint']})" if error.get("hint") else "")
        typer.echo(f"FAILED  {item['prompt'][:60]!r}: {message}")
