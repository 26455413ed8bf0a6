"""`convert()`: run the stages (stages.py) as supervised child processes, each into a partial folder
renamed into place only when its program exited 0 and wrote what it must, so an interrupted or failed
run resumes at the sub-model where it stopped; check each bundle (check.py), move it into the models
folder and register it as a size variant (register.py). Where `xcrun coremlcompiler` does not exist
(Linux), it stops after the .mlpackage files and says what must finish on a Mac."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..engines.base import CancelToken
from ..errors import Cancelled, EngineError, EngineTimeout, InstallError, LockBusy, ModelError
from ..install.progress import Reporter
from ..install.step import read_json, remove_tree, write_json
from ..process import describe_exit, run_supervised
from ..settings import Settings
from .check import bundle_problems
from .options import RESOURCE_ATTENTION, ConvertOptions
from .register import VARIANT_RECEIPT, Variant, register_variants
from .stages import OUT, REFINER_LINK, SOURCE_LINK, Stage, describe, plan_stages
from .venv import ConverterVenvStep, venv_python

__all__ = ["convert", "ConvertReport", "work_dir", "variant_dir", "estimate_bytes", "compiler_available"]

_RECEIPT = ".kitty-stage.json"
_FP16_BYTES = {"sd": 2_600_000_000, "sdxl": 7_000_000_000}
"""fp16 weights of a hub model's Unet, text encoder(s) and VAE, when nothing local can be measured."""
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt")
_MARGIN = 1.1


@dataclass
class ConvertReport:
    name: str
    work: Path
    stages: list[dict[str, Any]] = field(default_factory=list)
    variants: list[dict[str, Any]] = field(default_factory=list)
    needs_mac: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "work": str(self.work), "stages": self.stages, "variants": self.variants,
                "needs_mac": self.needs_mac, "registered": bool(self.variants) and self.needs_mac is None}


def work_dir(settings: Settings, name: str) -> Path:
    return settings.home / "convert" / name


def variant_dir(settings: Settings, name: str, label: str) -> Path:
    return settings.models_dir / name / label


def compiler_available(path: str | None = None) -> bool:
    """Compiling .mlpackage to .mlmodelc needs Xcode's `xcrun coremlcompiler` (macOS only)."""
    return shutil.which("xcrun", path=path) is not None


def _weights_bytes(folder: Path) -> int:
    """fp16 bytes of a diffusers folder's weights: the fp16 variant files, else the others halved."""
    total = 0
    for part in ("unet", "text_encoder", "text_encoder_2", "vae"):
        files = [p for p in (folder / part).glob("*") if p.suffix in _WEIGHT_SUFFIXES and p.is_file()]
        fp16 = [p for p in files if ".fp16." in p.name]
        total += sum(p.stat().st_size for p in fp16) if fp16 else sum(p.stat().st_size for p in files) // 2
    return total


def estimate_bytes(options: ConvertOptions, pending: list[Stage]) -> int:
    """Disk the pending stages need: a download or a diffusers copy of the weights, then per size an
    .mlpackage and a compiled copy of them (palettizing shrinks them later, not during conversion)."""
    source = options.source
    if source.kind == "folder":
        weights = _weights_bytes(Path(source.value))
    elif source.kind == "single_file":
        weights = Path(source.value).stat().st_size
    else:
        weights = _FP16_BYTES["sdxl" if source.xl else "sd"]
    needed = weights if source.kind != "folder" and any(s.kind in ("diffusers", "convert") for s in pending) else 0
    sizes = {s.size for s in pending if s.size is not None}
    needed += 2 * weights * max(1, len(sizes)) if pending else 0
    return int(needed * _MARGIN)


def _free_bytes(path: Path) -> int:
    probe = path
    while not probe.exists():
        probe = probe.parent
    return shutil.disk_usage(probe).free


def _receipt_argv(stage: Stage, work: Path) -> list[str]:
    """argv as a receipt keeps it: without the machine's paths, so a work folder copied to a Mac resumes;
    with the folders the source links point at, so another folder under the same name is not reused."""
    links = [f"{name} -> {os.readlink(work / name)}" for name in (SOURCE_LINK, REFINER_LINK)
             if (work / name).is_symlink()]
    return ["{python}", *(part.replace(str(work), "{work}") for part in stage.argv[1:]), *links]


def _link_sources(options: ConvertOptions, work: Path) -> None:
    """The folder source (and refiner) as links in the work folder, the names torch2coreml is given."""
    wanted = {SOURCE_LINK: options.source.value if options.source.kind == "folder" else None,
              REFINER_LINK: options.refiner if options.refiner and Path(options.refiner).is_absolute() else None}
    for name, target in wanted.items():
        link = work / name
        if link.is_symlink() and (target is None or os.readlink(link) != target):
            link.unlink()
        if target is not None and not link.is_symlink():
            link.symlink_to(target)


