"""Each path of kitty-coreml as a ratio to its floor, all measured in the same run (alternating rounds,
medians), printed as one JSON object:

* S3 job (mock engine, `rclone serve s3`) vs the same job into the local store, and what S3 adds per job vs
  a warm boto3 client's two PUTs (PNG + sidecar) of the same bytes;
* publishing through the outbox vs a plain boto3 loop (the same files, the same client settings);
* a repeated /latest?limit=36 (S3Store.list) at each gallery size vs one ListObjectsV2 call, with its calls;
* a warm image (orchestrator + warm diffusers worker, smoke model) vs a direct diffusers pipe() call;
* `kitty-coreml generate --dry-run`, the Studio provider's start (`--help`) and a whole Studio call on the
  mock backend vs `python -c pass` and a minimal typer app;
* enqueue: POST /api/images/generate from concurrent keep-alive clients into `kitty-coreml serve` with the
  embedded queue and with Redis, vs a do-nothing FastAPI endpoint and vs a stand-in of KITTY's submit (one
  RQ enqueue; bench/standins.py), all under serve's uvicorn settings: requests/s, p99 and each server's own
  CPU per request (the clients share the machine: the CPU figure is the one they disturb least); and the embedded
  queue's submit itself, the first --flat jobs vs the next --flat (flat in queue length: a ratio near 1);
* warm_generate: repeated `kitty-coreml generate` calls (new processes) while a `kitty-coreml serve` of the
  same home holds the diffusers smoke model warm, vs that engine's own compute per image (its generate_s),
  at each --generate-steps: what a call adds is fixed, so its ratio falls as the compute grows.

Processes under test keep Python's bytecode cache (in the scratch folder) as a user's install does.

Sizes are flags and small by default (the machine may be shared):
    .venv/bin/python bench/floors.py [--rounds 5] [--jobs 10] [--publish 40] [--galleries 300,3000]
                                     [--steps 4] [--enqueue 400] [--clients 16] [--flat 2000]
                                     [--generate-steps 20,50]
                                     [--only s3_job,publish,latest,warm_image,start,enqueue,warm_generate]
The issue's figures use --galleries 300,3000,30000.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from load import listening, p99, post_many, redis_server  # noqa: E402

from kitty_coreml.request import GenerationRequest  # noqa: E402
from kitty_coreml.settings import Settings  # noqa: E402
from kitty_coreml.storage.base import new_key, sidecar_key  # noqa: E402
from tests.s3server import S3Server  # noqa: E402

BIN = Path(sys.executable).parent
KITTY = str(BIN / "kitty-coreml")
SECTIONS = ("s3_job", "publish", "latest", "warm_image", "start", "enqueue", "warm_generate")


def _seconds(action: Callable[[], Any]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def _alternate(rounds: int, **actions: Callable[[], Any]) -> dict[str, float]:
    """Median seconds of each action, run in alternating rounds so drifts in machine load hit all alike."""
    times: dict[str, list[float]] = {name: [] for name in actions}
    for _ in range(rounds):
        for name, action in actions.items():
            times[name].append(_seconds(action))
    return {name: statistics.median(values) for name, values in times.items()}


def _env(home: Path, **extra: str) -> dict[str, str]:
    """The environment of a process under test: its own home, no progress output, and Python's bytecode
    cached (in the run's scratch folder) as on a user's machine, whatever PYTHONDONTWRITEBYTECODE this
    shell sets: otherwise every start would compile our modules again."""
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("KITTY_COREML_", "S3_", "FAKE_SD_")) and k != "PYTHONDONTWRITEBYTECODE"}
    return {**clean, "KITTY_COREML_HOME": str(home), "KITTY_COREML_PROGRESS": "none",
            "PYTHONPYCACHEPREFIX": str(home.parent / "pycache"), **extra}


def bench_s3_job(root: Path, server: S3Server, args) -> dict[str, Any]:
    from kitty_coreml.orchestrator import generate

    bucket = server.create_bucket()
    local = Settings.from_env(_env(root / "job-local", KITTY_COREML_ENGINE="mock"))
    s3 = Settings.from_env(_env(root / "job-s3", KITTY_COREML_ENGINE="mock", **server.env(bucket)))
    request = GenerationRequest(prompt="a red cube", width=256, height=256, steps=1, seed=1)
    sample = generate(request, local).images[0]  # also warms imports and the engine's code
    png = Path(sample.path).read_bytes()
    meta = Path(sample.path).with_suffix(".json").read_bytes()
    client = server.client()

    def two_puts() -> None:
        key = new_key("images/")
        client.put_object(Bucket=bucket, Key=key, Body=png, ContentType="image/png")
        client.put_object(Bucket=bucket, Key=sidecar_key(key), Body=meta, ContentType="application/json")

    generate(request, s3)  # the process's S3 client is made once, here
    medians = _alternate(args.jobs, local_job=lambda: generate(request, local), s3_job=lambda: generate(request, s3),
                         two_puts=two_puts)
    return {"ms": {k: round(v * 1000, 2) for k, v in medians.items()},
            "ratios": {"s3_job_vs_local_job": medians["s3_job"] / medians["local_job"],
                       "s3_added_vs_two_puts": (medians["s3_job"] - medians["local_job"]) / medians["two_puts"]},
            "size": {"jobs": args.jobs, "png_bytes": len(png)}}


def bench_publish(root: Path, server: S3Server, args) -> dict[str, Any]:
    from kitty_coreml.storage.outbox import publish_item, stage
    from kitty_coreml.storage.s3 import S3Store

    bucket = server.create_bucket()
    store = S3Store(bucket=bucket, endpoint_url=server.endpoint, access_key=server.access_key,
                    secret_key=server.secret_key)
    plain = store.client  # the same client settings: what differs is only the outbox around the PUTs
    png = os.urandom(400_000)  # about a compressed 512x512 image
    outbox_items = [stage(root / "publish-outbox", new_key("images/"), png, {"index": i}) for i in range(args.publish)]
    plain_items = [stage(root / "publish-plain", new_key("images/"), png, {"index": i}) for i in range(args.publish)]

    def plain_publish(item) -> None:
        plain.put_object(Bucket=bucket, Key=item.key, Body=item.png.read_bytes(), ContentType="image/png")
        plain.put_object(Bucket=bucket, Key=sidecar_key(item.key), Body=item.sidecar.read_bytes(),
                         ContentType="application/json")

    # alternating image by image: the machine's load drifts faster than a round of many images
    times: dict[str, list[float]] = {"outbox": [], "plain_boto3": []}
    for outbox_item, plain_item in zip(outbox_items, plain_items):
        times["outbox"].append(_seconds(lambda: publish_item(store, outbox_item)))
        times["plain_boto3"].append(_seconds(lambda: plain_publish(plain_item)))
    rates = {name: 1 / statistics.median(values) for name, values in times.items()}
    return {"images_per_s": {k: round(v, 1) for k, v in rates.items()},
            "ratios": {"publish_vs_plain_boto3": rates["outbox"] / rates["plain_boto3"]},
            "size": {"images": args.publish, "png_bytes": len(png)}}


def _write_gallery(server: S3Server, bucket: str, images: int) -> None:
    """Objects written straight into rclone's folder (rclone serves what the folder holds): 30,000 images
    in seconds instead of minutes of PUTs. One image every 10 s, the newest 10 s ago."""
    server.create_bucket(bucket)
    folder = server.data / bucket / "images"
    folder.mkdir()
    now = datetime.now(timezone.utc)
    for index in range(images):
        key = new_key("", now - timedelta(seconds=10 + 10 * index))
        (folder / key).write_bytes(b"png")
        (folder / sidecar_key(key)).write_bytes(b"{}")


def bench_latest(root: Path, server: S3Server, args) -> dict[str, Any]:
    from kitty_coreml.storage.s3 import S3Store

    ratios, figures = {}, {}
    for images in args.galleries:
        bucket = f"gallery-{images}"
        _write_gallery(server, bucket, images)
        store = S3Store(bucket=bucket, endpoint_url=server.endpoint, access_key=server.access_key,
                        secret_key=server.secret_key)
        calls: list[int] = []
        store.client.meta.events.register("after-call.s3.ListObjectsV2", lambda **_: calls.append(1))
        first_s = _seconds(lambda: store.list(36))
        first_calls = len(calls)
        calls.clear()
        client = store.client
        medians = _alternate(args.rounds, repeated=lambda: store.list(36),
                             one_call=lambda: client.list_objects_v2(Bucket=bucket, Prefix="images/", MaxKeys=1000))
        repeated_calls = (len(calls) - args.rounds) / args.rounds  # one_call's own calls are counted too
        ratios[f"latest36_at_{images}_vs_one_list_call"] = medians["repeated"] / medians["one_call"]
        figures[str(images)] = {"first_ms": round(first_s * 1000, 1), "first_calls": first_calls,
                                "repeated_ms": round(medians["repeated"] * 1000, 2),
                                "repeated_calls": repeated_calls, "one_call_ms": round(medians["one_call"] * 1000, 2)}
    return {"figures": figures, "ratios": ratios, "size": {"galleries": args.galleries}}


def bench_warm_image(root: Path, args) -> dict[str, Any]:
    import torch
    from diffusers import PNDMScheduler, StableDiffusionPipeline
    from diffusers.utils import logging as diffusers_logging

    from kitty_coreml.engines import create_engine
    from kitty_coreml.install.smoke import create_smoke_model
    from kitty_coreml.orchestrator import generate

    settings = Settings.from_env(_env(root / "warm", KITTY_COREML_ENGINE="diffusers"))
    model = create_smoke_model(settings)
    engine = create_engine("diffusers", settings)
    diffusers_logging.disable_progress_bar()
    pipe = StableDiffusionPipeline.from_pretrained(str(model.path), local_files_only=True, safety_checker=None,
                                                   requires_safety_checker=False, torch_dtype=torch.float32)
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    size = int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    request = GenerationRequest(prompt="a red cube", steps=args.steps, seed=1, model="smoke", engine="diffusers",
                                compute_units="cpuOnly")

    def direct() -> None:
        with torch.inference_mode():
            pipe(prompt="a red cube", num_inference_steps=args.steps, guidance_scale=7.5, width=size, height=size,
                 generator=torch.Generator(device="cpu").manual_seed(1), output_type="pil")

    try:
        generate(request, settings, engine=engine)  # loads the model into the warm worker
        direct()
        medians = _alternate(args.rounds, warm_image=lambda: generate(request, settings, engine=engine),
                             direct_pipe=direct)
    finally:
        engine.close()
    return {"ms": {k: round(v * 1000, 1) for k, v in medians.items()},
            "ratios": {"warm_image_vs_direct_pipe": medians["warm_image"] / medians["direct_pipe"]},
            "size": {"steps": args.steps, "image": f"{size}x{size}", "model": "smoke"}}


_TYPER_APP = """import typer
app = typer.Typer()
@app.command()
def hello(name: str = "x") -> None:
    print(name)
app()
"""


def bench_start(root: Path, args) -> dict[str, Any]:
    from tests.fakes import make_resources, write_fake_binary

    typer_app = root / "typer_app.py"
    typer_app.write_text(_TYPER_APP)
    env = _env(root / "start", KITTY_COREML_SAMPLE_BIN=str(write_fake_binary(root)),
               KITTY_COREML_RESOURCE_PATH=str(make_resources(root / "model")))
    studio_request = root / "studio-request.json"
    studio_request.write_text(json.dumps({"schema": "studio.local-image-generation.request.v1", "prompt": "a red cube",
                                          "count": 1, "aspectRatio": "1:1", "runId": "bench", "inputImages": []}))

    def run(*argv: str) -> Callable[[], None]:
        return lambda: subprocess.run(list(argv), env=env, check=True, stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    provider = str(BIN / "systemsculpt-local-imagegen")
    generated_s: list[float] = []

    def studio_mock_call() -> None:
        """The whole call; what the orchestrator spent (the mock backend drawing a 1024x1024 PNG) is noted."""
        done = subprocess.run([provider, "--request", str(studio_request)], check=True, capture_output=True,
                              stdin=subprocess.DEVNULL, env={**env, "SYSTEMSCULPT_LOCAL_IMAGEGEN_BACKEND": "mock"})
        generated_s.append(json.loads(done.stdout)["metadata"]["timings"]["total_s"])

    commands = {"python_pass": run(sys.executable, "-c", "pass"),
                "typer_app": run(sys.executable, str(typer_app), "--name", "y"),
                "generate_dry_run": run(KITTY, "generate", "a red cube", "--dry-run"),
                "studio_start": run(provider, "--help"), "studio_mock_call": studio_mock_call}
    for command in commands.values():
        command()  # the file cache, once
    medians = _alternate(args.rounds, **commands)
    ratios = {}
    for name in ("generate_dry_run", "studio_start"):
        ratios[f"{name}_vs_python_pass"] = medians[name] / medians["python_pass"]
        ratios[f"{name}_vs_typer_app"] = medians[name] / medians["typer_app"]
    outside = medians["studio_mock_call"] - statistics.median(generated_s) - medians["python_pass"]
    return {"ms": {k: round(v * 1000, 1) for k, v in medians.items()},
            "above_python_pass_ms": {name: round((medians[name] - medians["python_pass"]) * 1000, 1)
                                     for name in ("typer_app", "generate_dry_run", "studio_start", "studio_mock_call")}
            | {"studio_mock_call_outside_orchestrator": round(outside * 1000, 1)},
            "ratios": ratios, "size": {"rounds": args.rounds}}


def _enqueue_servers(root: Path, redis_url: str) -> dict[str, tuple[list[str], dict[str, str]]]:
    """argv and environment of each server. Ours run Apple's binary faked and hanging at its first step:
    the embedded queue's worker holds one job and the rest wait, so no generation competes for the CPU."""
    from tests.fakes import make_resources, write_fake_binary

    (root / "enqueue-bin").mkdir()
    ours = {"KITTY_COREML_ENGINE": "sample", "KITTY_COREML_SAMPLE_BIN": str(write_fake_binary(root / "enqueue-bin")),
            "KITTY_COREML_RESOURCE_PATH": str(make_resources(root / "enqueue-model")), "FAKE_SD_HANG_AT_STEP": "1",
            "KITTY_COREML_QUEUE_MAX": str(10**9)}
    server = redis_url.rsplit("/", 1)[0]
    standins = [sys.executable, str(ROOT / "bench" / "standins.py")]
    return {"noop": ([*standins, "noop"], _env(root / "enqueue-noop")),
            "kitty_standin": ([*standins, "kitty", f"{server}/2"], _env(root / "enqueue-kitty")),
            "embedded": ([KITTY, "serve", "--port", "0"], _env(root / "enqueue-embedded", **ours)),
            "redis": ([KITTY, "serve", "--port", "0", "--queue", f"{server}/1"], _env(root / "enqueue-redis", **ours))}


def _embedded_flatness(root: Path, jobs: int) -> dict[str, float]:
    """Microseconds per EmbeddedQueue.submit for the first `jobs` queued jobs and for the next `jobs`."""
    from kitty_coreml.jobs.embedded import EmbeddedQueue

    queue = EmbeddedQueue(Settings.from_env(_env(root / "enqueue-flat", KITTY_COREML_ENGINE="mock",
                                                 KITTY_COREML_QUEUE_MAX=str(10**9))))
    request = GenerationRequest(prompt="a red cube", width=64, height=64).to_dict()
    try:
        first, following = (_seconds(lambda: [queue.submit(request) for _ in range(jobs)]) for _ in range(2))
    finally:
        queue.close()
    return {"first_us": round(first / jobs * 1e6, 1), "next_us": round(following / jobs * 1e6, 1),
            "next_vs_first": following / first}


def bench_enqueue(root: Path, args) -> dict[str, Any]:
    from contextlib import ExitStack

    per_client = max(1, args.enqueue // args.clients)
    sent = [0]

    def bodies() -> list[list[bytes]]:
        """Distinct prompts every time, the same body shape for every server (KITTY's bounds allow it)."""
        sent[0] += 1
        return [[json.dumps({"prompt": f"bench {sent[0]} {client} {i}", "steps": 10}).encode()
                 for i in range(per_client)] for client in range(args.clients)]

    rates: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    latencies: dict[str, list[float]] = {}
    with redis_server(root) as redis_url, ExitStack() as stack:
        servers = {name: stack.enter_context(listening(argv, env))
                   for name, (argv, env) in _enqueue_servers(root, redis_url).items()}
        for server in servers.values():
            post_many(server, "/api/images/generate", bodies()[:2])  # started, imports and connections warm
        for _ in range(args.rounds):
            for name, server in servers.items():
                cpu_before = server.cpu_s()
                results, elapsed = post_many(server, "/api/images/generate", bodies())
                cpu.setdefault(name, []).append((server.cpu_s() - cpu_before) / len(results))
                refused = sorted({status for status, _ in results if status != 200})
                if refused:
                    raise SystemExit(f"enqueue: {name} answered {refused}")
                rates.setdefault(name, []).append(len(results) / elapsed)
                latencies.setdefault(name, []).extend(seconds for _, seconds in results)
    per_s = {name: statistics.median(values) for name, values in rates.items()}
    cpu_per = {name: statistics.median(values) for name, values in cpu.items()}
    p99s = {name: p99(values) for name, values in latencies.items()}
    flat = _embedded_flatness(root, args.flat)
    ratios = {"embedded_submit_next_vs_first": flat["next_vs_first"]}
    for ours in ("redis", "embedded"):
        ratios[f"enqueue_{ours}_vs_kitty_standin"] = per_s[ours] / per_s["kitty_standin"]
        ratios[f"enqueue_{ours}_p99_vs_kitty_standin"] = p99s[ours] / p99s["kitty_standin"]
        ratios[f"enqueue_{ours}_server_cpu_vs_kitty_standin"] = cpu_per[ours] / cpu_per["kitty_standin"]
    for name in ("redis", "embedded", "kitty_standin"):
        ratios[f"enqueue_{name}_vs_noop"] = per_s[name] / per_s["noop"]
    return {"requests_per_s": {k: round(v, 1) for k, v in per_s.items()},
            "p99_ms": {k: round(v * 1000, 2) for k, v in p99s.items()},
            "server_cpu_ms_per_request": {k: round(v * 1000, 3) for k, v in cpu_per.items()},
            "embedded_submit": flat, "ratios": ratios,
            "size": {"requests_per_round": per_client * args.clients, "clients": args.clients,
                     "rounds": args.rounds, "flat_jobs": args.flat}}


def bench_warm_generate(root: Path, args) -> dict[str, Any]:
    """Per step count: the median wall time of a whole `generate` call, the engine's own compute for it,
    what the call adds (fixed: the interpreter, our imports, the HTTP exchange, the service's own work)
    and the compute from which the call stays within 1.2x of it. The ratio is the first step count's."""
    from kitty_coreml.install.smoke import create_smoke_model

    env = _env(root / "warm-generate", KITTY_COREML_ENGINE="diffusers")
    create_smoke_model(Settings.from_env(env))
    by_steps: dict[str, dict[str, float]] = {}
    with listening([KITTY, "serve", "--port", "0"], env):  # announced in HOME/service.json: generate finds it
        for steps in args.generate_steps:
            argv = [KITTY, "generate", "a red cube", "--model", "smoke", "--steps", str(steps), "--seed", "1",
                    "--compute-units", "cpuOnly", "--json"]
            walls: list[float] = []
            computes: list[float] = []
            for index in range(args.rounds + 1):
                started = time.perf_counter()
                done = subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                if done.returncode != 0:
                    raise SystemExit(f"warm_generate: generate failed: {done.stderr.strip()[-400:]}")
                result = json.loads(done.stdout)
                if not result["servedBy"]["warm"]:
                    raise SystemExit("warm_generate: generate was not served by the running kitty-coreml serve")
                if index:  # the first call loads the model into the service's worker
                    walls.append(wall)
                    computes.append(float(result["timings"]["generate_s"]))
            wall, compute = statistics.median(walls), statistics.median(computes)
            added = statistics.median(w - c for w, c in zip(walls, computes))
            by_steps[str(steps)] = {"generate_call_ms": round(wall * 1000, 1),
                                    "engine_compute_ms": round(compute * 1000, 1),
                                    "added_ms": round(added * 1000, 1), "ratio": round(wall / compute, 3),
                                    "within_1_2x_from_compute_ms": round(added / 0.2 * 1000)}
    first = by_steps[str(args.generate_steps[0])]
    return {"by_steps": by_steps,
            "ratios": {"warm_generate_vs_engine_compute": first["generate_call_ms"] / first["engine_compute_ms"]},
            "size": {"calls": args.rounds, "steps": args.generate_steps, "model": "smoke"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per comparison")
    parser.add_argument("--jobs", type=int, default=10, help="jobs per kind in the S3-job comparison")
    parser.add_argument("--publish", type=int, default=40, help="images published per kind")
    parser.add_argument("--galleries", default="300,3000", help="gallery sizes (images) for /latest")
    parser.add_argument("--steps", type=int, default=4, help="steps of the warm-image comparison")
    parser.add_argument("--enqueue", type=int, default=400, help="submissions per server per round")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients of the enqueue comparison")
    parser.add_argument("--flat", type=int, default=2000, help="embedded submits per half of the flatness figure")
    parser.add_argument("--generate-steps", default="20,50", help="steps of the warm `generate` calls, comma-separated")
    parser.add_argument("--only", default=",".join(SECTIONS), help="sections to run, comma-separated")
    args = parser.parse_args()
    args.galleries = [int(size) for size in args.galleries.split(",") if size.strip()]
    args.generate_steps = [int(steps) for steps in args.generate_steps.split(",") if steps.strip()]
    only = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown:
        parser.error(f"--only: got {','.join(unknown)}; allowed: {', '.join(SECTIONS)}")
    report: dict[str, Any] = {"benchmark": "floors", "ratios": {}, "sections": {}}
    with tempfile.TemporaryDirectory(prefix="kitty-floors-") as scratch:
        root = Path(scratch)
        with S3Server(root / "s3") as server:
            for name in only:
                if name in ("s3_job", "publish", "latest"):
                    result = globals()[f"bench_{name}"](root, server, args)
                else:
                    result = globals()[f"bench_{name}"](root, args)
                report["ratios"].update({k: round(v, 3) for k, v in result.pop("ratios").items()})
                report["sections"][name] = result
    print(json.dumps(report))


if __name__ == "__main__":
    main()
