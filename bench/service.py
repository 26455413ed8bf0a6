"""Enqueue throughput of the images service: N submissions from C concurrent clients (keep-alive HTTP)
against a `kitty-coreml serve` on the mock engine with the embedded queue. Prints one JSON object:
accepted requests per second and p50/p99 enqueue latency.

    .venv/bin/python bench/service.py [--requests 2000] [--clients 50] [--queue redis://...]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

from load import listening, p99, post_many


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--queue", default=None, help="redis://... to measure the distributed queue")
    options = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITTY_COREML_", "S3_", "REDIS_URL"))}
    env.update(KITTY_COREML_ENGINE="mock", KITTY_COREML_QUEUE_MAX="1000000")
    kitty = str(Path(sys.executable).with_name("kitty-coreml"))
    per_client = options.requests // options.clients
    bodies = [[json.dumps({"prompt": f"bench {number} {i}", "width": 64, "height": 64}).encode()
               for i in range(per_client)] for number in range(options.clients)]
    with tempfile.TemporaryDirectory() as home:
        env["KITTY_COREML_HOME"] = home
        argv = [kitty, "serve", "--port", "0", *(["--queue", options.queue] if options.queue else [])]
        with listening(argv, env) as server:
            results, elapsed = post_many(server, "/api/images/generate", bodies)
    latencies = [seconds for status, seconds in results if status == 200]
    accepted = len(latencies)
    print(json.dumps({
        "benchmark": "service_enqueue", "queue": "redis" if options.queue else "embedded",
        "requests": len(results), "clients": options.clients, "accepted": accepted,
        "other_statuses": sorted({status for status, _ in results if status != 200}),
        "accepted_per_s": round(accepted / elapsed, 1),
        "enqueue_p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "enqueue_p99_ms": round(p99(latencies) * 1000, 2) if latencies else None,
        "wall_s": round(elapsed, 2), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