def _is_done(stage: Stage, work: Path) -> bool:
    folder = work / stage.key
    receipt = read_json(folder / _RECEIPT)
    return receipt is not None and receipt.get("argv") == _receipt_argv(stage, work) and \
        all((folder / name).exists() for name in stage.expects)


def _bundle_identity(stage: Stage, stages: list[Stage], work: Path) -> list[list[str]]:
    """What a bundle was made from: its own argv and that of every stage whose packages it links, so a
    bundle of other packages (another attention, palettization) is never taken for it."""
    sources = {target.rsplit("/", 1)[0] for _, target in stage.links}
    return [_receipt_argv(s, work) for s in stages if s.key in sources or s is stage]


def _installed(settings: Settings, options: ConvertOptions, stage: Stage, stages: list[Stage], work: Path) -> bool:
    assert stage.size is not None
    receipt = read_json(variant_dir(settings, options.name, stage.size.label) / VARIANT_RECEIPT)
    return receipt is not None and receipt.get("made_from") == _bundle_identity(stage, stages, work)


class _ConverterOutput:
    """A stage's output as progress: torch2coreml's log lines (`INFO:__main__:Converting unet`) by their
    message, other lines as they are; a Python traceback is kept for the error line, not shown."""

    _LOG = re.compile(r"^(?:INFO|WARNING|ERROR):[\w.]+:(.*)$")

    def __init__(self, reporter: Reporter, label: str):
        self.reporter = reporter
        self.label = label
        self.tail: deque[str] = deque(maxlen=8)
        self.in_traceback = False

    def line(self, text: str) -> None:
        if text.startswith("Traceback (most recent call last)"):
            self.in_traceback = True
        match = self._LOG.match(text)
        if match:
            self.in_traceback = False
            text = match.group(1)
        if self.in_traceback:
            self.tail.append(text)
        else:
            self.reporter.output(self.label, text, self.tail)


