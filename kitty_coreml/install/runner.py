"""`kitty-coreml install`: the steps a request needs, in order, each run only when it is not done and
verified; --verify checks them all and changes nothing; --dry-run describes the work."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InstallError, KittyError
from ..settings import Settings
from .catalog import load_catalog
from .host import Host, coreml_reason, detect_host, sdxl_reason
from .links import LinkStep
from .modelstep import ModelStep
from .portable import DiffusersExtraStep, SmokeModelStep
from .progress import Reporter
from .ratios import converted_variants_steps
from .sdcpp import SdcppStep
from .step import Step
from .studio_import import StudioImportStep, importable
from .toolchain import CloneStep, SampleBuildStep, WorkerBuildStep

__all__ = ["InstallPlan", "build_plan", "run_install", "verify_install", "dry_run", "DEFAULT_COREML_MODEL",
           "SMOKE"]

DEFAULT_COREML_MODEL = "sd21-palettized"
SMOKE = "smoke"


@dataclass
class _Planned:
    step: Step
    not_applicable: str | None = None


@dataclass
class InstallPlan:
    host: Host
    coreml_reason: str | None
    models: list[str]
    steps: list[_Planned] = field(default_factory=list)


def build_plan(settings: Settings, models: list[str] | None, *, manifest_path: Path,
               host: Host | None = None, strict: bool = True, user_home: Path | None = None,
               sdcpp: bool = False) -> InstallPlan:
    """The steps for `models` (default: sd21-palettized where Core ML runs, else the smoke model).
    strict: a model that cannot run here is an error (a dry run shows it as not applicable instead).
    sdcpp: build stable-diffusion.cpp too; with no model named, that is the whole plan."""
    host = host or detect_host()
    catalog = load_catalog(settings)
    no_coreml = coreml_reason(settings, host)
    if sdcpp and not models:
        return InstallPlan(host=host, coreml_reason=no_coreml, models=[], steps=[_Planned(SdcppStep(settings))])
    wanted = list(dict.fromkeys(models or [DEFAULT_COREML_MODEL if no_coreml is None else SMOKE]))
    for name in wanted:
        if name != SMOKE and name not in catalog:
            raise InstallError(f"--model: got {name!r}; allowed: {', '.join([*catalog, SMOKE])}")
    plan = InstallPlan(host=host, coreml_reason=no_coreml, models=wanted)
    coreml_models = [catalog[n] for n in wanted if n != SMOKE]
    if strict and no_coreml is not None and coreml_models:
        raise InstallError(f"{coreml_models[0].name} is a Core ML model and cannot run here: {no_coreml}",
                           hint="install the smoke model (--model smoke) or set KITTY_COREML_INSTALL_COREML=yes "
                                "to download it anyway")
    for step in (CloneStep(settings), SampleBuildStep(settings), WorkerBuildStep(settings)):
        plan.steps.append(_Planned(step, no_coreml or step.not_applicable()))
    # What the original Studio installer left under user_home is registered instead of downloaded again.
    imported = importable(user_home) if user_home is not None else {}
    if imported:
        plan.steps.append(_Planned(StudioImportStep(settings, manifest_path, imported), no_coreml))
    for entry in coreml_models:
        if entry.name in imported:
            continue
        reason = no_coreml or (sdxl_reason(settings, host) if entry.family == "sdxl" else None)
        if strict and reason and no_coreml is None:
            raise InstallError(f"{entry.name} cannot run here: {reason}", hint="choose sd21-palettized or sd15-palettized")
        plan.steps.append(_Planned(ModelStep(settings, entry, manifest_path), reason))
    if SMOKE in wanted:
        plan.steps.append(_Planned(DiffusersExtraStep()))
        plan.steps.append(_Planned(SmokeModelStep(settings)))
    if sdcpp:
        plan.steps.append(_Planned(SdcppStep(settings)))
    plan.steps += [_Planned(step) for step in converted_variants_steps(settings)]
    plan.steps.append(_Planned(LinkStep(settings)))
    return plan


def _header(plan: InstallPlan, action: str) -> dict[str, Any]:
    return {"action": action, "host": plan.host.to_dict(), "coreml": plan.coreml_reason is None,
            "coreml_reason": plan.coreml_reason, "models": plan.models}


def _na(item: _Planned) -> dict[str, Any]:
    return {"name": item.step.name, "title": item.step.title, "status": "not_applicable",
            "detail": item.not_applicable}


def run_install(plan: InstallPlan, reporter: Reporter) -> dict[str, Any]:
    """Run the plan. Raises InstallError (with the report so far in details) when a step fails."""
    report = _header(plan, "install")
    report["steps"] = []
    for item in plan.steps:
        step = item.step
        if item.not_applicable:
            report["steps"].append(_na(item))
            reporter.line(f"- {step.title}: not applicable ({item.not_applicable})")
            continue
        before = step.problems()
        if not before:
            report["steps"].append({"name": step.name, "title": step.title, "status": "skipped",
                                    "detail": "already done and verified"})
            reporter.line(f"= {step.title}: already done")
            continue
        reporter.line(f"> {step.title}: {before[0]}")
        try:
            detail = step.run(reporter)
        except KittyError as exc:
            report["steps"].append({"name": step.name, "title": step.title, "status": "failed",
                                    "detail": exc.message})
            exc.details.setdefault("report", report)
            raise
        after = step.problems()
        if after:
            raise InstallError(f"{step.title} did not finish: {after[0]}", details={"report": report})
        report["steps"].append({"name": step.name, "title": step.title, "status": "done", "detail": detail})
        reporter.line(f"+ {step.title}: {detail}")
    report["ok"] = True
    return report


def verify_install(plan: InstallPlan) -> dict[str, Any]:
    """Check every step; change nothing. report["ok"] is False and report["problems"] names what is
    wrong when anything is."""
    report = _header(plan, "verify")
    report["steps"] = []
    problems: list[str] = []
    for item in plan.steps:
        if item.not_applicable:
            report["steps"].append(_na(item))
            continue
        found = item.step.problems()
        problems += found
        report["steps"].append({"name": item.step.name, "title": item.step.title,
                                "status": "broken" if found else "ok", "problems": found})
    report["ok"] = not problems
    report["problems"] = problems
    return report


def dry_run(plan: InstallPlan) -> dict[str, Any]:
    """What a run would do: per step its plan, and whether it would run (problems found now)."""
    report = _header(plan, "dry-run")
    report["steps"] = []
    for item in plan.steps:
        entry = {"name": item.step.name, "title": item.step.title, "plan": item.step.plan()}
        if item.not_applicable:
            entry.update(status="not_applicable", detail=item.not_applicable)
        else:
            found = item.step.problems()
            entry.update(status="would_run" if found else "would_skip", detail=found[0] if found else "done")
        report["steps"].append(entry)
    report["ok"] = True
    return report
