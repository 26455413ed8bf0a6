"""Apple's StableDiffusionSample, one process per request (CONTRACTS.md section 1).

The binary names its files after the first 75 characters of the prompt with nothing sanitised, so a
prompt with `/` writes into sub-folders and `..` climbs. Rather than refuse such prompts, the output
path is nested deep enough inside the run folder that no `..` can climb out of it, and the folders a
`/` asks for are made beforehand, so every file lands inside the run folder."""

from __future__ import annotations

import os
import re
import shutil
import struct
import time
from pathlib import Path
from typing import Any

from ..errors import EngineError, InstallError, InvalidRequest, OutputError
from ..process import describe_exit, run_supervised
from .base import CancelToken, EngineImage, EngineJob, EngineOutput, ProgressCallback, ProgressEvent

__all__ = ["SampleEngine", "build_argv", "image_names", "check_names", "output_folder", "find_sample_binary"]

NAME_CHARS = 75
NAME_MAX_BYTES = 255
"""The longest file or folder name macOS (APFS) and Linux allow, in UTF-8 bytes."""
EXIT_USAGE = 64
_STEP = re.compile(r"Step (\d+) of (\d+)\b.*?last ([0-9.]+|inf|nan)?")
_SAVED = re.compile(r"Saved (.+?\.final\.png)")
_SAFETY = re.compile(r"Image (\d+) failed safety check and was not saved")
_TRUNCATED = re.compile(r"Needed to truncate input '(.*)' to '(.*)'$")


def find_sample_binary(configured: Path | None, bin_dir: Path) -> Path:
    """KITTY_COREML_SAMPLE_BIN, else HOME/bin/StableDiffusionSample, else StableDiffusionSample on PATH."""
    if configured is not None:
        candidates = [configured]
    else:
        on_path = shutil.which("StableDiffusionSample")
        candidates = [bin_dir / "StableDiffusionSample"] + ([Path(on_path)] if on_path else [])
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate.absolute()
    looked = ", ".join(str(c) for c in candidates)
    if configured is not None and configured.exists():
        raise InstallError(f"StableDiffusionSample at {configured} is not an executable file",
                           hint="fix KITTY_COREML_SAMPLE_BIN or run `kitty-coreml install`")
    raise InstallError(f"StableDiffusionSample not found (looked at {looked})",
                       hint="run `kitty-coreml install` on a Mac, or set KITTY_COREML_SAMPLE_BIN")


def _float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def image_names(job: EngineJob) -> list[str]:
    """The file names the binary gives each image, relative to --output-path (its imageName())."""
    request = job.request
    stem = request.prompt[:NAME_CHARS].replace(" ", "_")
    names = []
    for index in range(request.count):
        name = stem
        if request.count != 1:
            name += f".{index}"
        if job.input_image is not None:
            name += f".str{int(_float32(_float32(request.effective_strength) * 100.0))}"
        names.append(f"{name}.{job.seed}.final.png")
    return names


def check_names(job: EngineJob) -> None:
    """The binary cannot create a name over NAME_MAX_BYTES and fails only after the whole generation:
    refuse such a prompt before launch (80 emoji are 320 bytes)."""
    for name in image_names(job):
        for part in name.split("/"):
            size = len(part.encode("utf-8"))
            if size > NAME_MAX_BYTES:
                raise InvalidRequest(
                    "prompt", job.request.prompt[:NAME_CHARS],
                    f"a prompt whose first {NAME_CHARS} characters fit a file name ({NAME_MAX_BYTES} bytes of UTF-8 "
                    f"with the image's suffix; these make {size})",
                    hint="StableDiffusionSample names its file after the prompt's start: begin the prompt with "
                         "shorter text, or use the warm engine (--engine coreml-worker), which does not")


def _climb_depth(name: str) -> int:
    """How many folders a name's `..` parts climb above where it starts."""
    depth = lowest = 0
    for part in name.split("/")[:-1]:
        if part == "..":
            depth -= 1
            lowest = min(lowest, depth)
        elif part not in ("", "."):
            depth += 1
    return -lowest


def output_folder(job: EngineJob) -> Path:
    """--output-path: inside the run folder, nested as deep as the prompt's `..` parts could climb."""
    depth = max(_climb_depth(name) for name in image_names(job))
    return job.output_dir.joinpath("out", *(["d"] * depth))


def _prepare_target(out: Path, name: str) -> Path:
    """Make every folder the name walks through (the kernel resolves `x/..` only when x exists) and
    return where the file will land. The binary appends the name as a path, so a leading "/" does not
    restart at the root."""
    *folders, filename = name.split("/")
    current = out
    for part in folders:
        if part == "..":
            current = current.parent
        elif part not in ("", "."):
            current = current / part
            current.mkdir(parents=True, exist_ok=True)
    return current / filename


