"""`kitty-coreml install`: set up the binaries, the warm worker, models and command links."""

from __future__ import annotations

import shlex

import typer

from .app import app


@app.command("install")
def install(
    model: list[str] = typer.Option(None, "--model", "-m", metavar="NAME",
                                    help="Model to install (repeatable): a catalog name (see `models list`) or "
                                         "smoke. Default: sd21-palettized on a Mac, smoke elsewhere."),
    verify: bool = typer.Option(False, "--verify", help="Check everything, change nothing; exit non-zero "
                                                        "naming what is wrong."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan (repos, revisions, files, sizes, "
                                                          "commands) and do nothing."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    ratios: bool = typer.Option(False, "--ratios", help="Build Studio's non-square ratios (4:3, 3:4, 16:9, 9:16) for "
                                                        "the installed model with Apple's converter and write the "
                                                        "Studio manifest (see `kitty-coreml convert --help`)."),
    sdcpp: bool = typer.Option(False, "--sdcpp", help="Build stable-diffusion.cpp into this Python for this machine "
                                                      "(CUDA with nvcc and an NVIDIA GPU, Metal on Apple Silicon, "
                                                      "else CPU; your CMAKE_ARGS win). Takes minutes. Alone, it "
                                                      "installs no model."),
) -> None:
    """Set up the binary, the warm worker, models and links.

    Clones and builds Apple's StableDiffusionSample at the pinned commit, builds the warm worker, downloads
    pinned models (resumable, sha256-checked), registers them and links the commands. Every step is skipped
    when it is already done and verified; Ctrl-C leaves a state the next run resumes. Progress goes to
    stderr. On Linux it sets up the portable diffusers engine and the smoke model instead.
    """
    from ..errors import InstallError
    from ..install import runner
    from ..install.progress import Reporter
    from ..settings import StudioSettings
    from .common import load_settings, print_json

    if verify and dry_run:
        raise InstallError("--verify and --dry-run: choose one")
    settings = load_settings()
    studio = StudioSettings.from_env()
    if ratios:
        from .convert import print_ratios_report

        print_ratios_report(settings, studio.manifest_path, model, as_json=as_json)
        return
    plan = runner.build_plan(settings, model or None, manifest_path=studio.manifest_path, strict=not dry_run,
                             user_home=studio.user_home, sdcpp=sdcpp)
    if dry_run:
        report = runner.dry_run(plan)
    elif verify:
        report = runner.verify_install(plan)
    else:
        report = runner.run_install(plan, Reporter(settings.progress))
    if not report["ok"]:
        problems = report["problems"]
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        broken = InstallError(f"the installation is broken: {'; '.join(problems[:3])}{more}",
                              hint="run `kitty-coreml install` to repair it")
        broken.answer = report
        if not as_json:
            typer.echo(format_report(report))
        raise broken
    if as_json:
        print_json(report)
    elif report["action"] == "install":  # each step was shown on stderr as it ran: only the outcome here
        typer.echo(summary(report))
    else:
        typer.echo(format_report(report))


_MARKS = {"done": "+", "skipped": "=", "not_applicable": "-", "ok": "ok", "broken": "!!", "would_run": ">",
          "would_skip": "="}


def summary(report: dict) -> str:
    """One line for a finished install: how many steps ran, were already done, do not apply here."""
    counts = {status: sum(1 for step in report["steps"] if step["status"] == status)
              for status in ("done", "skipped", "not_applicable")}
    return (f"kitty-coreml is installed ({_models(report)}): {counts['done']} step(s) done, "
            f"{counts['skipped']} already done, {counts['not_applicable']} not applicable here")


def _models(report: dict) -> str:
    return f"models {', '.join(report['models'])}" if report["models"] else "no model"


def format_report(report: dict) -> str:
    lines = [f"kitty-coreml install ({report['action']}) on {report['host']['system']} "
             f"{report['host']['machine']}: {_models(report)}"]
    for step in report["steps"]:
        mark = _MARKS.get(step["status"], "?")
        detail = step.get("detail")
        if step.get("problems"):
            detail = "; ".join(step["problems"])
        lines.append(f"  {mark:2} {step['title']}: {step['status'].replace('_', ' ')}"
                     + (f" ({detail})" if detail else ""))
        plan = step.get("plan") or {}
        for argv in plan.get("commands", []):
            env = "".join(f"{name}={shlex.quote(value)} " for name, value in plan.get("env", {}).items())
            lines.append(f"       $ {env}{shlex.join(argv)}")
        if "repo" in plan and "file" in plan:
            lines.append(f"       {plan['repo']}@{plan['revision']} {plan['file']} "
                         f"({plan['size_bytes'] / 1e9:.2f} GB, sha256 {plan['sha256'] or 'from the hub'})"
                         + (f"; {plan['pin']}" if plan.get("pin", "verified") != "verified" else ""))
    if report["action"] == "verify":
        lines.append("verified: everything is in place" if report["ok"] else
                     f"broken: {len(report['problems'])} problem(s)")
    return "\n".join(lines)
