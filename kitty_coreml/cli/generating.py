"""What `kitty-coreml generate` does once its command line is read, without typer: main() runs it
straight from cli/generate_args.py on the common path, and the typer command in cli/generate.py runs
the same function, so both ways behave alike."""

from __future__ import annotations

import signal
import sys
from typing import Any

from .common import echo, load_settings, note, print_json, warn

__all__ = ["run_generate", "build_request", "terminate_as_cancel", "print_result"]


def _name(choice: Any) -> str | None:
    """An option's value as text: typer gives a closed set's choice as an Enum member."""
    return getattr(choice, "value", choice)


def build_request(prompt: str, **options: Any):
    """A GenerationRequest from CLI option values (names as in cli/generate.py's signature)."""
    from ..request import GenerationRequest

    return GenerationRequest(
        prompt=prompt, negative_prompt=options["negative"], count=options["count"], steps=options["steps"],
        guidance=options["guidance"], scheduler=_name(options["scheduler"]),
        compute_units=_name(options["compute_units"]), seed=options["seed"], run_id=options["run_id"],
        input_image=options["image"], strength=options["strength"], safety=options["safety"],
        reduce_memory=options["reduce_memory"], timeout_s=options["timeout"], engine=_name(options["engine"]),
        model=options["model"], width=options.get("width"), height=options.get("height"),
    )


def terminate_as_cancel() -> None:
    """SIGTERM ends a generation the way Ctrl-C does: the engine and its children are killed first."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)  # the terminal closed: the engine must not outlive it


def print_result(result: dict[str, Any]) -> None:
    images = result["images"]
    seconds = result.get("timings", {}).get("total_s")
    took = f", {seconds:.1f} s" if seconds is not None else ""
    echo(f"{len(images)} image(s) stored (seed {result['seed']}, run {result['runId']}{took}):")
    for image in images:
        where = image.get("path") or image["storageUri"]
        note = "" if image.get("published", True) else "  [in the outbox, not published]"
        echo(f"  {where}  {image['width']}x{image['height']}{note}")
        if image.get("path") and image["storageUri"].startswith("s3://"):
            echo(f"    {image['storageUri']}")
    sys.stdout.flush()
    for warning in result.get("warnings", []):
        warn(warning)


def run_generate(prompt: str, *, as_json: bool, dry_run: bool, server: str | None, wait: bool, cold: bool,
                 **options: Any) -> None:
    """Generate images from a prompt and store them: on the running `kitty-coreml serve` of this home when
    there is one (unless cold), else in this process; with server, on that service instead."""
    from ..errors import PublishPending

    try:
        settings = load_settings()
        request = build_request(prompt, **options)
        if server:
            from ..service.remote import submit_remote

            terminate_as_cancel()
            result = submit_remote(server, request, settings, wait=wait)
            if not wait:
                print_json(result) if as_json else echo(f"job {result['job_id']}: {result['status']}")
                return
            print_json(result) if as_json else print_result(result)
            return
        if dry_run:
            from ..orchestrator import plan

            print_json(plan(request, settings))
            return
        from ..progress import ProgressPrinter
        from ..service.local import generate_warm

        terminate_as_cancel()
        progress = ProgressPrinter(settings.progress, steps=request.steps, scheduler=request.scheduler)
        try:
            served = None if cold else generate_warm(request, settings, on_progress=progress)
            if served is None:
                from ..orchestrator import generate

                result = generate(request, settings, on_progress=progress).to_dict()
            else:
                result = served[0]
        finally:
            progress.close()
        result["servedBy"] = {"warm": served is not None, "url": served[1] if served else None}
        if not as_json:
            note(f"served warm by kitty-coreml serve at {served[1]} (engine {result['engine']})" if served
                  else f"served cold by the {result['engine']} engine")
    except PublishPending as exc:
        if not as_json:
            print_result(exc.details["result"])
        exc.answer = exc.details["result"]
        raise
    print_json(result) if as_json else print_result(result)
