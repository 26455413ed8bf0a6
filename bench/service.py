"""Enqueue throughput of the images service: N submissions from C concurrent clients (keep-alive HTTP)
against a `kitty-coreml serve` on the mock engine with the embedded queue. Prints one JSON object:
accepted requests per second and p50/p99 enqueue latency.

    .venv/bin/python bench/service.py [--requests 2000] [--clients 50] [--queue redis://...]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def start_service(home: Path, queue: str | None) -> tuple[subprocess.Popen, str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KITTY_COREML_", "S3_", "REDIS_URL"))}
    env.update(KITTY_COREML_HOME=str(home), KITTY_COREML_ENGINE="mock", KITTY_COREML_QUEUE_MAX="1000000")
    kitty = str(Path(sys.executable).with_name("kitty-coreml"))
    args = [kitty, "serve", "--port", "0", *(["--queue", queue] if queue else [])]
    process = subprocess.Popen(args, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in process.stderr:
        match = re.search(r"listening on http://([\d.]+):(\d+)", line)
        if match:
            threading.Thread(target=lambda: [None for _ in process.stderr], daemon=True).start()
            return process, match.group(1), int(match.group(2))
    raise SystemExit(f"the service did not start (exit {process.wait()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--queue", default=None, help="redis://... to measure the distributed queue")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        process, host, port = start_service(Path(home), options.queue)
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    probe = http.client.HTTPConnection(host, port, timeout=5)
                    probe.request("GET", "/healthz")
                    if probe.getresponse().status == 200:
                        break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                time.sleep(0.05)
            per_client = options.requests // options.clients

            def client(number: int) -> list[tuple[int, float]]:
                connection = http.client.HTTPConnection(host, port, timeout=60)
                out = []
                for i in range(per_client):
                    body = json.dumps({"prompt": f"bench {number} {i}", "width": 64, "height": 64})
                    started = time.perf_counter()
                    connection.request("POST", "/api/images/generate", body, {"Content-Type": "application/json"})
                    response = connection.getresponse()
                    response.read()
                    out.append((response.status, time.perf_counter() - started))
                connection.close()
                return out

            began = time.perf_counter()
            with ThreadPoolExecutor(options.clients) as pool:
                results = [r for batch in pool.map(client, range(options.clients)) for r in batch]
            elapsed = time.perf_counter() - began
        finally:
            process.terminate()
            process.wait(timeout=30)
    latencies = sorted(seconds for status, seconds in results if status == 200)
    accepted = len(latencies)
    print(json.dumps({
        "benchmark": "service_enqueue", "queue": "redis" if options.queue else "embedded",
        "requests": len(results), "clients": options.clients, "accepted": accepted,
        "other_statuses": sorted({status for status, _ in results if status != 200}),
        "accepted_per_s": round(accepted / elapsed, 1),
        "enqueue_p50_ms": round(statistics.median(latencies) * 1000, 2) if latencies else None,
        "enqueue_p99_ms": round(latencies[min(accepted - 1, int(accepted * 0.99))] * 1000, 2) if latencies else None,
        "wall_s": round(elapsed, 2), "cpus": os.cpu_count(),
    }))


if __name__ == "__main__":
    main()
