"""What kitty-coreml adds to one generation: the median wall time of `kitty-coreml generate` (one image,
the fake engine doing no work) minus the median of the fake binary run alone with the same arguments.

    python bench/overhead.py [--runs 9]   -> one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fakes import make_resources, write_fake_binary  # noqa: E402


def _timed(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> float:
    started = time.perf_counter()
    subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   stdin=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    kitty = str(Path(sys.executable).parent / "kitty-coreml")
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        binary = write_fake_binary(tmp_path)
        resources = make_resources(tmp_path / "model")
        env = {**{k: v for k, v in os.environ.items() if not k.startswith(("KITTY_COREML_", "S3_", "FAKE_SD_"))},
               "KITTY_COREML_HOME": str(tmp_path / "home"), "KITTY_COREML_SAMPLE_BIN": str(binary),
               "KITTY_COREML_RESOURCE_PATH": str(resources), "KITTY_COREML_PROGRESS": "none"}
        command = [kitty, "generate", "a red cube on a table", "--steps", str(args.steps), "--seed", "1"]
        plan = json.loads(subprocess.run([*command, "--dry-run"], env=env, check=True, capture_output=True).stdout)
        fake_argv = plan["argv"]
        out_dir = Path(next(a.split("=", 1)[1] for a in fake_argv if a.startswith("--output-path=")))
        _timed(command, env)  # warm the file cache once
        kitty_times, fake_times = [], []
        for _ in range(args.runs):
            kitty_times.append(_timed(command, env))
            shutil.rmtree(out_dir, ignore_errors=True)
            out_dir.mkdir(parents=True)
            fake_times.append(_timed(fake_argv, env, cwd=out_dir))
    kitty_median, fake_median = statistics.median(kitty_times), statistics.median(fake_times)
    print(json.dumps({
        "benchmark": "overhead",
        "runs": args.runs,
        "steps": args.steps,
        "kitty_generate_median_ms": round(kitty_median * 1000, 1),
        "fake_binary_alone_median_ms": round(fake_median * 1000, 1),
        "overhead_median_ms": round((kitty_median - fake_median) * 1000, 1),
        "goal_ms": 150,
    }))


if __name__ == "__main__":
    main()
