"""Warm versus cold: six requests through one warm diffusers worker, against six cold starts (a new
worker process, model load and generation each), on the smoke model on the CPU. Prints one JSON
object: the median seconds per request of each and their ratio (goal: warm >= 3x faster).

    .venv/bin/python bench/warm.py [--requests 6] [--steps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from kitty_coreml.engines.base import CancelToken, EngineJob
from kitty_coreml.engines.worker import WorkerEngine
from kitty_coreml.install.smoke import create_smoke_model
from kitty_coreml.request import GenerationRequest
from kitty_coreml.settings import Settings

WORKER = [sys.executable, "-m", "kitty_coreml.engines.diffusers_worker"]


def _request(engine: WorkerEngine, model, folder: Path, index: int, steps: int) -> float:
    output_dir = folder / f"run{index}"
    output_dir.mkdir()
    job = EngineJob(request=GenerationRequest(prompt=f"a red cube {index}", steps=steps), seed=index,
                    run_id=f"bench_{index}", model=model, compute_units="cpuOnly", output_dir=output_dir)
    started = time.perf_counter()
    output = engine.generate(job, lambda event: None, CancelToken())
    elapsed = time.perf_counter() - started
    assert output.images[0].path is not None and output.images[0].path.is_file()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kitty-bench-") as temp:
        root = Path(temp)
        model = create_smoke_model(Settings.from_env({"KITTY_COREML_HOME": str(root / "home")}))
        warm_engine = WorkerEngine(WORKER, name="diffusers", idle_unload_s=600)
        try:
            warm = [_request(warm_engine, model, root, i, args.steps) for i in range(args.requests)]
        finally:
            warm_engine.close()
        cold = []
        for i in range(args.requests):
            engine = WorkerEngine(WORKER, name="diffusers", idle_unload_s=600)
            try:
                started = time.perf_counter()
                _request(engine, model, root, args.requests + i, args.steps)
            finally:
                engine.close()
            cold.append(time.perf_counter() - started)  # including the worker's shutdown
    warm_median, cold_median = statistics.median(warm), statistics.median(cold)
    print(json.dumps({
        "benchmark": "warm_worker_vs_cold_start", "engine": "diffusers", "model": "smoke", "device": "cpu",
        "requests": args.requests, "steps": args.steps,
        "warm_s": [round(s, 4) for s in warm], "cold_s": [round(s, 4) for s in cold],
        "warm_median_s": round(warm_median, 4), "cold_median_s": round(cold_median, 4),
        "speedup": round(cold_median / warm_median, 2), "goal_speedup": 3.0,
        "goal_met": cold_median / warm_median >= 3.0,
    }))


if __name__ == "__main__":
    main()