def build_argv(binary: Path, job: EngineJob) -> list[str]:
    """Every value in the attached form `--name=value` (a value may start with `-`); prompt after `--`."""
    request, model = job.request, job.model
    argv = [
        str(binary),
        f"--resource-path={model.path}",
        f"--output-path={output_folder(job)}",
        f"--image-count={request.count}",
        f"--step-count={request.steps}",
        f"--seed={job.seed}",
        f"--guidance-scale={request.guidance:g}",
        f"--compute-units={job.compute_units}",
        f"--scheduler={request.scheduler}",
    ]
    if request.negative_prompt:
        argv.append(f"--negative-prompt={request.negative_prompt}")
    if job.input_image is not None:
        argv += [f"--image={job.input_image}", f"--strength={request.effective_strength:g}"]
    if model.family == "sdxl":
        argv.append("--xl")
    elif model.family == "sd3":
        argv.append("--sd3")
    if not request.safety:
        argv.append("--disable-safety")
    if request.reduce_memory:
        argv.append("--reduce-memory")
    return argv + ["--", request.prompt]


class SampleEngine:
    name = "sample"

    def __init__(self, binary: Path, env: dict[str, str] | None = None):
        self.binary = binary
        self.env = env

    def describe(self, job: EngineJob) -> dict[str, Any]:
        return {"engine": self.name, "binary": str(self.binary), "argv": build_argv(self.binary, job)}

    def close(self) -> None:
        """One process per request: nothing is held between requests."""

    def generate(self, job: EngineJob, on_progress: ProgressCallback, cancel: CancelToken) -> EngineOutput:
        check_names(job)
        out = output_folder(job)
        names = image_names(job)
        out.mkdir(parents=True, exist_ok=True)
        targets = [_prepare_target(out, name) for name in names]
        for target in targets:
            if not target.is_relative_to(job.output_dir):
                raise OutputError(f"internal: image path {target} would leave the run folder")
        removed: set[int] = set()
        saved: set[str] = set()
        warnings: list[str] = []
        timings: dict[str, float] = {}
        started = time.monotonic()

        def on_line(line: str) -> None:
            # A safety message has no newline, so a "Saved" may follow on the same line.
            for match in _SAFETY.finditer(line):
                removed.add(int(match.group(1)))
            for match in _SAVED.finditer(line):
                saved.add(match.group(1))
            step = _STEP.search(line)
            if step:
                timings.setdefault("load_s", time.monotonic() - started)
                rate = step.group(3)
                on_progress(ProgressEvent("step", step=int(step.group(1)) + 1, total=int(step.group(2)),
                                          images=job.request.count,
                                          rate=float(rate) if rate and rate not in ("inf", "nan") else None))
            elif line.startswith("Loading resources"):
                on_progress(ProgressEvent("loading", message="loading the model (the first load on the Neural Engine can take minutes)"))
            elif line.startswith("Sampling"):
                on_progress(ProgressEvent("sampling", total=None, images=job.request.count))
            elif line.startswith("Needed to truncate input"):
                warnings.append(truncation_warning(line, job.request.prompt, job.request.negative_prompt))

        result = run_supervised(
            build_argv(self.binary, job), cwd=job.output_dir, timeout_s=job.timeout_s, cancel=cancel,
            on_stdout_line=on_line, env=self.env, name="StableDiffusionSample",
        )
        timings["engine_s"] = result.duration_s
        if result.returncode != 0:
            raise _failure(result.returncode, result.stderr_tail, result.stdout_tail)
        images = []
        for index, (name, target) in enumerate(zip(names, targets, strict=True)):
            if index in removed:
                images.append(EngineImage(index, None))
            elif target.is_file():
                images.append(EngineImage(index, target))
            else:
                said = f"; it reported saving {sorted(saved)}" if saved else ""
                raise OutputError(f"StableDiffusionSample exited 0 but image {index} ({name}) is missing{said}",
                                  hint="the binary may be a different version than the pinned one; "
                                       "run `kitty-coreml install --verify`")
        on_progress(ProgressEvent("saved", images=len(images)))
        return EngineOutput(engine=self.name, images=images, timings=timings,
                            peak_rss_bytes=result.peak_rss_bytes, log_tail=result.stdout_tail[-5:],
                            warnings=list(dict.fromkeys(warnings)))  # XL's two text encoders say it twice


def truncation_warning(line: str, prompt: str, negative_prompt: str) -> str:
    """Apple's text encoders print `Needed to truncate input '<text>' to '<kept>'` when a text has
    more tokens than the encoder takes (77 for Stable Diffusion)."""
    match = _TRUNCATED.match(line)
    which = "the prompt or negative prompt"  # a text with a newline spans lines: then only that is known
    if match and match.group(1) in (prompt, negative_prompt):
        which = "the prompt" if match.group(1) == prompt else "the negative prompt"
    kept = match.group(2).strip() if match else ""
    after = f" after '…{kept[-40:]}'" if kept else ""
    return f"{which} is longer than the text encoder's token limit (77 tokens) and was cut{after}"


def _failure(returncode: int, stderr_tail: list[str], stdout_tail: list[str]) -> EngineError:
    errors = [line for line in stderr_tail if line.startswith(("Error:", "Fatal error:"))]
    last = errors[-1] if errors else " | ".join((stderr_tail or stdout_tail)[-3:]) or "no output"
    how = describe_exit(returncode)
    if returncode == EXIT_USAGE:
        return EngineError(f"StableDiffusionSample rejected its arguments ({how}): {last}",
                           hint="the binary is not the pinned version; run `kitty-coreml install`")
    if returncode < 0:
        return EngineError(f"StableDiffusionSample crashed ({how}): {last}",
                           hint="run `kitty-coreml install --verify` to check the model files")
    return EngineError(f"StableDiffusionSample failed ({how}): {last}")
