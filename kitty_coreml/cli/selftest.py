"""`kitty-coreml selftest`: prove the Apple half (both Core ML engines, the Studio provider, a cancel)
and print one JSON report."""

from __future__ import annotations

import typer

from .app import app


@app.command()
def selftest(
    live: bool = typer.Option(False, "--live", help="On a Mac: build the worker, use the smallest installed "
                                                    "model, and run the conformance suite too."),
    report_path: str = typer.Option(None, "--report", metavar="FILE", help="Also write the JSON report to FILE."),
) -> None:
    """Prove the Apple half once and print a JSON report.

    Runs both Core ML engines once each, the Studio provider once and one cancel; the report has versions,
    timings and every failure. Exits 1 when a check failed.

    Without --live it checks the binaries KITTY_COREML_SAMPLE_BIN / KITTY_COREML_WORKER_BIN name (CI runs
    it against the test doubles); --live needs a Mac.
    """
    import json
    from pathlib import Path

    from ..atomic import write_bytes
    from ..errors import KittyError
    from ..selftest import run_selftest
    from .common import load_settings, print_json

    report = run_selftest(load_settings(), live=live)
    print_json(report)
    if report_path:
        write_bytes(Path(report_path).expanduser(), (json.dumps(report, indent=2) + "\n").encode())
    if report["failures"]:
        first = report["failures"][0]
        raise KittyError(f"selftest: {len(report['failures'])} of {len(report['checks'])} checks failed; "
                         f"first: {first['check']}: {first['error']}")