class _WorkLock:
    """One conversion per model at a time: two would write the same partial folders."""

    def __init__(self, work: Path):
        work.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(work / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise LockBusy(f"another `kitty-coreml convert` of {work.name} is running (lock {work / '.lock'})",
                           hint="wait for it, or convert under another --name") from None

    def release(self) -> None:
        os.close(self._fd)


def _run_stage(stage: Stage, work: Path, *, settings: Settings, options: ConvertOptions, reporter: Reporter,
               cancel: CancelToken | None, env: dict[str, str], position: str) -> None:
    folder = work / stage.key
    partial = folder.with_name(folder.name + ".partial")
    remove_tree(partial)
    partial.mkdir(parents=True)
    for name, target in stage.links:
        (partial / name).symlink_to(work / target)
    argv = [part.replace(OUT, str(partial.relative_to(work))) for part in stage.argv]
    reporter.line(f"> [{position}] {stage.label}: {describe(tuple(argv))}")
    shown = _ConverterOutput(reporter, stage.label)
    # cwd is the work folder: a converted single file is the model version `diffusers` there, so the
    # package names torch2coreml derives from it are the same on every machine.
    name = f"{stage.label} ({'torch2coreml' if stage.kind != 'diffusers' else 'from_single_file'})"
    try:
        result = run_supervised(argv, cwd=work, timeout_s=options.timeout_s, cancel=cancel, env=env,
                                on_stdout_line=shown.line, name=name)
    except EngineTimeout as exc:
        raise EngineTimeout(exc.message, hint="raise --timeout (or KITTY_COREML_CONVERT_TIMEOUT_S) and run the "
                                              "same command again: finished sub-models are kept") from None
    except Cancelled as exc:
        raise Cancelled(exc.message, hint="run the same command again to resume: finished sub-models are kept") from None
    if result.returncode != 0:
        last = (result.stdout_tail + result.stderr_tail or ["no output"])[-1]
        raise EngineError(f"{stage.label} failed: {describe_exit(result.returncode)}: {last}",
                          hint="fix the cause and run the same command again: finished sub-models are kept")
    missing = [name for name in stage.expects if not (partial / name).exists()]
    if missing:
        raise EngineError(f"{stage.label}: the converter exited 0 but wrote no {', '.join(missing)}",
                          hint="see its output above; run the same command again to retry this sub-model")
    write_json(partial / _RECEIPT, {"argv": _receipt_argv(stage, work)})
    remove_tree(folder)
    os.replace(partial, folder)
    reporter.line(f"+ [{position}] {stage.label}: done in {result.duration_s:.0f} s")


def _install_bundle(settings: Settings, options: ConvertOptions, stage: Stage, stages: list[Stage],
                    work: Path) -> Variant:
    """Check the bundle; move its Resources into the models folder. A bundle that fails is removed
    from the work folder (so the next run compiles again) and never reaches the registry."""
    assert stage.size is not None
    bundle = work / stage.key
    resources = bundle / "Resources"
    problems = bundle_problems(resources, options, stage.size)
    if problems:
        remove_tree(bundle)
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelError(f"the {stage.size.label} bundle failed its check and was not registered: "
                         f"{'; '.join(problems[:3])}{more}",
                         hint="run the same command again to compile it again; the .mlpackage files are kept")
    write_json(resources / VARIANT_RECEIPT, {"made_from": _bundle_identity(stage, stages, work),
                                              "source": options.source.value})
    target = variant_dir(settings, options.name, stage.size.label)
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    remove_tree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(resources, target)
    remove_tree(old)
    remove_tree(bundle)
    return _variant(options, stage, target)


def _variant(options: ConvertOptions, stage: Stage, path: Path) -> Variant:
    assert stage.size is not None
    return Variant(stage.size.width, stage.size.height, path, RESOURCE_ATTENTION[options.attention])


def convert(options: ConvertOptions, settings: Settings, reporter: Reporter, *,
            cancel: CancelToken | None = None, env: dict[str, str] | None = None) -> ConvertReport:
    """Convert, check and register. Raises a KittyError naming the stage on any failure; what finished
    is kept for the next run."""
    work = work_dir(settings, options.name)
    lock = _WorkLock(work)
    try:
        return _convert(options, settings, reporter, cancel, dict(os.environ if env is None else env), work)
    finally:
        lock.release()


def _convert(options: ConvertOptions, settings: Settings, reporter: Reporter, cancel: CancelToken | None,
             env: dict[str, str], work: Path) -> ConvertReport:
    venv_step = ConverterVenvStep(settings)
    venv_problems = venv_step.problems()
    if venv_problems:
        reporter.line(f"> {venv_step.title}: {venv_problems[0]}")
        reporter.line(f"+ {venv_step.title}: {venv_step.run(reporter)}")
    _link_sources(options, work)
    can_compile = compiler_available(env.get("PATH"))
    stages = plan_stages(options, python=venv_python(settings), work=work)
    report = ConvertReport(options.name, work)
    pending = [s for s in stages if not (_installed(settings, options, s, stages, work) if s.kind == "bundle"
                                         else _is_done(s, work))]
    pending_here = [s for s in pending if can_compile or not s.requires_mac]
    needed, free = estimate_bytes(options, pending_here), _free_bytes(work)
    if needed > free:
        raise InstallError(f"not enough disk space to convert {options.name}: about {needed / 1e9:.1f} GB "
                           f"needed in {work}, {free / 1e9:.1f} GB free",
                           hint="free some space (an SDXL conversion needs tens of GB) or set KITTY_COREML_HOME "
                                "to a bigger disk")
    added: list[Variant] = []
    for index, stage in enumerate(stages, 1):
        position = f"{index}/{len(stages)}"
        entry = {"stage": stage.key, "label": stage.label}
        if stage not in pending:
            reporter.line(f"= [{position}] {stage.label}: already done")
            entry["status"] = "kept"
            if stage.kind == "bundle":
                added.append(_variant(options, stage, variant_dir(settings, options.name, stage.size.label)))
        elif stage.requires_mac and not can_compile:
            entry["status"] = "needs_mac"
        else:
            if cancel is not None and cancel.cancelled:
                raise Cancelled(f"convert stopped before {stage.label}: {cancel.reason}")
            _run_stage(stage, work, settings=settings, options=options, reporter=reporter, cancel=cancel,
                       env=env, position=position)
            entry["status"] = "done"
            if stage.kind == "bundle":
                variant = _install_bundle(settings, options, stage, stages, work)
                added.append(variant)
                register_variants(settings.registry_path, options.name, [variant])
                reporter.line(f"+ registered {options.name} {stage.size.label}: {variant.path}")
        report.stages.append(entry)
    if added:
        register_variants(settings.registry_path, options.name, added)
        report.variants = [v.to_dict() for v in added]
    if any(e["status"] == "needs_mac" for e in report.stages):
        report.needs_mac = (f"the .mlpackage files are in {work}; compiling them to .mlmodelc (xcrun coremlcompiler) "
                            "needs macOS with Xcode, and running them needs macOS on Apple Silicon: copy that "
                            f"folder to the same place under ~/.kitty-coreml/convert/ on a Mac and run the same "
                            "command there; it resumes at the compile step")
    return report
